//! `ntsd-bench keflood`: full NTS-KE sessions back to back on `concurrency`
//! threads. Every session is a new TCP connection and a full TLS 1.3
//! handshake (resumption disabled on the client; ntsd sends no tickets
//! anyway), the KE request and response, and the key export (see
//! [`crate::ke`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::histogram::Histogram;
use crate::ke::KeTarget;

#[derive(Debug, Clone)]
pub struct KeFloodConfig {
    /// The server; its TLS configuration should come from [`without_resumption`].
    pub target: KeTarget,
    pub concurrency: usize,
    pub duration: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct KeFloodReport {
    pub ok: u64,
    pub failed: u64,
    /// Failures by short reason.
    pub failures: BTreeMap<&'static str, u64>,
    /// From the start until the last session ended.
    pub elapsed: Duration,
    /// Duration of successful sessions, in microseconds.
    pub latency: Histogram,
}

impl KeFloodReport {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, o: &KeFloodReport) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in &o.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.latency.merge(&o.latency);
    }
}

/// `config` with TLS session resumption disabled, so that every session
/// is a full handshake.
pub fn without_resumption(config: &rustls::ClientConfig) -> Arc<rustls::ClientConfig> {
    let mut c = config.clone();
    c.resumption = rustls::client::Resumption::disabled();
    c.enable_early_data = false;
    Arc::new(c)
}

fn worker(cfg: &KeFloodConfig, end: Instant) -> KeFloodReport {
    let mut r = KeFloodReport::default();
    // Each session ends within the target's timeout, so this loop ends by
    // end + timeout.
    while Instant::now() < end {
        let t0 = Instant::now();
        match cfg.target.session() {
            Ok(_) => {
                r.ok += 1;
                let us = t0.elapsed().as_micros();
                r.latency.record(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Err(e) => {
                r.failed += 1;
                *r.failures.entry(e.kind.reason()).or_default() += 1;
                // A server that refuses at once must not turn this into a
                // busy loop.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    r
}

pub fn keflood(cfg: &KeFloodConfig) -> KeFloodReport {
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut report = KeFloodReport::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..cfg.concurrency.max(1))
            .map(|_| s.spawn(|| worker(cfg, end)))
            .collect();
        for h in handles {
            match h.join() {
                Ok(r) => report.merge(&r),
                Err(_) => {
                    report.failed += 1;
                    *report.failures.entry("panic").or_default() += 1;
                }
            }
        }
    });
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumption_is_off() {
        let base = nts_client::client_config(None).expect("config");
        let c = without_resumption(&base);
        let shown = format!("{:?}", c.resumption);
        assert!(shown.contains("NoClientSessionStorage"), "{shown}");
    }
}
