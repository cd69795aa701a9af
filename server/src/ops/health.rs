//! Liveness and readiness: what `/healthz` and `/readyz` answer, and the
//! supervision of NTP worker threads.
//!
//! ```text
//! worker thread ── state (Starting/Serving/Restarting/Failed) ─┐
//! KE listener tasks ── alive count ────────────────────────────┼─► /healthz
//! start-up done, keys loaded, time source (leap != 3) ─────────┴─► /readyz
//! a worker that keeps failing ── fatal ─► ntsd exits non-zero
//! no usable certificate ── degraded (named in both bodies) ──────► /readyz/nts-ke 503
//! ```
//!
//! A certificate problem takes NTS-KE down, not the server: `/healthz` and
//! `/readyz` stay 200 (NTP, and NTS with the cookies clients hold, are
//! served) and name what is degraded; `/readyz/nts-ke` is 503 for a load
//! balancer that routes NTS-KE on its own.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nts_proto::Leap;

use crate::time::source::SharedSystem;

/// What the operator's plane reads of NTS-KE's certificates, for the
/// probes and the metrics. Implemented by `ke::certs::Certificates`; a
/// trait so that `ops` reads NTS-KE's state without depending on `ke`
/// (which writes its counters and health here).
pub(crate) trait CertificateState: Send + Sync + std::fmt::Debug {
    /// Whether NTS-KE has a certificate to serve.
    fn usable(&self) -> bool;
    /// Why it has none, while it has none.
    fn problem(&self) -> Option<String>;
    /// Reloads that took effect, and reloads refused.
    fn reloads(&self) -> (u64, u64);
    /// The chain file and notAfter (Unix seconds) of each pair in force.
    fn expiries(&self) -> Vec<(String, i64)>;
}

/// What a worker thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum WorkerState {
    Starting = 0,
    Serving = 1,
    /// Failed and waiting for its backoff before the next attempt.
    Restarting = 2,
    /// Gave up: ntsd is exiting so that its supervisor restarts it.
    Failed = 3,
    /// Stopped on request (shutdown).
    Stopped = 4,
}

/// One worker thread's state, written by the thread, read by the probes.
#[derive(Debug)]
pub(crate) struct WorkerHealth {
    pub(crate) name: String,
    state: AtomicU8,
    restarts: AtomicU64,
}

impl WorkerHealth {
    pub(crate) fn new(name: String) -> Self {
        Self {
            name,
            state: AtomicU8::new(WorkerState::Starting as u8),
            restarts: AtomicU64::new(0),
        }
    }

    pub(crate) fn set(&self, s: WorkerState) {
        self.state.store(s as u8, Relaxed);
    }

    pub(crate) fn state(&self) -> WorkerState {
        match self.state.load(Relaxed) {
            0 => WorkerState::Starting,
            1 => WorkerState::Serving,
            2 => WorkerState::Restarting,
            3 => WorkerState::Failed,
            _ => WorkerState::Stopped,
        }
    }

    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Relaxed)
    }
}

/// The backoff between attempts of a failing worker: 1 s, doubling up to
/// 30 s; after [`GIVE_UP_AFTER`] failures in a row (none of them serving
/// for [`STABLE`]) the process exits non-zero so that systemd or Kubernetes
/// restarts it whole.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(30);
pub(crate) const GIVE_UP_AFTER: u32 = 5;
/// A run this long resets the failure count.
pub(crate) const STABLE: Duration = Duration::from_secs(60);

