//! The operator's plane: counters the other planes write, the Prometheus
//! registry that reads them at scrape time, the HTTP endpoint with the
//! health probes, worker supervision and systemd notification.

pub mod counters;
pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
