//! The operator's plane: counters the other planes write ([`counters`]),
//! the client log the NTP workers write ([`clients`]),
//! the Prometheus registry that reads them at scrape time ([`metrics`]),
//! the HTTP endpoint with the health probes ([`http`], [`health`]), worker
//! supervision, and systemd notification ([`notify`]).
//!
//! ```text
//! planes ─► counters (per worker, per plane; no shared atomics per packet)
//! GET /metrics ─► metrics::NtsdCollector sums them ─► text format
//! GET /healthz, /readyz, /readyz/nts-ke ─► health::Health
//! GET /clients ─► clients::report (the NTP workers' client logs)
//! ```
//!
//! The other planes use only `counters` and `health` from here; this plane
//! reads theirs through [`metrics::Sources`], never the other way round.

pub(crate) mod clients;
pub(crate) mod counters;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod metrics;
pub(crate) mod notify;

use std::sync::Arc;

use tokio::sync::watch;

use health::Health;

/// The metrics listener, bound before any plane starts.
pub(crate) fn bind(
    config: &crate::config::MetricsConfig,
) -> Result<Option<std::net::TcpListener>, String> {
    let Some(addr) = config.listen else {
        return Ok(None);
    };
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("[metrics] listen: cannot bind {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(Some(listener))
}

/// The operator's plane, running: the metrics endpoint, if configured.
#[derive(Debug)]
pub(crate) struct Ops {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Ops {
    /// Serves `/metrics` and the health probes on `listener` until `stop`
    /// fires; the registry is built (and checked) even without a listener.
    pub(crate) fn start(
        listener: Option<std::net::TcpListener>,
        sources: metrics::Sources,
        health: Arc<Health>,
        stop: watch::Receiver<bool>,
    ) -> Result<Ops, String> {
        let clients = sources.clients.clone();
        let registry = metrics::registry(sources)?;
        let Some(listener) = listener else {
            return Ok(Ops { task: None });
        };
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        tracing::info!(addr = ?listener.local_addr().ok(), "metrics endpoint listening");
        let endpoint = Arc::new(http::Endpoint {
            registry,
            health,
            clients,
        });
        Ok(Ops {
            task: Some(tokio::spawn(http::serve(listener, endpoint, stop))),
        })
    }

    /// Waits for the endpoint, which `stop` ended.
    pub(crate) async fn stop(self) {
        if let Some(t) = self.task {
            let _ = t.await;
        }
    }
}
