//! Counters. Each NTP worker owns one [`NtpCounters`] block (cache-line
//! aligned, written only by that worker with relaxed atomics), and the
//! metrics endpoint sums the blocks at scrape time, so the hot path never
//! contends on a shared counter.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nts_proto::{Action, DropReason, NakReason, ReplyKind};

/// Every NTP outcome a worker counts, in metric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NtpEvent {
    Received,
    ReplyPlain,
    ReplyNts,
    NakCookieUnknownKey,
    NakCookieInvalid,
    NakAuthFailed,
    DropTooShort,
    DropNotClient,
    DropBadVersion,
    DropMalformed,
    DropMalformedNts,
    DropBufferTooSmall,
    ReceiveError,
    SendError,
    /// A datagram without a kernel receive timestamp (a clock read instead).
    NoKernelTimestamp,
}

pub const NTP_EVENTS: usize = 15;

impl NtpEvent {
    pub const ALL: [NtpEvent; NTP_EVENTS] = [
        NtpEvent::Received,
        NtpEvent::ReplyPlain,
        NtpEvent::ReplyNts,
        NtpEvent::NakCookieUnknownKey,
        NtpEvent::NakCookieInvalid,
        NtpEvent::NakAuthFailed,
        NtpEvent::DropTooShort,
        NtpEvent::DropNotClient,
        NtpEvent::DropBadVersion,
        NtpEvent::DropMalformed,
        NtpEvent::DropMalformedNts,
        NtpEvent::DropBufferTooSmall,
        NtpEvent::ReceiveError,
        NtpEvent::SendError,
        NtpEvent::NoKernelTimestamp,
    ];

    /// Prometheus metric name and labels.
    pub fn metric(self) -> (&'static str, &'static str) {
        use NtpEvent::*;
        match self {
            Received => ("ntsd_ntp_requests_total", ""),
            ReplyPlain => ("ntsd_ntp_responses_total", "kind=\"plain\""),
            ReplyNts => ("ntsd_ntp_responses_total", "kind=\"nts\""),
            NakCookieUnknownKey => ("ntsd_ntp_naks_total", "reason=\"cookie_unknown_key\""),
            NakCookieInvalid => ("ntsd_ntp_naks_total", "reason=\"cookie_invalid\""),
            NakAuthFailed => ("ntsd_ntp_naks_total", "reason=\"auth_failed\""),
            DropTooShort => ("ntsd_ntp_dropped_total", "reason=\"too_short\""),
            DropNotClient => ("ntsd_ntp_dropped_total", "reason=\"not_client\""),
            DropBadVersion => ("ntsd_ntp_dropped_total", "reason=\"bad_version\""),
            DropMalformed => ("ntsd_ntp_dropped_total", "reason=\"malformed\""),
            DropMalformedNts => ("ntsd_ntp_dropped_total", "reason=\"malformed_nts\""),
            DropBufferTooSmall => ("ntsd_ntp_dropped_total", "reason=\"buffer_too_small\""),
            ReceiveError => ("ntsd_ntp_io_errors_total", "op=\"receive\""),
            SendError => ("ntsd_ntp_io_errors_total", "op=\"send\""),
            NoKernelTimestamp => ("ntsd_ntp_no_kernel_timestamp_total", ""),
        }
    }

    /// The event that an [`Action`] from `handle` counts as.
    pub fn of(action: &Action) -> NtpEvent {
        match action {
            Action::Reply { kind, .. } => match kind {
                ReplyKind::Plain => NtpEvent::ReplyPlain,
                ReplyKind::Nts => NtpEvent::ReplyNts,
                ReplyKind::Nak(NakReason::CookieUnknownKey) => NtpEvent::NakCookieUnknownKey,
                ReplyKind::Nak(NakReason::CookieInvalid) => NtpEvent::NakCookieInvalid,
                ReplyKind::Nak(NakReason::AuthFailed) => NtpEvent::NakAuthFailed,
            },
            Action::Ignore(reason) => match reason {
                DropReason::TooShort => NtpEvent::DropTooShort,
                DropReason::NotClient => NtpEvent::DropNotClient,
                DropReason::BadVersion => NtpEvent::DropBadVersion,
                DropReason::Malformed => NtpEvent::DropMalformed,
                DropReason::MalformedNts => NtpEvent::DropMalformedNts,
                DropReason::BufferTooSmall => NtpEvent::DropBufferTooSmall,
            },
        }
    }
}

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct NtpCounters {
    counts: [AtomicU64; NTP_EVENTS],
}

