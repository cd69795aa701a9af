//! The master keys that seal cookies, as the server runs them: the ring
//! from the config ([`ring`]: fleet-derived, persisted in `dump_dir`, or in
//! memory), the directory lock and pid file ([`pid`]), and the schedule
//! ([`schedule`]) that keeps the ring on the wall clock's epoch and
//! rotates on request.
//!
//! ```text
//! Keys::start: ring::open (flock dump_dir, load or create, save) ─► pid file
//!   ─► schedule::follow_clock (thread) + forced_rotations (SIGUSR1 task)
//!   ─► Arc<RotatingKeys>: read lock-free by the NTP workers and NTS-KE
//! ```
//!
//! The ring itself (rotation, persistence, fleet derivation) is the
//! `keyrotate` crate; this plane only wires it to the config, the clock and
//! the signals. Uses `config`, `time::clock` and the `ops` counters.

pub(crate) mod pid;
pub(crate) mod ring;
mod schedule;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use keyrotate::RotatingKeys;
use tokio::sync::watch;

use crate::config::Config;
use crate::ops::counters::KeyCounters;
use crate::time::clock::unix_secs;

/// The key plane, running.
#[derive(Debug)]
pub(crate) struct Keys {
    pub(crate) ring: Arc<RotatingKeys>,
    pub(crate) events: Arc<KeyCounters>,
    /// Removed when the plane stops (and the lock with the ring's store).
    _pid_file: Option<pid::PidFile>,
    clock: std::thread::JoinHandle<()>,
    clock_stop: Arc<AtomicBool>,
    forced: tokio::task::JoinHandle<()>,
}

impl Keys {
    /// Opens the ring (locking the key directory: a second ntsd on it stops
    /// here, before it touches a file), writes the pid file, and starts
    /// following the clock and `usr1`.
    ///
    /// `owner` is the user and group ntsd will run as after dropping its
    /// privileges: the key directory and pid file must be theirs.
    pub(crate) fn start(
        config: &Config,
        owner: Option<(u32, u32)>,
        usr1: tokio::signal::unix::Signal,
        stop: watch::Receiver<bool>,
    ) -> Result<Keys, String> {
        let ring = Arc::new(ring::open(&config.keys, unix_secs(), owner)?);
        let pid_file = match config.keys.state_dir() {
            Some(dir) => Some(pid::write_pid(dir, owner)?),
            None => None,
        };
        let events = Arc::new(KeyCounters::default());
        schedule::report_start(&ring, &events);
        let clock_stop = Arc::new(AtomicBool::new(false));
        let clock = schedule::follow_clock(ring.clone(), events.clone(), clock_stop.clone())?;
        let forced = tokio::spawn(schedule::forced_rotations(
            ring.clone(),
            events.clone(),
            usr1,
            stop,
        ));
        Ok(Keys {
            ring,
            events,
            _pid_file: pid_file,
            clock,
            clock_stop,
            forced,
        })
    }

    /// Stops following the clock and the signal; the pid file goes.
    pub(crate) async fn stop(self) {
        self.clock_stop.store(true, Relaxed);
        let _ = self.forced.await;
        let clock = self.clock;
        let _ = tokio::task::spawn_blocking(move || clock.join()).await;
    }
}
