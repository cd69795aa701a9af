//! Following an upstream NTP server (normally the local chronyd).
//!
//! Each poll is one plain NTPv4 exchange. A good reply (server mode, our
//! origin timestamp echoed, stratum 1-14, not leap 3, offset within 128 ms of
//! our clock, which the upstream is expected to discipline) becomes the
//! basis of what ntsd serves:
//!
//! ```text
//! stratum = upstream + 1          refid = upstream IPv4 address (IPv6: MD5 hash)
//! root delay = upstream's + measured round-trip delay
//! root dispersion = upstream's + measured dispersion + 15 ppm x age of the sample
//! leap = upstream's warning (only on the last day of a month) or none
//! ```
//!
//! A failed poll changes nothing until `hold_time` has passed since the last
//! good one; then ntsd serves leap indicator 3 (alarm) until a good reply.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use nts_proto::packet::Mode;
use nts_proto::reader::Reader;
use nts_proto::{Leap, NtpHeader, NtpShort, NtpTimestamp, SystemInfo};

use crate::time::clock::now_ntp;

/// Dispersion growth of an unsynchronised clock (RFC 5905, PHI).
pub(crate) const PHI: f64 = 15e-6;
/// A reply whose offset from our clock exceeds this means our clock is not
/// disciplined by the upstream (RFC 5905's step threshold).
pub(crate) const MAX_OFFSET: f64 = 0.128;

/// A good upstream sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) stratum: u8,
    pub(crate) leap: Leap,
    /// Root delay to report: upstream's plus our measured delay, seconds.
    pub(crate) root_delay: f64,
    /// Root dispersion at the sample: upstream's plus measured, seconds.
    pub(crate) root_dispersion: f64,
    pub(crate) reference_time: NtpTimestamp,
}

/// Why a poll did not yield a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PollFailure {
    /// No reply within the timeout, or a send/receive error.
    Silent,
    /// The upstream reports leap indicator 3, stratum 0 (kiss) or 16, or
    /// stratum 15 (one further away is 16: unsynchronised, RFC 5905).
    Unsynchronized,
    /// A reply that is not an answer to our request.
    Invalid,
    /// Our clock is more than [`MAX_OFFSET`] from the upstream's.
    OffsetTooLarge,
}

/// Interprets a reply to a request sent at `t1` and received at `t4`.
pub(crate) fn evaluate(
    reply: &[u8],
    t1: NtpTimestamp,
    t4: NtpTimestamp,
    precision: i8,
) -> Result<Sample, PollFailure> {
    let h = NtpHeader::decode(&mut Reader::new(reply)).ok_or(PollFailure::Invalid)?;
    if h.mode != Mode::Server || h.origin != t1 {
        return Err(PollFailure::Invalid);
    }
    // Served one stratum further away: 15 would become 16, "unsynchronised".
    if h.leap == Leap::Unsynchronized || !(1..=14).contains(&h.stratum) {
        return Err(PollFailure::Unsynchronized);
    }
    let (offset, delay) = nts_proto::client::offset_delay(t1, h.receive, h.transmit, t4);
    if offset.abs() > MAX_OFFSET {
        return Err(PollFailure::OffsetTooLarge);
    }
    let delay = delay.max(0.0);
    // Half the round trip bounds the error of one exchange; both clocks'
    // reading precision adds to it.
    let dispersion =
        delay / 2.0 + 2f64.powi(i32::from(precision)) + 2f64.powi(i32::from(h.precision));
    Ok(Sample {
        stratum: h.stratum,
        leap: h.leap,
        root_delay: h.root_delay.seconds() + delay,
        root_dispersion: h.root_dispersion.seconds() + dispersion,
        reference_time: h.reference_time,
    })
}

/// The reference id that names the upstream (RFC 5905, section 7.3).
pub(crate) fn refid_of(addr: IpAddr) -> [u8; 4] {
    match addr {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            use md5::{Digest, Md5};
            let d = Md5::digest(a.octets());
            [d[0], d[1], d[2], d[3]]
        }
    }
}

/// The upstream state machine, driven by `Instant`s so it is tested without
/// sleeping.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    hold: Duration,
    refid: [u8; 4],
    precision: i8,
    last_good: Option<(Instant, Sample)>,
}

