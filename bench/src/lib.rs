//! `ntsd-bench`: load against NTS servers, with every reply verified as a
//! real client would (origin timestamp, Unique Identifier, authenticator,
//! new cookies stored and each used once).
//!
//! ```text
//! main: NTS-KE sessions ──► flood threads (sessions dealt out in turn)
//!   flood thread: slot table ─► sendmmsg on K connected sockets ─► server
//!                 verify ◄── recvmmsg ◄── ppoll ◄────────────────────┘
//!   keflood: C threads of full NTS-KE sessions (new TLS handshake each)
//!   echo:    SO_REUSEPORT reflector threads, recvmmsg → reply in place → sendmmsg
//!   /proc:   CPU of the server's process tree and its peak RSS, before/after
//! ```

pub mod echo;
pub mod flood;
pub mod histogram;
pub mod ke;
pub mod keflood;
pub mod path;
pub mod procstat;
pub mod random;
pub mod report;
pub mod session;
pub mod sys;
mod table;

pub use flood::{flood, FloodConfig, FloodError, FloodReport, LOSS_TIMEOUT};
pub use histogram::Histogram;
pub use keflood::{keflood, KeFloodConfig, KeFloodReport};
pub use session::Session;