impl NtpCounters {
    #[inline]
    pub fn add(&self, event: NtpEvent) {
        if let Some(c) = self.counts.get(event as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn get(&self, event: NtpEvent) -> u64 {
        self.counts
            .get(event as usize)
            .map_or(0, |c| c.load(Relaxed))
    }
}

/// NTS-KE outcomes (the KE front end is not a hot path; shared atomics are fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeEvent {
    Accepted,
    Success,
    NoCommonAead,
    NoCommonProtocol,
    UnrecognizedCritical,
    BadRequest,
    NoAlpn,
    TlsError,
    Timeout,
    Busy,
    InternalError,
}

pub const KE_EVENTS: usize = 11;

impl KeEvent {
    pub const ALL: [KeEvent; KE_EVENTS] = [
        KeEvent::Accepted,
        KeEvent::Success,
        KeEvent::NoCommonAead,
        KeEvent::NoCommonProtocol,
        KeEvent::UnrecognizedCritical,
        KeEvent::BadRequest,
        KeEvent::NoAlpn,
        KeEvent::TlsError,
        KeEvent::Timeout,
        KeEvent::Busy,
        KeEvent::InternalError,
    ];

    pub fn metric(self) -> (&'static str, &'static str) {
        use KeEvent::*;
        match self {
            Accepted => ("ntsd_ke_connections_total", ""),
            Success => ("ntsd_ke_sessions_total", ""),
            NoCommonAead => ("ntsd_ke_errors_total", "reason=\"no_common_aead\""),
            NoCommonProtocol => ("ntsd_ke_errors_total", "reason=\"no_common_protocol\""),
            UnrecognizedCritical => ("ntsd_ke_errors_total", "reason=\"unrecognized_critical\""),
            BadRequest => ("ntsd_ke_errors_total", "reason=\"bad_request\""),
            NoAlpn => ("ntsd_ke_errors_total", "reason=\"no_alpn\""),
            TlsError => ("ntsd_ke_errors_total", "reason=\"tls\""),
            Timeout => ("ntsd_ke_errors_total", "reason=\"timeout\""),
            Busy => ("ntsd_ke_errors_total", "reason=\"busy\""),
            InternalError => ("ntsd_ke_errors_total", "reason=\"internal\""),
        }
    }
}

#[derive(Debug, Default)]
pub struct KeCounters {
    counts: [AtomicU64; KE_EVENTS],
}

impl KeCounters {
    pub fn add(&self, event: KeEvent) {
        if let Some(c) = self.counts.get(event as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub fn get(&self, event: KeEvent) -> u64 {
        self.counts
            .get(event as usize)
            .map_or(0, |c| c.load(Relaxed))
    }
}

/// Key-rotation outcomes.
#[derive(Debug, Default)]
pub struct KeyCounters {
    pub rotations: AtomicU64,
    pub forced: AtomicU64,
    /// Ring moves to the epoch of a stepped wall clock.
    pub step_rotations: AtomicU64,
    /// Rotations that could not be saved (the old ring stays in force).
    pub failures: AtomicU64,
    /// Steps of the wall clock against the monotonic clock (and a key
    /// file found ahead of the clock at start).
    pub clock_steps: AtomicU64,
}

impl KeyCounters {
    pub fn samples(&self) -> [(&'static str, &'static str, u64); 5] {
        [
            (
                "ntsd_key_rotations_total",
                "kind=\"scheduled\"",
                self.rotations.load(Relaxed),
            ),
            (
                "ntsd_key_rotations_total",
                "kind=\"forced\"",
                self.forced.load(Relaxed),
            ),
            (
                "ntsd_key_rotations_total",
                "kind=\"clock_step\"",
                self.step_rotations.load(Relaxed),
            ),
            (
                "ntsd_keys_clock_steps_total",
                "",
                self.clock_steps.load(Relaxed),
            ),
            (
                "ntsd_key_rotation_failures_total",
                "",
                self.failures.load(Relaxed),
            ),
        ]
    }
}

/// Appends metric lines, grouping samples under one HELP/TYPE per name.
pub fn render(out: &mut String, samples: &[(&str, &str, u64)]) {
    use std::fmt::Write;
    let mut last = "";
    for &(name, labels, value) in samples {
        if name != last {
            let _ = writeln!(out, "# TYPE {name} counter");
            last = name;
        }
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_tables_match_their_indices() {
        for (i, e) in NtpEvent::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        for (i, e) in KeEvent::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }

    #[test]
    fn counters_add_and_render() {
        let c = NtpCounters::default();
        c.add(NtpEvent::ReplyNts);
        c.add(NtpEvent::ReplyNts);
        assert_eq!(c.get(NtpEvent::ReplyNts), 2);
        let mut s = String::new();
        render(
            &mut s,
            &[
                ("a_total", "", 1),
                ("b_total", "k=\"x\"", 2),
                ("b_total", "k=\"y\"", 3),
            ],
        );
        assert_eq!(s, "# TYPE a_total counter\na_total 1\n# TYPE b_total counter\nb_total{k=\"x\"} 2\nb_total{k=\"y\"} 3\n");
    }
}
