//! `nts-proto`: the sans-IO core of ntsd.
//!
//! ```text
//!   NTS-KE (TLS, in the I/O crate)            NTP over UDP (in the I/O crate)
//!        │ bytes                                   │ bytes, receive time
//!        ▼                                         ▼
//!   ke::KeRequest::parse ─► select AEAD      server::Server::handle
//!   exported keys ─► cookie::seal_cookie       │ cookie::open_cookie (CookieKeys)
//!   ke::KeResponse::encode ─► bytes            │ aead: verify, seal reply + cookies
//!                                              ▼
//!                                         Action::{Ignore, Reply}
//! ```
//!
//! Nothing here does I/O, reads a clock or draws randomness on its own: time
//! and random bytes are arguments, so every path is deterministic in tests
//! and fuzzing. The client half ([`client`], [`ke::client_request`]) drives
//! `ntsd query` and the load generator.
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)
)]

pub mod aead;
pub mod client;
pub mod cookie;
pub mod ef;
pub mod ke;
pub mod packet;
pub mod reader;
pub mod server;
mod siv;
pub mod time;

pub use aead::{AeadAlgorithm, AeadKey};
pub use cookie::{CookieKeys, MasterKey, SessionKeys, SingleKey};
pub use packet::{Leap, NtpHeader};
pub use server::{
    Action, Basic, DropReason, Interleave, NakReason, Random, ReplyKind, Server, SystemInfo,
};
pub use time::{NtpShort, NtpTimestamp};
