//! The Prometheus registry: every `ntsd_*` family, with HELP text, read at
//! scrape time from the counters the other planes keep, plus the
//! `process_*` families of the `prometheus` crate.
//!
//! ```text
//! NTP workers ── own NtpCounters (relaxed atomics, no sharing) ─┐
//! KE, keys, time source ── shared atomics, ArcSwap snapshots ───┼─► NtsdCollector::collect
//! KE session histogram ── prometheus::Histogram ────────────────┘   (at scrape time only)
//! ```
//!
//! The family names are the ones dashboards, alerts and tests are written
//! against ([`FAMILIES`]); README's Monitoring section lists them.

use std::collections::HashMap;
use std::sync::Arc;

use keyrotate::RotatingKeys;
use nts_proto::AeadAlgorithm;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::ops::clients::ClientLog;
use crate::ops::counters::{KeCounters, KeEvent, KeyCounters, NtpCounters, NtpEvent};
use crate::ops::health::Health;
use crate::time::source::{SharedSystem, TimeCounters};

/// What the collector reads.
#[derive(Debug, Clone)]
pub(crate) struct Sources {
    /// One block per worker, summed; also shown per worker.
    pub(crate) ntp: Vec<Arc<NtpCounters>>,
    /// One client log per worker.
    pub(crate) clients: Vec<Arc<ClientLog>>,
    pub(crate) ke: Arc<KeCounters>,
    pub(crate) ke_max_connections: usize,
    pub(crate) ke_open: Arc<tokio::sync::Semaphore>,
    pub(crate) keys: Arc<RotatingKeys>,
    pub(crate) key_events: Arc<KeyCounters>,
    pub(crate) time_events: Arc<TimeCounters>,
    /// Whether `source = "upstream"` (the upstream age is exported then).
    pub(crate) upstream: bool,
    pub(crate) system: SharedSystem,
    pub(crate) health: Arc<Health>,
    pub(crate) certs: Arc<dyn crate::ops::health::CertificateState>,
    /// The NTP back end in use (`io-uring` or `portable`).
    pub(crate) backend: &'static str,
}

const C: MetricType = MetricType::COUNTER;
const G: MetricType = MetricType::GAUGE;

