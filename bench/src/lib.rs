//! The load generator's core: a closed loop of NTS (or plain NTP) requests
//! over many source sockets, with every reply verified as a real client
//! would (origin timestamp, unique identifier, authenticator, and the new
//! cookies stored and each used once).
//!
//! ```text
//! sessions (NtsClient: keys + cookie pool) ──► request on an idle socket
//! sockets (non-blocking, one request in flight each) ──► reply ──► verify
//!                                            └── no reply in 1 s ──► lost
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nts_proto::client::{ClientError, NtsClient, Pending, NONCE_LEN, UNIQUE_ID_LEN};
use nts_proto::packet::{Mode, NtpHeader};
use nts_proto::reader::Reader;
use nts_proto::NtpTimestamp;
use ring::rand::{SecureRandom, SystemRandom};

/// A request is counted lost after this long without a reply.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub target: SocketAddr,
    /// Outstanding requests, one per source socket.
    pub window: usize,
    pub duration: Duration,
}

#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    pub sent: u64,
    pub valid: u64,
    pub naks: u64,
    pub invalid: u64,
    pub lost: u64,
    pub elapsed: Duration,
    /// Round-trip times of valid replies, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl FloodReport {
    pub fn percentile_us(&self, p: f64) -> u32 {
        if self.latencies_us.is_empty() {
            return 0;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0)
    }

    pub fn rate(&self) -> f64 {
        self.valid as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

enum Outstanding {
    Nts { session: usize, pending: Pending },
    Plain { transmit: NtpTimestamp },
}

struct Slot {
    socket: UdpSocket,
    in_flight: Option<(Instant, Outstanding)>,
}

fn clock() -> NtpTimestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

/// Runs the closed loop. With `sessions` empty, sends plain NTPv4.
/// Sessions whose cookies run out (a NAK or a lost reply costs one) are
/// skipped; the caller provides enough sessions for the run.
pub fn flood(cfg: &FloodConfig, sessions: &mut [NtsClient]) -> std::io::Result<FloodReport> {
    let bind: SocketAddr = if cfg.target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut slots = Vec::with_capacity(cfg.window);
    for _ in 0..cfg.window.max(1) {
        let socket = UdpSocket::bind(bind)?;
        socket.connect(cfg.target)?;
        socket.set_nonblocking(true)?;
        slots.push(Slot {
            socket,
            in_flight: None,
        });
    }
    let rng = SystemRandom::new();
    let mut report = FloodReport::default();
    let mut next_session = 0usize;
    let mut counter = 0u64;
    let mut req = [0u8; 2048];
    let mut resp = [0u8; 2048];
    let start = Instant::now();
    let end = start + cfg.duration;
    loop {
        let now = Instant::now();
        let sending = now < end;
        let mut busy = false;
        for slot in slots.iter_mut() {
            if let Some((sent_at, _)) = &slot.in_flight {
                if now.duration_since(*sent_at) > LOSS_TIMEOUT {
                    report.lost += 1;
                    slot.in_flight = None;
                }
            }
            if slot.in_flight.is_none() && sending {
                counter += 1;
                let transmit = NtpTimestamp(clock().0 ^ (counter & 0xffff));
                let (len, out) = if sessions.is_empty() {
                    let h = NtpHeader::client_request(transmit).to_bytes();
                    req.get_mut(..h.len())
                        .unwrap_or_default()
                        .copy_from_slice(&h);
                    (h.len(), Outstanding::Plain { transmit })
                } else {
                    let Some((session, len, pending)) =
                        build_nts(sessions, &mut next_session, transmit, &rng, &mut req)
                    else {
                        continue;
                    };
                    (len, Outstanding::Nts { session, pending })
                };
                match slot.socket.send(req.get(..len).unwrap_or_default()) {
                    Ok(_) => {
                        report.sent += 1;
                        slot.in_flight = Some((Instant::now(), out));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            if slot.in_flight.is_some() {
                busy = true;
            }
            let n = match slot.socket.recv(&mut resp) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                // ECONNREFUSED from an earlier send: the server is not there.
                Err(_) => {
                    report.invalid += 1;
                    slot.in_flight = None;
                    continue;
                }
            };
            let Some((sent_at, out)) = slot.in_flight.take() else {
                report.invalid += 1;
                continue;
            };
            let reply = resp.get(..n).unwrap_or_default();
            match verify(sessions, reply, &out) {
                Ok(()) => {
                    report.valid += 1;
                    let us = sent_at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    report.latencies_us.push(us);
                }
                Err(ClientError::Nak) => report.naks += 1,
                Err(_) => report.invalid += 1,
            }
        }
        if !sending && !busy {
            break;
        }
    }
    report.elapsed = cfg.duration.min(start.elapsed());
    report.latencies_us.sort_unstable();
    Ok(report)
}

fn build_nts(
    sessions: &mut [NtsClient],
    next: &mut usize,
    transmit: NtpTimestamp,
    rng: &SystemRandom,
    out: &mut [u8],
) -> Option<(usize, usize, Pending)> {
    let n = sessions.len();
    for _ in 0..n {
        let i = *next % n;
        *next = next.wrapping_add(1);
        let Some(s) = sessions.get_mut(i) else {
            continue;
        };
        if s.cookies_left() == 0 {
            continue;
        }
        let mut random = [0u8; UNIQUE_ID_LEN + NONCE_LEN];
        rng.fill(&mut random).ok()?;
        if let Ok((len, pending)) = s.build_request(transmit, &random, 8, out) {
            return Some((i, len, pending));
        }
    }
    None
}

fn verify(sessions: &mut [NtsClient], reply: &[u8], out: &Outstanding) -> Result<(), ClientError> {
    match out {
        Outstanding::Nts { session, pending } => sessions
            .get_mut(*session)
            .ok_or(ClientError::Unsolicited)?
            .verify_reply(reply, pending)
            .map(|_| ()),
        Outstanding::Plain { transmit } => {
            let h = NtpHeader::decode(&mut Reader::new(reply)).ok_or(ClientError::Malformed)?;
            if h.mode != Mode::Server || h.origin != *transmit || reply.len() != 48 {
                return Err(ClientError::Unsolicited);
            }
            Ok(())
        }
    }
}

/// Total CPU seconds (user + system) of a process, from /proc.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux architecture ntsd targets.
    Some((utime + stime) / 100.0)
}
