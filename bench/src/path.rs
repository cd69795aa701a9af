//! `ntsd-bench path`: a server's response path, measured on one clock.
//!
//! Paced requests (NTS or plain), one at a time. Each reply is verified as
//! in `flood`, and its kernel receive timestamp T4 is taken
//! (`SO_TIMESTAMPING`). For a server on this machine, over loopback, T4 is
//! taken inside the server's own send call, on the clock the server read
//! its transmit timestamp T3 from: T4 - T3 is the time from that read to
//! the reply reaching the network stack (for NTS: the seal, after any
//! compensation the server adds to T3, and the send), with no client clock
//! and no asymmetry guess in it. Its spread is the server's share of the
//! offset spread its clients see.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nts_proto::client::{NONCE_LEN, UNIQUE_ID_LEN};
use nts_proto::packet::{NtpHeader, HEADER_LEN};
use nts_proto::reader::Reader;
use nts_proto::NtpTimestamp;

use crate::random::{RandomError, RandomPool};
use crate::session::Session;
use crate::sys::DATAGRAM_MAX;
use crate::table::verify_plain;

#[derive(Debug)]
pub struct PathConfig {
    pub target: SocketAddr,
    pub count: usize,
    pub interval: Duration,
}

/// T4 - T3 of every verified reply, in nanoseconds, and what else happened.
#[derive(Debug, Default)]
pub struct PathReport {
    pub samples_ns: Vec<i64>,
    /// No reply within 1 s.
    pub lost: u64,
    /// A reply that failed verification (or an NTS NAK).
    pub invalid: u64,
    /// A verified reply without a kernel timestamp.
    pub no_timestamp: u64,
}

impl PathReport {
    /// The `p` quantile (0..=1) in microseconds, interpolated; 0 if empty.
    pub fn quantile_us(&self, p: f64) -> f64 {
        let mut v = self.samples_ns.clone();
        v.sort_unstable();
        let Some(last) = v.len().checked_sub(1) else {
            return 0.0;
        };
        let i = last as f64 * p.clamp(0.0, 1.0);
        let lo = i.floor() as usize;
        let hi = (lo + 1).min(last);
        let (a, b) = (v[lo] as f64, v[hi] as f64);
        (a + (b - a) * (i - lo as f64)) / 1000.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("system random number generator failed")]
    Random,
    #[error("the NTS session ran out of cookies after {0} requests (NAKs or losses)")]
    NoCookies(usize),
}

impl From<RandomError> for PathError {
    fn from(_: RandomError) -> Self {
        PathError::Random
    }
}

/// T4 - T3 in nanoseconds of NTP timestamps that are close together.
fn diff_ns(t4: NtpTimestamp, t3: NtpTimestamp) -> i64 {
    let units = t4.0.wrapping_sub(t3.0) as i64;
    ((i128::from(units) * 1_000_000_000) >> 32) as i64
}

/// Runs the measurement; NTS when `session` is given, plain NTPv4 otherwise.
pub fn measure(cfg: &PathConfig, mut session: Option<Session>) -> Result<PathReport, PathError> {
    let sock = UdpSocket::bind(if cfg.target.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })?;
    sock.connect(cfg.target)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let fd = sock.as_raw_fd();
    ntsd_udp::enable_rx_timestamps(&sock)?;
    let mut rng = RandomPool::new();
    let mut request = vec![0u8; DATAGRAM_MAX];
    let mut reply = vec![0u8; DATAGRAM_MAX];
    let mut report = PathReport {
        samples_ns: Vec::with_capacity(cfg.count),
        ..PathReport::default()
    };
    for i in 0..cfg.count {
        let transmit = NtpTimestamp(rng.u64()?);
        let random = rng.bytes::<{ UNIQUE_ID_LEN + NONCE_LEN }>()?;
        let len = match session.as_mut() {
            Some(s) => s
                .build_request(transmit, &random, &mut request)
                .map_err(|_| PathError::NoCookies(i))?,
            None => {
                request[..HEADER_LEN]
                    .copy_from_slice(&NtpHeader::client_request(transmit).to_bytes());
                HEADER_LEN
            }
        };
        sock.send(&request[..len])?;
        // Replies to earlier, lost requests are skipped by their origin.
        let got = loop {
            match ntsd_udp::recv_timestamped(fd, &mut reply) {
                Ok((n, stamp)) if n >= 48 && reply[24..32] == transmit.0.to_be_bytes() => {
                    break Some((n, stamp));
                }
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let Some((n, stamp)) = got else {
            report.lost += 1;
            continue;
        };
        let valid = match session.as_mut() {
            Some(s) => {
                let uid: &[u8; UNIQUE_ID_LEN] = random[..UNIQUE_ID_LEN]
                    .try_into()
                    .map_err(|_| PathError::Random)?;
                s.verify_reply(&reply[..n], transmit, uid).is_ok()
            }
            None => verify_plain(&reply[..n], transmit).is_ok(),
        };
        let header = NtpHeader::decode(&mut Reader::new(&reply[..n]));
        if !valid {
            report.invalid += 1;
        } else if let (Some(t4), Some(h)) = (stamp, header) {
            report.samples_ns.push(diff_ns(t4, h.transmit));
        } else {
            report.no_timestamp += 1;
        }
        std::thread::sleep(cfg.interval);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_and_quantiles() {
        let us = (1u64 << 32) / 1_000_000;
        let t3 = NtpTimestamp(u64::MAX - us); // wraps: still +2 µs
        assert!((diff_ns(NtpTimestamp(t3.0.wrapping_add(2 * us)), t3) - 2000).abs() < 5);
        assert!((diff_ns(t3, NtpTimestamp(t3.0.wrapping_add(2 * us))) + 2000).abs() < 5);
        let r = PathReport {
            samples_ns: vec![4000, 1000, 3000, 2000],
            ..PathReport::default()
        };
        assert_eq!(r.quantile_us(0.0), 1.0);
        assert_eq!(r.quantile_us(0.5), 2.5);
        assert_eq!(r.quantile_us(1.0), 4.0);
        assert_eq!(PathReport::default().quantile_us(0.5), 0.0);
    }
}