/// Every family the collector exports: name, type, label names, help.
pub(crate) const FAMILIES: &[(&str, MetricType, &[&str], &str)] = &[
    ("ntsd_ntp_requests_total", C, &["kind"], "Well-formed NTP client requests, by kind (plain NTPv4 or NTS)."),
    ("ntsd_ntp_responses_total", C, &["kind"], "NTP responses sent, by kind: plain, nts, nak (NTS NAK) or kod (rate kiss-o'-death)."),
    ("ntsd_ntp_naks_total", C, &["reason"], "NTS NAKs sent, by the reason the request could not be authenticated."),
    ("ntsd_ntp_dropped_total", C, &["reason"], "NTP datagrams dropped without an answer, by reason."),
    ("ntsd_ntp_io_errors_total", C, &["op"], "Socket errors on the NTP path, by operation."),
    ("ntsd_ntp_kernel_timestamps_total", C, &[], "NTP requests whose receive timestamp came from the kernel (SO_TIMESTAMPING)."),
    ("ntsd_ntp_daemon_timestamps_total", C, &[], "NTP requests without a kernel receive timestamp, timestamped by ntsd when read."),
    ("ntsd_ntp_interleaved_responses_total", C, &[], "Replies in interleaved mode (RFC 9769): each carried the saved transmit timestamp of the previous reply to its client."),
    ("ntsd_ntp_kernel_tx_timestamps_total", C, &[], "Interleaved replies whose saved transmit timestamp was the kernel's (SO_TIMESTAMPING)."),
    ("ntsd_ntp_tx_timestamps_lost_total", C, &[], "Transmit timestamps asked of the kernel that never came back; the client's next reply is basic."),
    ("ntsd_ntp_timestamps_held", G, &[], "Transmit timestamps saved for interleaved mode, all workers together."),
    ("ntsd_ntp_timestamp_span_seconds", G, &[], "Seconds from the oldest to the newest saved timestamp (the widest worker): how long a client may wait between requests and still get an interleaved reply."),
    ("ntsd_ntp_client_log_records_dropped_total", C, &[], "Client log records replaced to make room for another client ([ntp] client_log_limit is full)."),
    ("ntsd_worker_packets_received_total", C, &["worker"], "Datagrams received by each NTP worker (SO_REUSEPORT balance)."),
    ("ntsd_worker_packets_sent_total", C, &["worker"], "Replies sent by each NTP worker."),
    ("ntsd_ntp_workers", G, &[], "NTP worker threads configured."),
    ("ntsd_ntp_worker_restarts_total", C, &[], "NTP worker threads restarted after their back end failed."),
    ("ntsd_ntp_backend_info", G, &["backend"], "The NTP back end in use (value 1)."),
    ("ntsd_ke_connections_total", C, &[], "NTS-KE TCP connections accepted."),
    ("ntsd_ke_connections_open", G, &[], "NTS-KE connections open now."),
    ("ntsd_ke_sessions_total", C, &["aead"], "NTS-KE sessions completed with cookies, by the AEAD algorithm id chosen."),
    ("ntsd_ke_errors_total", C, &["reason"], "NTS-KE connections that ended without cookies, by reason."),
    ("ntsd_ke_cookies_issued_total", C, &[], "Cookies issued by NTS-KE."),
    ("ntsd_ke_certificate_reloads_total", C, &["result"], "Certificate reloads (SIGHUP or a changed file), by result: ok or refused (the certificates in force keep serving)."),
    ("ntsd_ke_up", G, &[], "1 while NTS-KE has a usable certificate, 0 while it refuses connections for want of one (NTP is served either way; /healthz names the reason)."),
    ("ntsd_ke_certificate_expiry_timestamp_seconds", G, &["certificate"], "When each certificate in force expires (notAfter), Unix seconds, by chain file."),
    ("ntsd_keys_current_id", G, &[], "Id (epoch) of the master key that seals new cookies."),
    ("ntsd_keys_current_age_seconds", G, &[], "Seconds since the sealing master key took over."),
    ("ntsd_keys_accepted", G, &[], "Master keys that open cookies (the sealing one included)."),
    ("ntsd_keys_rotations_total", C, &["kind"], "Master-key ring changes, by kind: scheduled, forced, clock_step."),
    ("ntsd_keys_rotation_failures_total", C, &[], "Key rotations that could not be saved (the old keys stay in force)."),
    ("ntsd_keys_clock_steps_total", C, &[], "Steps of the wall clock seen by the key schedule."),
    ("ntsd_time_stratum", G, &[], "Stratum served."),
    ("ntsd_time_leap_indicator", G, &[], "Leap indicator served (3: unsynchronised)."),
    ("ntsd_time_root_delay_seconds", G, &[], "Root delay served, seconds."),
    ("ntsd_time_root_dispersion_seconds", G, &[], "Root dispersion served, seconds."),
    ("ntsd_time_synchronised", G, &[], "1 while the served time is synchronised (leap indicator not 3), else 0."),
    ("ntsd_time_upstream_last_success_age_seconds", G, &[], "Seconds since the upstream last answered well (since start if never); only with source = \"upstream\"."),
    ("ntsd_time_unsynchronised_total", C, &[], "Transitions of the served time to unsynchronised."),
    ("ntsd_time_upstream_polls_total", C, &["result"], "Polls of the upstream NTP server, by result."),
    ("ntsd_build_info", G, &["version", "commit"], "The running build (value 1)."),
];