/// Runs `attempt` (one worker's serve loop: `Ok` when asked to stop, `Err`
/// when it failed) until it stops, restarting it with backoff. Returns the
/// last error if it gave up.
pub(crate) fn supervise(
    health: &WorkerHealth,
    stopping: impl Fn() -> bool,
    sleep: impl Fn(Duration),
    mut attempt: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut failures = 0u32;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let result = attempt();
        if stopping() {
            health.set(WorkerState::Stopped);
            return Ok(());
        }
        let error = match result {
            // A serve loop only returns Ok when asked to stop.
            Ok(()) => "stopped unexpectedly".to_owned(),
            Err(e) => e,
        };
        if started.elapsed() >= STABLE {
            failures = 0;
            backoff = FIRST_BACKOFF;
        }
        failures += 1;
        if failures >= GIVE_UP_AFTER {
            health.set(WorkerState::Failed);
            tracing::error!(worker = %health.name, %error, failures, "NTP worker keeps failing; stopping ntsd so that its supervisor restarts it");
            return Err(error);
        }
        health.set(WorkerState::Restarting);
        health.restarts.fetch_add(1, Relaxed);
        tracing::error!(worker = %health.name, %error, retry_in = ?backoff, "NTP worker failed; restarting it");
        sleep(backoff);
        if stopping() {
            health.set(WorkerState::Stopped);
            return Ok(());
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Everything the probes look at.
#[derive(Debug)]
pub(crate) struct Health {
    workers: Vec<Arc<WorkerHealth>>,
    ke_listeners: usize,
    ke_alive: AtomicUsize,
    /// Sockets bound, keys loaded, every task started.
    started: AtomicBool,
    system: SharedSystem,
    /// The NTS-KE certificates, whose absence degrades NTS-KE.
    certs: Option<Arc<dyn CertificateState>>,
}

impl Health {
    pub(crate) fn new(
        workers: Vec<Arc<WorkerHealth>>,
        ke_listeners: usize,
        system: SharedSystem,
        certs: Option<Arc<dyn CertificateState>>,
    ) -> Self {
        Self {
            workers,
            ke_listeners,
            ke_alive: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            system,
            certs,
        }
    }

    pub(crate) fn workers(&self) -> &[Arc<WorkerHealth>] {
        &self.workers
    }

    pub(crate) fn set_started(&self) {
        self.started.store(true, Relaxed);
    }

    /// A KE listener task that runs until this guard drops.
    pub(crate) fn ke_listener(self: &Arc<Self>) -> KeListenerGuard {
        self.ke_alive.fetch_add(1, Relaxed);
        KeListenerGuard(self.clone())
    }

    /// Why ntsd is not alive, if it is not (`/healthz`).
    pub(crate) fn liveness(&self) -> Vec<String> {
        let mut why: Vec<String> = self
            .workers
            .iter()
            .filter(|w| !matches!(w.state(), WorkerState::Serving | WorkerState::Starting))
            .map(|w| format!("NTP worker {} is {:?}", w.name, w.state()).to_lowercase())
            .collect();
        let alive = self.ke_alive.load(Relaxed);
        if self.started.load(Relaxed) && alive < self.ke_listeners {
            why.push(format!(
                "NTS-KE: {alive} of {} listeners running",
                self.ke_listeners
            ));
        }
        why
    }

    /// What is down while the rest serves (named in the probes' bodies):
    /// NTS-KE without a usable certificate.
    pub(crate) fn degraded(&self) -> Vec<String> {
        match &self.certs {
            Some(c) if !c.usable() => vec![format!(
                "NTS-KE refuses connections: no usable certificate: {}",
                c.problem().unwrap_or_else(|| "not loaded".to_owned())
            )],
            _ => Vec::new(),
        }
    }

    /// Whether NTS-KE can serve a new client (`/readyz/nts-ke`): the
    /// server is ready and NTS-KE has a certificate.
    pub(crate) fn ke_readiness(&self) -> Vec<String> {
        let mut why = self.readiness();
        why.extend(self.degraded());
        why
    }

    /// Why ntsd should not take traffic, if it should not (`/readyz`).
    pub(crate) fn readiness(&self) -> Vec<String> {
        let mut why = Vec::new();
        if !self.started.load(Relaxed) {
            why.push("starting: sockets or keys not ready yet".to_owned());
        }
        if self
            .workers
            .iter()
            .any(|w| w.state() != WorkerState::Serving)
        {
            why.push("not every NTP worker is serving".to_owned());
        }
        why.extend(self.liveness());
        if self.system.load().leap == Leap::Unsynchronized {
            why.push("time source not synchronised (leap indicator 3)".to_owned());
        }
        why.dedup();
        why
    }
}

/// Counts a running KE listener task; dropped when the task ends.
#[derive(Debug)]
pub(crate) struct KeListenerGuard(Arc<Health>);

impl Drop for KeListenerGuard {
    fn drop(&mut self) {
        self.0.ke_alive.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    #[test]
    fn a_failing_worker_is_restarted_with_backoff_then_given_up() {
        let h = WorkerHealth::new("0".into());
        let slept = RefCell::new(Vec::new());
        let attempts = Cell::new(0);
        let r = supervise(
            &h,
            || false,
            |d| slept.borrow_mut().push(d),
            || {
                attempts.set(attempts.get() + 1);
                Err("io_uring_enter failed".into())
            },
        );
        assert_eq!(r, Err("io_uring_enter failed".into()));
        assert_eq!(attempts.get(), GIVE_UP_AFTER);
        assert_eq!(h.restarts(), u64::from(GIVE_UP_AFTER - 1));
        assert_eq!(h.state(), WorkerState::Failed);
        let secs: Vec<u64> = slept.borrow().iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4, 8]);
    }

    #[test]
    fn a_worker_that_recovers_keeps_serving_and_a_stop_ends_it() {
        let h = WorkerHealth::new("1".into());
        let stop = Cell::new(false);
        let attempts = Cell::new(0);
        let r = supervise(
            &h,
            || stop.get(),
            |_| {},
            || {
                attempts.set(attempts.get() + 1);
                if attempts.get() == 1 {
                    return Err("ring setup failed".into());
                }
                stop.set(true);
                Ok(())
            },
        );
        assert_eq!(r, Ok(()));
        assert_eq!((attempts.get(), h.restarts()), (2, 1));
        assert_eq!(h.state(), WorkerState::Stopped);
    }

    #[test]
    fn probes_name_what_is_wrong() {
        let system: SharedSystem = Arc::new(arc_swap::ArcSwap::from_pointee(
            nts_proto::SystemInfo::unsynchronized(),
        ));
        let w = Arc::new(WorkerHealth::new("0".into()));
        let health = Arc::new(Health::new(vec![w.clone()], 1, system.clone(), None));
        assert!(health.readiness()[0].contains("starting"));
        health.set_started();
        let guard = health.ke_listener();
        w.set(WorkerState::Serving);
        assert!(health.liveness().is_empty());
        assert_eq!(
            health.readiness(),
            vec!["time source not synchronised (leap indicator 3)".to_owned()]
        );
        system.store(Arc::new(nts_proto::SystemInfo {
            leap: Leap::NoWarning,
            ..nts_proto::SystemInfo::unsynchronized()
        }));
        assert!(health.readiness().is_empty());
        w.set(WorkerState::Restarting);
        assert!(
            health.liveness()[0].contains("restarting"),
            "{:?}",
            health.liveness()
        );
        w.set(WorkerState::Serving);
        drop(guard);
        assert!(health.liveness()[0].contains("NTS-KE"));
    }
}
