//! The commands a user types, other than `run`: `check-config`, `demo`,
//! `query` (an NTS client), `keys list|rotate`, `stats` and `ready` (which
//! read a running server's metrics endpoint). Each is a function that
//! returns what to print or an error message; `main.rs` prints it.

pub mod check;
pub mod demo;
pub mod keys;
pub mod query;
pub mod stats;