/// The commit ntsd was built from (`NTSD_COMMIT` at build time, else git).
pub(crate) const COMMIT: &str = match option_env!("NTSD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// A value and its label values, in the family's label order.
type Sample = (Vec<String>, f64);

/// Reads every `ntsd_*` family at scrape time.
#[derive(Debug)]
pub(crate) struct NtsdCollector {
    sources: Sources,
    descs: Vec<Desc>,
}

impl NtsdCollector {
    pub(crate) fn new(sources: Sources) -> prometheus::Result<Self> {
        let descs = FAMILIES
            .iter()
            .map(|(name, _, labels, help)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.iter().map(|l| (*l).to_owned()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self { sources, descs })
    }

    fn ntp(&self, e: NtpEvent) -> f64 {
        self.sources.ntp.iter().map(|c| c.get(e)).sum::<u64>() as f64
    }

    fn samples(&self, name: &str) -> Vec<Sample> {
        use NtpEvent::*;
        let s = &self.sources;
        let one = |v: f64| vec![(Vec::new(), v)];
        let by = |pairs: &[(&str, f64)]| -> Vec<Sample> {
            pairs
                .iter()
                .map(|(l, v)| (vec![(*l).to_owned()], *v))
                .collect()
        };
        let per_worker = |e: NtpEvent| -> Vec<Sample> {
            s.ntp
                .iter()
                .enumerate()
                .map(|(i, c)| (vec![i.to_string()], c.get(e) as f64))
                .collect()
        };
        let naks =
            self.ntp(NakCookieUnknownKey) + self.ntp(NakCookieInvalid) + self.ntp(NakAuthFailed);
        let load =
            |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
        match name {
            "ntsd_ntp_requests_total" => by(&[
                ("plain", self.ntp(ReplyPlain) + self.ntp(ReplyKod)),
                ("nts", self.ntp(ReplyNts) + naks),
            ]),
            "ntsd_ntp_responses_total" => by(&[
                ("plain", self.ntp(ReplyPlain)),
                ("nts", self.ntp(ReplyNts)),
                ("nak", naks),
                ("kod", self.ntp(ReplyKod)),
            ]),
            "ntsd_ntp_naks_total" => by(&[
                ("cookie_unknown_key", self.ntp(NakCookieUnknownKey)),
                ("cookie_invalid", self.ntp(NakCookieInvalid)),
                ("auth_failed", self.ntp(NakAuthFailed)),
            ]),
            "ntsd_ntp_dropped_total" => by(&[
                ("too_short", self.ntp(DropTooShort)),
                ("not_client", self.ntp(DropNotClient)),
                ("bad_version", self.ntp(DropBadVersion)),
                ("malformed", self.ntp(DropMalformed)),
                ("malformed_nts", self.ntp(DropMalformedNts)),
                ("buffer_too_small", self.ntp(DropBufferTooSmall)),
                ("access_denied", self.ntp(DropAccessDenied)),
                ("rate_limited", self.ntp(DropRateLimited)),
            ]),
            "ntsd_ntp_io_errors_total" => by(&[
                ("receive", self.ntp(ReceiveError)),
                ("send", self.ntp(SendError)),
            ]),
            "ntsd_ntp_kernel_timestamps_total" => one(self.ntp(KernelTimestamp)),
            "ntsd_ntp_daemon_timestamps_total" => one(self.ntp(NoKernelTimestamp)),
            "ntsd_ntp_interleaved_responses_total" => one(self.ntp(ReplyInterleaved)),
            "ntsd_ntp_kernel_tx_timestamps_total" => one(self.ntp(KernelTxTimestamp)),
            "ntsd_ntp_tx_timestamps_lost_total" => one(self.ntp(TxTimestampLost)),
            "ntsd_ntp_timestamps_held" => {
                one(s.ntp.iter().map(|c| c.saved().0).sum::<u64>() as f64)
            }
            "ntsd_ntp_timestamp_span_seconds" => {
                one(s.ntp.iter().map(|c| c.saved().1).max().unwrap_or(0) as f64)
            }
            "ntsd_ntp_client_log_records_dropped_total" => {
                one(s.clients.iter().map(|c| c.dropped()).sum::<u64>() as f64)
            }
            "ntsd_worker_packets_received_total" => per_worker(Received),
            "ntsd_worker_packets_sent_total" => per_worker(Sent),
            "ntsd_ntp_workers" => one(s.ntp.len() as f64),
            "ntsd_ntp_worker_restarts_total" => {
                one(s.health.workers().iter().map(|w| w.restarts()).sum::<u64>() as f64)
            }
            "ntsd_ntp_backend_info" => by(&[(s.backend, 1.0)]),
            "ntsd_ke_connections_total" => one(s.ke.get(KeEvent::Accepted) as f64),
            "ntsd_ke_connections_open" => {
                let free = s.ke_open.available_permits();
                one(s.ke_max_connections.saturating_sub(free) as f64)
            }
            "ntsd_ke_sessions_total" => AeadAlgorithm::ALL
                .iter()
                .map(|&a| (vec![a.id().to_string()], s.ke.sessions(a) as f64))
                .collect(),
            "ntsd_ke_errors_total" => KeEvent::ALL
                .iter()
                .filter_map(|&e| Some((vec![e.reason()?.to_owned()], s.ke.get(e) as f64)))
                .collect(),
            "ntsd_ke_cookies_issued_total" => one(s.ke.cookies() as f64),
            "ntsd_ke_certificate_reloads_total" => {
                let (ok, refused) = s.certs.reloads();
                by(&[("ok", ok as f64), ("refused", refused as f64)])
            }
            "ntsd_ke_certificate_expiry_timestamp_seconds" => s
                .certs
                .expiries()
                .into_iter()
                .map(|(chain, not_after)| (vec![chain], not_after as f64))
                .collect(),
            "ntsd_ke_up" => one(f64::from(u8::from(s.certs.usable()))),
            "ntsd_keys_current_id" => one(f64::from(s.keys.load().current_id())),
            "ntsd_keys_current_age_seconds" => {
                let ring = s.keys.load();
                let starts = ring.get(ring.current_id()).map_or(0, |e| e.starts);
                let forced = s
                    .key_events
                    .forced_at
                    .load(std::sync::atomic::Ordering::Relaxed);
                let since = starts.max(forced);
                one(crate::time::clock::unix_secs().saturating_sub(since) as f64)
            }
            "ntsd_keys_accepted" => one(s
                .keys
                .load()
                .entries()
                .iter()
                .map(|e| e.keys.len())
                .sum::<usize>() as f64),
            "ntsd_keys_rotations_total" => by(&[
                ("scheduled", load(&s.key_events.rotations)),
                ("forced", load(&s.key_events.forced)),
                ("clock_step", load(&s.key_events.step_rotations)),
            ]),
            "ntsd_keys_rotation_failures_total" => one(load(&s.key_events.failures)),
            "ntsd_keys_clock_steps_total" => one(load(&s.key_events.clock_steps)),
            "ntsd_time_stratum" => one(f64::from(s.system.load().stratum)),
            "ntsd_time_leap_indicator" => one(f64::from(s.system.load().leap as u8)),
            "ntsd_time_root_delay_seconds" => one(s.system.load().root_delay.seconds()),
            "ntsd_time_root_dispersion_seconds" => one(s.system.load().root_dispersion.seconds()),
            "ntsd_time_synchronised" => {
                let synced = s.system.load().leap != nts_proto::Leap::Unsynchronized;
                one(f64::from(u8::from(synced)))
            }
            "ntsd_time_upstream_last_success_age_seconds" => match s.upstream {
                true => one(s.time_events.upstream_age()),
                false => Vec::new(),
            },
            "ntsd_time_unsynchronised_total" => one(load(&s.time_events.unsynchronised)),
            "ntsd_time_upstream_polls_total" => s
                .time_events
                .polls()
                .iter()
                .map(|(l, v)| (vec![(*l).to_owned()], *v as f64))
                .collect(),
            "ntsd_build_info" => vec![(
                vec![env!("CARGO_PKG_VERSION").to_owned(), COMMIT.to_owned()],
                1.0,
            )],
            _ => Vec::new(),
        }
    }
}

impl Collector for NtsdCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        FAMILIES
            .iter()
            .filter_map(|&(name, kind, labels, help)| {
                let samples = self.samples(name);
                if samples.is_empty() {
                    return None;
                }
                let mut f = MetricFamily::default();
                f.set_name(name.to_owned());
                f.set_help(help.to_owned());
                f.set_field_type(kind);
                f.set_metric(
                    samples
                        .into_iter()
                        .map(|s| metric(kind, labels, s))
                        .collect(),
                );
                Some(f)
            })
            .collect()
    }
}

