//! The ntsd appliance. The binary (`main.rs`) parses the command line and
//! calls [`cli`]; everything else is private to this crate, grouped by
//! plane (ARCHITECTURE.md draws the map):
//!
//! ```text
//! run ─┬─ keys   ring set-up, wall-clock schedule, pid file and lock ─► Arc<RotatingKeys>
//!      ├─ time   upstream | kernel | local ─► ArcSwap<SystemInfo>
//!      ├─ ntp    worker threads (io_uring | portable) ─► nts_proto::Server::handle
//!      ├─ ke     NTS-KE: tokio + rustls ─► cookies sealed with the current key
//!      └─ ops    counters, Prometheus metrics, health, sd_notify
//! policy  access lists and rate limits (ntp and ke)
//! system  signals, limits, privileges, listen addresses
//! config  the TOML types and their validation (imports no plane)
//! ```

pub mod cli;
pub mod config;
pub(crate) mod ke;
pub(crate) mod keys;
pub(crate) mod ntp;
pub(crate) mod ops;
pub(crate) mod policy;
pub mod run;
pub(crate) mod system;
pub(crate) mod time;

pub use ntp::io_uring_probe;
pub use system::signals::{block_signals, default_sigpipe};
