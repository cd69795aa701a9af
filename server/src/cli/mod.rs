//! Client-side commands that talk to a running server.

pub mod stats;
