//! What the server says about its own clock, refreshed once a second and
//! published to the workers through `ArcSwap`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nts_proto::{Leap, NtpShort, SystemInfo};

use super::clock::{leap_warning_today, now_ntp, unix_secs};
use super::upstream::{self, PollFailure};
use crate::config::{TimeConfig, TimeSource};

/// The precision field: log2 of the time to read the system clock
/// (RFC 5905, section 7.3), from the fastest of 1000 back-to-back reads,
/// rounded up and kept within 2^-30 (1 ns) .. 2^-10 (1 ms).
pub(crate) fn measure_precision() -> i8 {
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

pub(crate) type SharedSystem = Arc<ArcSwap<SystemInfo>>;

/// Time-source events for the metrics endpoint.
#[derive(Debug)]
pub(crate) struct TimeCounters {
    /// Transitions from synchronised to leap indicator 3.
    pub(crate) unsynchronised: AtomicU64,
    pub(crate) polls_ok: AtomicU64,
    pub(crate) polls_silent: AtomicU64,
    pub(crate) polls_unsynchronised: AtomicU64,
    pub(crate) polls_invalid: AtomicU64,
    pub(crate) polls_offset: AtomicU64,
    /// When the upstream last answered well (`None`: never).
    last_ok: Mutex<Option<Instant>>,
    started: Instant,
}

impl Default for TimeCounters {
    fn default() -> Self {
        Self {
            unsynchronised: AtomicU64::new(0),
            polls_ok: AtomicU64::new(0),
            polls_silent: AtomicU64::new(0),
            polls_unsynchronised: AtomicU64::new(0),
            polls_invalid: AtomicU64::new(0),
            polls_offset: AtomicU64::new(0),
            last_ok: Mutex::new(None),
            started: Instant::now(),
        }
    }
}

impl TimeCounters {
    fn record(&self, poll: &Result<upstream::Sample, PollFailure>) {
        let c = match poll {
            Ok(_) => {
                *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                &self.polls_ok
            }
            Err(PollFailure::Silent) => &self.polls_silent,
            Err(PollFailure::Unsynchronized) => &self.polls_unsynchronised,
            Err(PollFailure::Invalid) => &self.polls_invalid,
            Err(PollFailure::OffsetTooLarge) => &self.polls_offset,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Seconds since the upstream last answered well; since the start when
    /// it never did.
    pub(crate) fn upstream_age(&self) -> f64 {
        let last = *self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
        last.unwrap_or(self.started).elapsed().as_secs_f64()
    }

    /// `(result label, count)` of every upstream poll outcome.
    pub(crate) fn polls(&self) -> [(&'static str, u64); 5] {
        let g = |c: &AtomicU64| c.load(Relaxed);
        [
            ("ok", g(&self.polls_ok)),
            ("silent", g(&self.polls_silent)),
            ("unsynchronised", g(&self.polls_unsynchronised)),
            ("invalid", g(&self.polls_invalid)),
            ("offset_too_large", g(&self.polls_offset)),
        ]
    }
}

/// How long one upstream poll waits for its reply.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// Time between upstream polls and between local/kernel refreshes.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct TimeState {
    precision: i8,
    source: TimeSource,
    stratum: u8,
    refid: [u8; 4],
    upstream: Option<Upstream>,
}

/// The NTP server followed by `source = "upstream"`, as configured (a name
/// is resolved by the time source task, again whenever polls keep
/// failing), and what its polls said.
#[derive(Debug)]
struct Upstream {
    host: String,
    port: u16,
    /// The address polled; `None` until the name resolves.
    addr: Option<SocketAddr>,
    tracker: upstream::Tracker,
    /// Polls in a row without a good reply.
    failures: u32,
}

impl Upstream {
    /// Whether `host` is a name (not an address literal), so that
    /// resolving it again may give another answer.
    fn is_name(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_err()
    }
}

/// Failed polls in a row after which a named upstream is resolved again
/// (it may have moved, as a DHCP or container address does).
const RESOLVE_AFTER_FAILURES: u32 = 5;
/// How long one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an unresolved upstream is tried again.
const RESOLVE_RETRY: Duration = Duration::from_secs(5);

impl TimeState {
    /// Never fails for want of DNS: a named upstream that does not resolve
    /// yet leaves the server unsynchronised (leap indicator 3, not ready)
    /// until it does.
    pub(crate) fn new(cfg: &TimeConfig) -> Result<Self, String> {
        let precision = measure_precision();
        let upstream = match (&cfg.source, &cfg.upstream) {
            (TimeSource::Upstream, Some(u)) => {
                let (host, port) = nts_client::split_host_port(u, 123)
                    .map_err(|e| format!("[time] upstream: {e}"))?;
                let addr = host
                    .parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, port));
                let refid = addr.map_or(*b"INIT", |a| upstream::refid_of(a.ip()));
                Some(Upstream {
                    host,
                    port,
                    addr,
                    tracker: upstream::Tracker::new(cfg.hold_time.0, refid, precision),
                    failures: 0,
                })
            }
            _ => None,
        };
        Ok(Self {
            precision,
            source: cfg.source,
            stratum: cfg.stratum(),
            refid: cfg.refid_bytes()?,
            upstream,
        })
    }

    /// The current system information (for `upstream`: from the last poll).
    pub(crate) fn sample(&self) -> SystemInfo {
        let now = now_ntp();
        let unsynchronized = SystemInfo {
            precision: self.precision,
            ..SystemInfo::unsynchronized()
        };
        let base = SystemInfo {
            leap: Leap::NoWarning,
            stratum: self.stratum,
            precision: self.precision,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: self.refid,
            reference_time: now,
        };
        match (&self.source, &self.upstream) {
            (_, Some(u)) => u.tracker.system_info(Instant::now(), unix_secs()),
            (TimeSource::Kernel, _) => match super::kernel::read() {
                Some(k) => SystemInfo {
                    // The disciplining daemon sets the kernel flag for the
                    // day of the leap; pass it on that day only.
                    leap: leap_warning_today(k.leap, unix_secs()),
                    root_dispersion: NtpShort::from_seconds(k.max_error_us as f64 / 1e6),
                    ..base
                },
                None => unsynchronized,
            },
            (TimeSource::Upstream, None) => unsynchronized,
            (TimeSource::Local, None) => base,
        }
    }
}

/// Refreshes the shared system information every second (polling the
/// upstream first, when there is one) until `stop`.
pub(crate) async fn run(
    mut state: TimeState,
    shared: SharedSystem,
    counters: Arc<TimeCounters>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut socket: Option<tokio::net::UdpSocket> = None;
    let mut resolve_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(REFRESH);
    let mut last_leap = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(u) = state.upstream.as_mut() {
            let stale = u.is_name() && u.failures >= RESOLVE_AFTER_FAILURES;
            if (u.addr.is_none() || stale) && tokio::time::Instant::now() >= resolve_at {
                resolve_at = tokio::time::Instant::now() + RESOLVE_RETRY;
                // A slow resolver must not hold up a shutdown.
                tokio::select! {
                    _ = resolve(u) => {}
                    _ = stop.changed() => return,
                }
            }
            if let Some(addr) = u.addr {
                let result = match bound_for(&mut socket, addr).await {
                    Some(sock) => upstream::poll(sock, addr, POLL_TIMEOUT, state.precision).await,
                    None => Err(PollFailure::Silent),
                };
                counters.record(&result);
                match &result {
                    Ok(_) => u.failures = 0,
                    Err(reason) => {
                        u.failures = u.failures.saturating_add(1);
                        tracing::debug!(upstream = %addr, ?reason, "upstream poll failed");
                    }
                }
                u.tracker.record(Instant::now(), result);
            }
        }
        let info = state.sample();
        if last_leap != Some(info.leap) {
            let upstream = state
                .upstream
                .as_ref()
                .map(|u| format!("{}:{}", u.host, u.port));
            if info.leap == Leap::Unsynchronized {
                if last_leap.is_some() {
                    counters.unsynchronised.fetch_add(1, Relaxed);
                }
                tracing::warn!(source = ?state.source, ?upstream, "clock is not synchronised: serving leap indicator 3");
            } else {
                tracing::info!(source = ?state.source, ?upstream, leap = ?info.leap, stratum = info.stratum, "clock synchronised");
            }
            last_leap = Some(info.leap);
        }
        shared.store(Arc::new(info));
    }
}