impl Tracker {
    pub(crate) fn new(hold: Duration, refid: [u8; 4], precision: i8) -> Self {
        Self {
            hold,
            refid,
            precision,
            last_good: None,
        }
    }

    /// The upstream's address changed (its name resolved anew).
    pub(crate) fn set_refid(&mut self, refid: [u8; 4]) {
        self.refid = refid;
    }

    pub(crate) fn record(&mut self, at: Instant, poll: Result<Sample, PollFailure>) {
        if let Ok(sample) = poll {
            self.last_good = Some((at, sample));
        }
    }

    /// Whether the last good sample is younger than the hold time.
    pub(crate) fn synchronized(&self, now: Instant) -> bool {
        self.last_good
            .is_some_and(|(at, _)| now.saturating_duration_since(at) <= self.hold)
    }

    /// What to serve at `now`; `unix_now` decides whether a leap warning
    /// applies today.
    pub(crate) fn system_info(&self, now: Instant, unix_now: u64) -> SystemInfo {
        let Some((at, s)) = self.last_good.filter(|_| self.synchronized(now)) else {
            return SystemInfo {
                precision: self.precision,
                ..SystemInfo::unsynchronized()
            };
        };
        let age = now.saturating_duration_since(at).as_secs_f64();
        // Samples with leap 3 were rejected by `evaluate`.
        let leap = crate::time::clock::leap_warning_today(s.leap, unix_now);
        SystemInfo {
            leap,
            // `evaluate` took only strata 1-14.
            stratum: s.stratum.saturating_add(1),
            precision: self.precision,
            root_delay: NtpShort::from_seconds(s.root_delay),
            root_dispersion: NtpShort::from_seconds(s.root_dispersion + PHI * age),
            reference_id: self.refid,
            reference_time: s.reference_time,
        }
    }
}