fn metric(kind: MetricType, names: &[&str], (values, v): Sample) -> Metric {
    let labels = names
        .iter()
        .zip(values)
        .map(|(n, value)| {
            let mut l = LabelPair::default();
            l.set_name((*n).to_owned());
            l.set_value(value);
            l
        })
        .collect();
    let mut m = Metric::from_label(labels);
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
    }
    m
}

/// The registry behind `/metrics`: the ntsd families, the KE session
/// histogram and the process families.
pub(crate) fn registry(sources: Sources) -> Result<prometheus::Registry, String> {
    let err = |e: prometheus::Error| format!("metrics: {e}");
    let r = prometheus::Registry::new();
    r.register(Box::new(sources.ke.duration.clone()))
        .map_err(err)?;
    r.register(Box::new(NtsdCollector::new(sources).map_err(err)?))
        .map_err(err)?;
    r.register(Box::new(ProcessFamilies(
        prometheus::process_collector::ProcessCollector::for_self(),
    )))
    .map_err(err)?;
    Ok(r)
}

/// The `process_*` families of the `prometheus` crate, with
/// `process_cpu_seconds_total` to the nanosecond: the crate's counts
/// whole seconds (rust-prometheus #451), which a CPU panel draws as steps
/// of a whole core. Written here rather than replacing the crate's
/// collector, whose other families are kept as they are.
struct ProcessFamilies(prometheus::process_collector::ProcessCollector);

impl Collector for ProcessFamilies {
    fn desc(&self) -> Vec<&Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.0.collect();
        // User and system time of every thread (CLOCK_PROCESS_CPUTIME_ID).
        let cpu = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
        let total = cpu.tv_sec as f64 + cpu.tv_nsec as f64 / 1e9;
        for family in &mut families {
            if family.name() == "process_cpu_seconds_total" {
                for m in family.mut_metric() {
                    let mut c = Counter::default();
                    c.set_value(total);
                    m.set_counter(c);
                }
            }
        }
        families
    }
}

/// The text exposition of everything in `registry`.
pub(crate) fn render(registry: &prometheus::Registry) -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    // Encoding to a Vec fails only on invalid families, which the collector
    // does not produce.
    let _ = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
