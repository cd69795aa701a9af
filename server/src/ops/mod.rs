//! The operator's plane: counters the other planes write, the Prometheus
//! registry that reads them at scrape time, and the HTTP endpoint.

pub mod counters;
pub mod metrics;