/// Resolves a named upstream (again), keeping the address it had when the
/// name does not resolve now. Logged when the answer changes or fails.
async fn resolve(u: &mut Upstream) {
    let lookup = tokio::net::lookup_host((u.host.as_str(), u.port));
    let found = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| "no address".to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {RESOLVE_TIMEOUT:?}")),
    };
    match found {
        Ok(addr) if Some(addr) != u.addr => {
            tracing::info!(upstream = %u.host, %addr, previous = ?u.addr, "[time] upstream resolved");
            u.addr = Some(addr);
            u.tracker.set_refid(upstream::refid_of(addr.ip()));
            u.failures = 0;
        }
        Ok(_) => u.failures = 0,
        Err(e) => {
            tracing::warn!(upstream = %u.host, error = %e, kept = ?u.addr, "[time] upstream: cannot resolve the name; retrying");
        }
    }
}

/// The poll socket for `addr`'s family, opened (again) when needed.
async fn bound_for(
    socket: &mut Option<tokio::net::UdpSocket>,
    addr: SocketAddr,
) -> Option<&tokio::net::UdpSocket> {
    let fits = socket
        .as_ref()
        .and_then(|s| s.local_addr().ok())
        .is_some_and(|l| l.is_ipv4() == addr.is_ipv4());
    if !fits {
        let bind: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        *socket = match tokio::net::UdpSocket::bind(bind).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot open a socket to poll the upstream; serving leap indicator 3");
                None
            }
        };
    }
    socket.as_ref()
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
            ..TimeConfig::default()
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
        assert!(crate::time::kernel::read().is_some());
    }
}
