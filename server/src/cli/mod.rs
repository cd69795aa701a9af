//! The commands a user types, other than `run`: `check-config`, `demo`,
//! `query` (an NTS client), `keys list|rotate`, `stats`, `clients` and
//! `ready` (which read a running server's metrics endpoint). Each is a function that
//! `main.rs` calls: it prints what was asked for, or returns the error
//! message that `main.rs` prints before exiting non-zero.

pub mod args;
pub mod check;
pub mod clients;
pub mod demo;
pub mod keys;
pub mod query;
pub mod stats;
