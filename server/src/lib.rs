//! The ntsd appliance as a library: the binary in `main.rs` is a thin CLI
//! over these modules, and the integration tests use them directly.
//!
//! ```text
//! config ─► run ─┬─ ntp (worker threads: io_uring | portable) ─► nts_proto::Server::handle
//!                ├─ ke (NTS-KE: tokio + rustls) ─► cookies sealed with keyrotate
//!                ├─ time_source ─► ArcSwap<SystemInfo>
//!                └─ ops (counters, Prometheus metrics, health)
//! ```

pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod ke;
pub mod keys;
pub mod net;
pub mod ntp;
pub mod ops;
pub mod query;
pub mod rng;
pub mod run;
pub mod sys;
pub mod time_source;
pub mod tls;
pub mod upstream;
