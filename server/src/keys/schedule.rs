//! Keeping the master keys on the epoch of the wall clock, and the
//! rotations an operator asks for (SIGUSR1, `ntsd keys rotate`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use keyrotate::RotatingKeys;
use tokio::sync::watch;

use crate::ops::counters::KeyCounters;
use crate::time::clock::unix_secs;

/// How far the wall clock may move against the monotonic clock between two
/// checks before it counts as a step.
const STEP_THRESHOLD: f64 = 1.0;

/// The kernel's monotonic clock, read through the vDSO by rustix rather
/// than through libc: what the step detection compares the wall clock
/// with must not move with it, even under a preloaded time shim such as
/// libfaketime (which shifts libc's CLOCK_MONOTONIC too, by default).
fn kernel_monotonic() -> std::time::Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    std::time::Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Keeps the master keys on the epoch of the wall clock, on a thread of
/// its own. Checked just after every wall-clock second, so a rotation
/// happens on time and a clock step (chronyd stepping the clock at boot, a
/// VM restored from a snapshot) moves the keys within a second, in either
/// direction. A step is told apart from a late check by comparing the wall
/// clock's progress with the kernel's monotonic clock; each is logged once
/// and counted. A ring that cannot be saved leaves the old ring in force
/// and is retried every 10 s.
///
/// A thread with `sleep` (a relative nanosleep) rather than a tokio timer:
/// timers follow the process's monotonic clock, and a clock that a shim
/// steps backwards would hold them back for as long as the step.
pub(super) fn follow_clock(
    keys: Arc<RotatingKeys>,
    events: Arc<KeyCounters>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name("ntsd-keys".into())
        .spawn(move || follow_clock_loop(&keys, &events, &stop))
        .map_err(|e| format!("cannot start the key rotation thread: {e}"))
}

fn follow_clock_loop(
    keys: &RotatingKeys,
    events: &KeyCounters,
    stop: &std::sync::atomic::AtomicBool,
) {
    use keyrotate::Movement;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    const RETRY: Duration = Duration::from_secs(10);
    const STEP: Duration = Duration::from_millis(100);
    let wall = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    };
    let mut last = (wall(), kernel_monotonic());
    let mut retry_at: Option<Duration> = None;
    loop {
        // To just after the next wall-clock second, in short sleeps so that
        // a stop is seen at once.
        let into_second = u64::from(wall().subsec_millis());
        let mut left = Duration::from_millis(1_000 - into_second.min(999) + 5);
        while !left.is_zero() {
            if stop.load(Relaxed) {
                return;
            }
            let nap = left.min(STEP);
            std::thread::sleep(nap);
            left -= nap;
        }
        let (now, mono) = (wall(), kernel_monotonic());
        let step =
            (now.as_secs_f64() - last.0.as_secs_f64()) - mono.saturating_sub(last.1).as_secs_f64();
        last = (now, mono);
        let stepped = step.abs() >= STEP_THRESHOLD;
        if stepped {
            events.clock_steps.fetch_add(1, Relaxed);
        }
        if retry_at.is_some_and(|t| mono < t) {
            if stepped {
                tracing::warn!(
                    seconds = step,
                    "wall clock stepped; the key ring follows once it can be saved"
                );
            }
            continue;
        }
        let before = keys.load().current_id();
        match keys.follow(now.as_secs()) {
            Ok(m) => {
                retry_at = None;
                match m {
                    Movement::Unchanged if stepped => tracing::warn!(
                        seconds = step,
                        current = before,
                        "wall clock stepped; the key epoch is unchanged"
                    ),
                    Movement::Unchanged => {}
                    Movement::Rotated { to } if !stepped => {
                        events.rotations.fetch_add(1, Relaxed);
                        tracing::info!(current = to, "master key rotated");
                    }
                    Movement::Rotated { to } | Movement::Jumped { to, .. } if stepped => {
                        events.step_rotations.fetch_add(1, Relaxed);
                        tracing::warn!(
                            seconds = step,
                            from = before,
                            current = to,
                            kept_open = !keys.is_derived(),
                            "wall clock stepped: master keys moved to the epoch of the clock"
                        );
                    }
                    Movement::Rotated { to } | Movement::Jumped { to, .. } => {
                        events.rotations.fetch_add(1, Relaxed);
                        tracing::info!(
                            from = before,
                            current = to,
                            "master keys rotated over several epochs (the check came late)"
                        );
                    }
                }
            }
            Err(e) => {
                events.failures.fetch_add(1, Relaxed);
                retry_at = Some(mono + RETRY);
                tracing::error!(error = %e, stepped, "master key rotation failed; the current key stays in force, retrying in 10 s");
            }
        }
    }
}

/// Logs and counts a key ring that was loaded ahead of the clock: the clock
/// stepped back since the file was written (or was ahead then).
pub(super) fn report_start(keys: &RotatingKeys, events: &KeyCounters) {
    if let keyrotate::Movement::Jumped { from, to } = keys.started() {
        if to < from {
            events.clock_steps.fetch_add(1, Relaxed);
            tracing::warn!(
                file_current = from,
                current = to,
                "the key file's current key is ahead of the clock (the clock stepped back, or was ahead when the file was written): sealing with the key of the clock's epoch, the file's keys still open their cookies"
            );
        }
    }
}

/// `ntsd keys rotate` (or `kill -USR1`): replace the sealing key now.
pub(super) async fn forced_rotations(
    keys: Arc<RotatingKeys>,
    events: Arc<KeyCounters>,
    mut usr1: tokio::signal::unix::Signal,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = usr1.recv() => {}
            _ = stop.changed() => return,
        }
        match keys.force_rotate(unix_secs()) {
            Ok(id) => {
                events.forced_at(unix_secs());
                tracing::warn!(current = id, "master key rotated by request (SIGUSR1)");
            }
            Err(e) => {
                events.failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "requested key rotation failed");
            }
        }
    }
}
