//! Counters. Each NTP worker owns one [`NtpCounters`] block (cache-line
//! aligned, written only by that worker with relaxed atomics), and the
//! metrics collector ([`crate::ops::metrics`]) sums the blocks at scrape
//! time, so the hot path never contends on a shared counter. The KE front
//! end, key rotation and the time source are not hot paths; their counters
//! are shared atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use nts_proto::{Action, AeadAlgorithm, DropReason, NakReason, ReplyKind};

/// Every NTP outcome a worker counts, in metric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NtpEvent {
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
    /// A datagram handled with the kernel's receive timestamp.
    KernelTimestamp,
    /// A reply the kernel took (counted per batch, not per packet).
    Sent,
    /// Refused by `[access]` (no reply).
    DropAccessDenied,
    /// Over `[access.rate_limit]` (no reply).
    DropRateLimited,
    /// Over the rate limit, answered with a RATE kiss-o'-death.
    ReplyKod,
    /// A reply in interleaved mode (it carried a saved transmit timestamp).
    ReplyInterleaved,
    /// An interleaved reply whose saved transmit timestamp was the kernel's.
    KernelTxTimestamp,
    /// A transmit timestamp asked of the kernel that did not come back (its
    /// pair is never sent; the client's next reply is basic).
    TxTimestampLost,
}

pub(crate) const NTP_EVENTS: usize = 23;

impl NtpEvent {
    #[cfg(test)]
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
        NtpEvent::KernelTimestamp,
        NtpEvent::Sent,
        NtpEvent::DropAccessDenied,
        NtpEvent::DropRateLimited,
        NtpEvent::ReplyKod,
        NtpEvent::ReplyInterleaved,
        NtpEvent::KernelTxTimestamp,
        NtpEvent::TxTimestampLost,
    ];

    /// The event that an [`Action`] from `handle` counts as.
    pub(crate) fn of(action: &Action) -> NtpEvent {
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
pub(crate) struct NtpCounters {
    counts: [AtomicU64; NTP_EVENTS],
    /// Interleaved mode's saved timestamps: how many are held, and the
    /// seconds from the oldest to the newest (gauges).
    held: AtomicU64,
    span: AtomicU64,
}

impl NtpCounters {
    /// Sets the saved-timestamp gauges.
    #[inline]
    pub(crate) fn set_saved(&self, held: usize, span_seconds: u64) {
        self.held.store(held as u64, Relaxed);
        self.span.store(span_seconds, Relaxed);
    }

    /// Saved timestamps held, and their span in seconds.
    pub(crate) fn saved(&self) -> (u64, u64) {
        (self.held.load(Relaxed), self.span.load(Relaxed))
    }

    #[inline]
    pub(crate) fn add(&self, event: NtpEvent) {
        self.add_n(event, 1);
    }

    #[inline]
    pub(crate) fn add_n(&self, event: NtpEvent, n: u64) {
        if let Some(c) = self.counts.get(event as usize) {
            c.fetch_add(n, Relaxed);
        }
    }

    pub(crate) fn get(&self, event: NtpEvent) -> u64 {
        self.counts
            .get(event as usize)
            .map_or(0, |c| c.load(Relaxed))
    }
}

/// NTS-KE outcomes (the KE front end is not a hot path; shared atomics are fine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeEvent {
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
    /// Refused by the access list, before TLS.
    AccessDenied,
    /// Over the per-address NTS-KE session rate, before TLS.
    RateLimited,
    /// Closed to make room: its address opened more connections than
    /// `max_connections_per_address`, and this was the oldest.
    Evicted,
    /// Refused before TLS: no usable certificate (NTS-KE is down).
    NoCertificate,
}

pub(crate) const KE_EVENTS: usize = 15;

impl KeEvent {
    pub(crate) const ALL: [KeEvent; KE_EVENTS] = [
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
        KeEvent::AccessDenied,
        KeEvent::RateLimited,
        KeEvent::Evicted,
        KeEvent::NoCertificate,
    ];