/// One poll: a plain NTPv4 request, the reply within `timeout`.
pub(crate) async fn poll(
    socket: &tokio::net::UdpSocket,
    upstream: SocketAddr,
    timeout: Duration,
    precision: i8,
) -> Result<Sample, PollFailure> {
    let t1 = now_ntp();
    let request = NtpHeader::client_request(t1).to_bytes();
    socket
        .send_to(&request, upstream)
        .await
        .map_err(|_| PollFailure::Silent)?;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| PollFailure::Silent)?
            .map_err(|_| PollFailure::Silent)?;
        if from != upstream {
            continue;
        }
        let reply = buf.get(..n).unwrap_or_default();
        match evaluate(reply, t1, now_ntp(), precision) {
            // A stale reply to an earlier poll: keep waiting for ours.
            Err(PollFailure::Invalid) => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(stratum: u8, leap: Leap, origin: NtpTimestamp, t: NtpTimestamp) -> [u8; 48] {
        NtpHeader {
            leap,
            version: 4,
            mode: Mode::Server,
            stratum,
            poll: 0,
            precision: -20,
            root_delay: NtpShort::from_seconds(0.010),
            root_dispersion: NtpShort::from_seconds(0.001),
            reference_id: *b"GPS\0",
            reference_time: t,
            origin,
            receive: t,
            transmit: t,
        }
        .to_bytes()
    }

    const T1: NtpTimestamp = NtpTimestamp(1000 << 32);
    const T2: NtpTimestamp = NtpTimestamp((1000 << 32) + (1 << 22));
    const T4: NtpTimestamp = NtpTimestamp((1000 << 32) + (1 << 23));

    #[test]
    fn a_good_reply_is_one_stratum_further() {
        let s = evaluate(&reply(1, Leap::NoWarning, T1, T2), T1, T4, -20).unwrap();
        let delay = T4.seconds_since(T1);
        assert!((s.root_delay - (0.010 + delay)).abs() < 1e-4);
        let mut t = Tracker::new(Duration::from_secs(60), [127, 0, 0, 1], -20);
        let now = Instant::now();
        t.record(now, Ok(s));
        let info = t.system_info(now, 0);
        assert_eq!(
            (info.stratum, info.leap, info.reference_id),
            (2, Leap::NoWarning, [127, 0, 0, 1])
        );
        assert!(info.root_dispersion.seconds() > 0.001);
    }

    #[test]
    fn bad_replies_are_classified() {
        assert_eq!(
            evaluate(&reply(1, Leap::Unsynchronized, T1, T2), T1, T4, -20),
            Err(PollFailure::Unsynchronized)
        );
        assert_eq!(
            evaluate(&reply(0, Leap::NoWarning, T1, T2), T1, T4, -20),
            Err(PollFailure::Unsynchronized)
        );
        assert_eq!(
            evaluate(&reply(16, Leap::NoWarning, T1, T2), T1, T4, -20),
            Err(PollFailure::Unsynchronized)
        );
        // One stratum further than 15 is 16, which means unsynchronised.
        assert_eq!(
            evaluate(&reply(15, Leap::NoWarning, T1, T2), T1, T4, -20),
            Err(PollFailure::Unsynchronized)
        );
        let s = evaluate(&reply(14, Leap::NoWarning, T1, T2), T1, T4, -20).unwrap();
        let mut t = Tracker::new(Duration::from_secs(60), [1, 2, 3, 4], -20);
        let now = Instant::now();
        t.record(now, Ok(s));
        assert_eq!(t.system_info(now, 0).stratum, 15);
        assert_eq!(
            evaluate(&reply(1, Leap::NoWarning, T2, T2), T1, T4, -20),
            Err(PollFailure::Invalid)
        );
        assert_eq!(evaluate(&[0u8; 20], T1, T4, -20), Err(PollFailure::Invalid));
        let far = NtpTimestamp(T2.0 + (1 << 32));
        assert_eq!(
            evaluate(&reply(1, Leap::NoWarning, T1, far), T1, T4, -20),
            Err(PollFailure::OffsetTooLarge)
        );
    }

    #[test]
    fn hold_time_then_alarm_then_recovery() {
        let hold = Duration::from_secs(10);
        let mut t = Tracker::new(hold, [1, 2, 3, 4], -20);
        let start = Instant::now();
        assert_eq!(t.system_info(start, 0).leap, Leap::Unsynchronized);
        let good = evaluate(&reply(2, Leap::NoWarning, T1, T2), T1, T4, -20).unwrap();
        t.record(start, Ok(good));
        // Silent, within the hold time: still synchronised, dispersion grows at 15 ppm.
        t.record(start + Duration::from_secs(5), Err(PollFailure::Silent));
        let held = t.system_info(start + Duration::from_secs(5), 0);
        assert_eq!((held.stratum, held.leap), (3, Leap::NoWarning));
        let grown =
            held.root_dispersion.seconds() - t.system_info(start, 0).root_dispersion.seconds();
        assert!((grown - 5.0 * PHI).abs() < 2e-5, "{grown}");
        // Past the hold time: alarm.
        let late = t.system_info(start + Duration::from_secs(11), 0);
        assert_eq!(late.leap, Leap::Unsynchronized);
        assert!(!t.synchronized(start + Duration::from_secs(11)));
        // Recovery.
        t.record(start + Duration::from_secs(12), Ok(good));
        assert_eq!(
            t.system_info(start + Duration::from_secs(12), 0).leap,
            Leap::NoWarning
        );
    }

    #[test]
    fn leap_warning_passes_only_on_the_last_day_of_a_month() {
        let mut t = Tracker::new(Duration::from_secs(60), [1, 2, 3, 4], -20);
        let now = Instant::now();
        t.record(
            now,
            evaluate(&reply(1, Leap::InsertSecond, T1, T2), T1, T4, -20),
        );
        assert_eq!(t.system_info(now, 1_483_142_400).leap, Leap::InsertSecond); // 2016-12-31
        assert_eq!(t.system_info(now, 1_483_056_000).leap, Leap::NoWarning); // 2016-12-30
    }

    #[test]
    fn ipv6_refid_is_an_md5_prefix() {
        // Computed independently: Python hashlib.md5(bytes(15) + b"\\x01").
        let addr: IpAddr = "::1".parse().unwrap();
        let id = refid_of(addr);
        assert_eq!(id, IPV6_LOOPBACK_MD5_PREFIX);
        assert_eq!(refid_of("192.0.2.7".parse().unwrap()), [192, 0, 2, 7]);
    }

    const IPV6_LOOPBACK_MD5_PREFIX: [u8; 4] = [207, 64, 77, 200];
}
