//! The time plane: what the server says about its clock. The clock
//! readings every plane uses ([`clock`]), the kernel's sync state
//! ([`kernel`]), the upstream NTP client ([`upstream`]), and the time
//! source task ([`source`]) that turns one of them into the `SystemInfo`
//! every NTP reply carries, published through an `ArcSwap`.
//!
//! ```text
//! [time] source: upstream (poll) | kernel (adjtimex) | local
//!   ─► source::run, once a second ─► ArcSwap<SystemInfo> ─► every NTP worker
//! ```
//!
//! Uses `config` and the `ops` counters; no other plane.

pub(crate) mod clock;
mod kernel;
pub(crate) mod source;
pub(crate) mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::Config;
use source::{SharedSystem, TimeCounters, TimeState};

/// The time plane, running.
#[derive(Debug)]
pub(crate) struct Time {
    /// What the NTP workers serve: stratum, reference id, leap indicator,
    /// root delay and dispersion.
    pub(crate) system: SharedSystem,
    pub(crate) events: Arc<TimeCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Time {
    /// Takes a first sample of the configured source and keeps it fresh
    /// until `stop` fires. An upstream named by host name is resolved by
    /// the task, never here: until it answers, the server is unsynchronised.
    pub(crate) fn start(config: &Config, stop: watch::Receiver<bool>) -> Result<Time, String> {
        let state = TimeState::new(&config.time)?;
        let system = Arc::new(ArcSwap::from_pointee(state.sample()));
        let events = Arc::new(TimeCounters::default());
        let task = tokio::spawn(source::run(state, system.clone(), events.clone(), stop));
        Ok(Time {
            system,
            events,
            task,
        })
    }

    /// Waits for the source task, which `stop` ended.
    pub(crate) async fn stop(self) {
        let _ = self.task.await;
    }
}