    /// The `reason` label of an error, `None` for the two outcomes that
    /// are not errors.
    pub(crate) fn reason(self) -> Option<&'static str> {
        use KeEvent::*;
        Some(match self {
            Accepted | Success => return None,
            NoCommonAead => "no_common_aead",
            NoCommonProtocol => "no_common_protocol",
            UnrecognizedCritical => "unrecognized_critical",
            BadRequest => "bad_request",
            NoAlpn => "no_alpn",
            TlsError => "tls",
            Timeout => "timeout",
            Busy => "busy",
            InternalError => "internal",
            AccessDenied => "access_denied",
            RateLimited => "rate_limited",
            Evicted => "evicted",
            NoCertificate => "no_certificate",
        })
    }
}

/// Buckets of `ntsd_ke_session_duration_seconds`, 1 ms to 10 s.
pub(crate) const KE_DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug)]
pub(crate) struct KeCounters {
    counts: [AtomicU64; KE_EVENTS],
    /// Completed sessions by the AEAD chosen, in `AeadAlgorithm::ALL` order.
    sessions: [AtomicU64; AeadAlgorithm::ALL.len()],
    cookies: AtomicU64,
    /// Accept to close of every session that got a connection slot.
    pub(crate) duration: prometheus::Histogram,
}

impl Default for KeCounters {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "ntsd_ke_session_duration_seconds",
            "NTS-KE sessions from accept to close (handshake, request, response), seconds.",
        )
        .buckets(KE_DURATION_BUCKETS.to_vec());
        Self {
            counts: Default::default(),
            sessions: Default::default(),
            cookies: AtomicU64::new(0),
            // Valid name, help and buckets: this cannot fail.
            duration: prometheus::Histogram::with_opts(opts)
                .unwrap_or_else(|e| unreachable!("histogram options: {e}")),
        }
    }
}

impl KeCounters {
    pub(crate) fn add(&self, event: KeEvent) {
        if let Some(c) = self.counts.get(event as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn get(&self, event: KeEvent) -> u64 {
        self.counts
            .get(event as usize)
            .map_or(0, |c| c.load(Relaxed))
    }

    /// A completed session that chose `aead` and issued `cookies`.
    pub(crate) fn session(&self, aead: AeadAlgorithm, cookies: usize) {
        self.add(KeEvent::Success);
        if let Some(i) = AeadAlgorithm::ALL.iter().position(|&a| a == aead) {
            if let Some(c) = self.sessions.get(i) {
                c.fetch_add(1, Relaxed);
            }
        }
        self.cookies.fetch_add(cookies as u64, Relaxed);
    }

    pub(crate) fn sessions(&self, aead: AeadAlgorithm) -> u64 {
        AeadAlgorithm::ALL
            .iter()
            .position(|&a| a == aead)
            .and_then(|i| self.sessions.get(i))
            .map_or(0, |c| c.load(Relaxed))
    }

    pub(crate) fn cookies(&self) -> u64 {
        self.cookies.load(Relaxed)
    }
}

/// Key-rotation outcomes.
#[derive(Debug, Default)]
pub(crate) struct KeyCounters {
    pub(crate) rotations: AtomicU64,
    pub(crate) forced: AtomicU64,
    /// Ring moves to the epoch of a stepped wall clock.
    pub(crate) step_rotations: AtomicU64,
    /// Rotations that could not be saved (the old ring stays in force).
    pub(crate) failures: AtomicU64,
    /// Steps of the wall clock against the monotonic clock (and a key
    /// file found ahead of the clock at start).
    pub(crate) clock_steps: AtomicU64,
    /// Unix time of the last forced rotation (0: none), for the key's age.
    pub(crate) forced_at: AtomicU64,
}

impl KeyCounters {
    /// A forced rotation at Unix time `now`.
    pub(crate) fn forced_at(&self, now: u64) {
        self.forced.fetch_add(1, Relaxed);
        self.forced_at.store(now, Relaxed);
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
    fn counters_add() {
        let c = NtpCounters::default();
        c.add(NtpEvent::ReplyNts);
        c.add_n(NtpEvent::ReplyNts, 2);
        assert_eq!(c.get(NtpEvent::ReplyNts), 3);
        let k = KeCounters::default();
        k.session(AeadAlgorithm::AesSivCmac512, 8);
        assert_eq!(k.sessions(AeadAlgorithm::AesSivCmac512), 1);
        assert_eq!(k.sessions(AeadAlgorithm::AesSivCmac256), 0);
        assert_eq!((k.get(KeEvent::Success), k.cookies()), (1, 8));
    }
}
