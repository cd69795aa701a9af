//! What the server says about its own clock, refreshed once a second and
//! published to the workers through `ArcSwap`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use nts_proto::{Leap, NtpShort, SystemInfo};

use crate::clock::now_ntp;
use crate::config::{TimeConfig, TimeSource};

/// The precision field: log2 of the time to read the system clock
/// (RFC 5905, section 7.3), from the fastest of 1000 back-to-back reads,
/// rounded up and kept within 2^-30 (1 ns) .. 2^-10 (1 ms).
pub fn measure_precision() -> i8 {
    let mut best = u128::MAX;
    let mut prev = std::time::SystemTime::now();
    for _ in 0..1000 {
        let now = std::time::SystemTime::now();
        if let Ok(d) = now.duration_since(prev) {
            if d.as_nanos() > 0 {
                best = best.min(d.as_nanos());
            }
        }
        prev = now;
    }
    if best == u128::MAX {
        return -20;
    }
    let log2 = (best as f64 * 1e-9).log2().ceil();
    log2.clamp(-30.0, -10.0) as i8
}

pub type SharedSystem = Arc<ArcSwap<SystemInfo>>;

#[derive(Debug, Clone)]
pub struct TimeState {
    precision: i8,
    source: TimeSource,
    stratum: u8,
    refid: [u8; 4],
}

impl TimeState {
    pub fn new(cfg: &TimeConfig) -> Result<Self, String> {
        Ok(Self {
            precision: measure_precision(),
            source: cfg.source,
            stratum: cfg.stratum(),
            refid: cfg.refid_bytes()?,
        })
    }

    /// The current system information for the configured source.
    pub fn sample(&self) -> SystemInfo {
        let now = now_ntp();
        let base = SystemInfo {
            leap: Leap::NoWarning,
            stratum: self.stratum,
            precision: self.precision,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: self.refid,
            reference_time: now,
        };
        match self.source {
            TimeSource::Local => base,
            TimeSource::Kernel => match kernel::read() {
                Some(k) => SystemInfo {
                    leap: k.leap,
                    root_dispersion: NtpShort::from_seconds(k.max_error_us as f64 / 1e6),
                    ..base
                },
                None => SystemInfo::unsynchronized(),
            },
        }
    }
}

/// Refreshes the shared system information every second until `stop`.
pub async fn run(
    state: TimeState,
    shared: SharedSystem,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last_leap = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let info = state.sample();
        if last_leap != Some(info.leap) {
            if info.leap == Leap::Unsynchronized {
                tracing::warn!(source = ?state.source, "clock is not synchronised: serving leap indicator 3");
            } else {
                tracing::info!(source = ?state.source, leap = ?info.leap, "clock state");
            }
            last_leap = Some(info.leap);
        }
        shared.store(Arc::new(info));
    }
}

#[allow(unsafe_code)]
mod kernel {
    //! adjtimex(2) in read-only mode.
    use nts_proto::Leap;

    pub struct KernelState {
        pub leap: Leap,
        pub max_error_us: i64,
    }

    pub fn read() -> Option<KernelState> {
        // SAFETY: a zeroed timex with modes = 0 asks only to read; the kernel
        // writes into the struct we own.
        let mut tx: libc::timex = unsafe { std::mem::zeroed() };
        let state = unsafe { libc::adjtimex(&mut tx) };
        if state < 0 {
            return None;
        }
        let leap = if state == libc::TIME_ERROR || tx.status & libc::STA_UNSYNC != 0 {
            Leap::Unsynchronized
        } else if tx.status & libc::STA_INS != 0 {
            Leap::InsertSecond
        } else if tx.status & libc::STA_DEL != 0 {
            Leap::DeleteSecond
        } else {
            Leap::NoWarning
        };
        Some(KernelState {
            leap,
            max_error_us: tx.maxerror,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_source_is_synchronised_at_its_stratum() {
        let cfg = TimeConfig {
            source: TimeSource::Local,
            stratum: Some(3),
            refid: Some("TEST".into()),
        };
        let info = TimeState::new(&cfg).unwrap().sample();
        assert_eq!(info.leap, Leap::NoWarning);
        assert_eq!(info.stratum, 3);
        assert_eq!(info.reference_id, *b"TEST");
    }

    #[test]
    fn precision_is_measured_within_bounds() {
        let p = measure_precision();
        assert!((-30..=-10).contains(&p), "{p}");
    }

    #[test]
    fn kernel_source_reads_adjtimex() {
        // Whatever this host's state, the read works and yields a valid leap.
        assert!(kernel::read().is_some());
    }
}
