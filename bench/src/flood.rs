//! The NTP/NTS flood: per thread, a fixed table of outstanding requests,
//! a few connected source sockets, batched I/O and every reply verified.
//!
//! ```text
//! free slot ──fill──► ready (request built ahead: random transmit, cookie, seal)
//!   ▲                   │ sendmmsg, up to 64 per call, sockets in turn (paced with --rate)
//!   │                   ▼
//!   ├──── reply ◄── in flight ── origin → slot (low 16 bits), must equal the
//!   │    (verify)       │         transmit, on the socket it was sent from
//!   └──── lost ◄────────┘ no reply within 1 s (a reply after that is "late")
//! ```
//!
//! Nothing is allocated per request: slots, request buffers, receive
//! buffers, cookie pools and the latency histogram are all sized up front.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::histogram::Histogram;
use crate::random::{RandomError, RandomPool};
use crate::session::Session;
use crate::sys::{self, RecvBatch, SendBatch, BATCH};
use crate::table::{State, Table};

/// A request is counted lost after this long without a reply.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);
/// The slot index travels in the low 16 bits of the transmit timestamp.
pub const MAX_WINDOW_PER_THREAD: usize = 1 << 16;
pub const MAX_SOCKETS_PER_THREAD: usize = 1024;
pub(crate) const SLOT_MASK: u64 = (MAX_WINDOW_PER_THREAD - 1) as u64;
/// How often in-flight requests are checked for loss.
const EXPIRE_EVERY: Duration = Duration::from_millis(20);
/// Longest wait for a reply before the loop looks at the clock again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Wait when requests are ready but every socket's send buffer was full.
const SEND_RETRY: Duration = Duration::from_micros(200);
/// Receive calls per socket per wake-up.
const RECV_CALLS: usize = 8;
/// Requested socket buffer sizes (the kernel caps them at rmem_max/wmem_max).
const SOCKET_BUFFER: usize = 4 << 20;

#[derive(Debug, Clone)]
pub struct FloodConfig {
    pub target: SocketAddr,
    /// Outstanding requests, all threads together.
    pub window: usize,
    pub duration: Duration,
    pub threads: usize,
    /// Source sockets (ports) per thread.
    pub sockets: usize,
    /// Requests per second, all threads together; `None`: as fast as
    /// replies come back (closed loop).
    pub rate: Option<f64>,
    /// Poll the sockets without ever sleeping (each thread keeps its core
    /// busy), so that a round trip does not include the generator's own
    /// wake-up.
    pub spin: bool,
    /// Source addresses the sockets are spread over, 127.0.0.1 and up (an
    /// IPv4 loopback target only): a server that steers each client
    /// address to one worker (ntsd) spreads the load over its workers only
    /// if the load comes from several addresses. 1: the kernel's choice.
    pub source_addresses: usize,
    /// Every request in interleaved form (RFC 9769), naming the receive
    /// timestamp of an earlier reply: a server with interleaved mode saves
    /// every reply's transmit timestamp and answers each request with one.
    pub xleave: bool,
}

impl FloodConfig {
    /// One thread, 16 sockets, closed loop.
    pub fn new(target: SocketAddr, window: usize, duration: Duration) -> Self {
        Self {
            target,
            window,
            duration,
            threads: 1,
            sockets: 16,
            rate: None,
            spin: false,
            source_addresses: 1,
            xleave: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FloodError {
    #[error("{0}")]
    Config(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("a generator thread panicked")]
    Panicked,
}

#[derive(Debug, Default, Clone)]
pub struct FloodReport {
    pub sent: u64,
    pub valid: u64,
    pub naks: u64,
    /// Replies that failed verification or matched no request.
    pub invalid: u64,
    /// Valid replies in interleaved mode (with `xleave`).
    pub interleaved: u64,
    /// Requests without a reply within [`LOSS_TIMEOUT`].
    pub lost: u64,
    /// Replies to requests already counted lost (not verified).
    pub late: u64,
    /// Socket errors (e.g. ICMP port unreachable reported on a socket).
    pub errors: u64,
    /// The sending period.
    pub elapsed: Duration,
    /// Round trips of valid replies, in microseconds.
    pub latency: Histogram,
}

impl FloodReport {
    pub fn percentile_us(&self, p: f64) -> u32 {
        self.latency.percentile(p)
    }

    /// Valid replies per second of sending.
    pub fn rate(&self) -> f64 {
        self.valid as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, o: &FloodReport) {
        self.sent += o.sent;
        self.valid += o.valid;
        self.interleaved += o.interleaved;
        self.naks += o.naks;
        self.invalid += o.invalid;
        self.lost += o.lost;
        self.late += o.late;
        self.errors += o.errors;
        self.latency.merge(&o.latency);
    }
}

/// Runs the flood. With `sessions` empty, sends plain NTPv4; otherwise NTS,
/// the sessions dealt out to the threads in turn. A session whose cookies
/// run out (a NAK or a lost reply costs one) is skipped.
pub fn flood(cfg: &FloodConfig, sessions: Vec<Session>) -> Result<FloodReport, FloodError> {
    let threads = cfg.threads;
    let bad = |s: &str| Err(FloodError::Config(s.to_owned()));
    if threads == 0 || cfg.window < threads {
        return bad("--window must be at least --threads (and --threads at least 1)");
    }
    if cfg.window.div_ceil(threads) > MAX_WINDOW_PER_THREAD {
        return bad("--window per thread must be at most 65536");
    }
    if cfg.sockets == 0 || cfg.sockets > MAX_SOCKETS_PER_THREAD {
        return bad("--sockets must be 1 to 1024");
    }
    if !sessions.is_empty() && sessions.len() < threads {
        return bad("NTS needs at least one session per thread (--sessions >= --threads)");
    }
    if cfg.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return bad("--rate must be a positive number");
    }
    let mut dealt: Vec<Vec<Session>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, s) in sessions.into_iter().enumerate() {
        if let Some(d) = dealt.get_mut(i % threads) {
            d.push(s);
        }
    }
    if !(1..=254).contains(&cfg.source_addresses) {
        return bad("--source-addresses must be 1..=254");
    }
    let spread = source_spread(cfg);
    let mut plans = Vec::with_capacity(threads);
    for (t, sessions) in dealt.into_iter().enumerate() {
        let window = cfg.window / threads + usize::from(t < cfg.window % threads);
        let sockets = (0..cfg.sockets)
            .map(|j| {
                let k = t * cfg.sockets + j;
                let source = (spread > 1)
                    .then(|| std::net::Ipv4Addr::new(127, 0, 0, 1 + (k % spread) as u8));
                source_socket(cfg.target, source)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        plans.push((sessions, sockets, window));
    }
    let per_thread_rate = cfg.rate.map(|r| r / threads as f64);
    let start = Instant::now();
    let results: Vec<Result<FloodReport, FloodError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = plans
            .into_iter()
            .map(|(sessions, sockets, window)| {
                scope.spawn(move || {
                    Worker::new(sessions, sockets, window, per_thread_rate, cfg)
                        .run(start, cfg.duration)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(FloodError::Panicked)))
            .collect()
    });
    let mut report = FloodReport::default();
    for r in results {
        report.merge(&r?);
    }
    report.elapsed = cfg.duration.min(start.elapsed());
    Ok(report)
}

/// Source addresses the sockets are spread over: as configured for an
/// IPv4 loopback target, else one (other hosts' addresses cannot be
/// chosen freely).
pub fn source_spread(cfg: &FloodConfig) -> usize {
    match cfg.target {
        SocketAddr::V4(a) if a.ip().is_loopback() => cfg.source_addresses,
        _ => 1,
    }
}

/// A socket connected to `target`, bound to `source` when given.
fn source_socket(
    target: SocketAddr,
    source: Option<std::net::Ipv4Addr>,
) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if let Some(a) = source {
        (a, 0).into()
    } else if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: a larger buffer only avoids drops at large windows.
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
    s.bind(&bind.into())?;
    s.connect(&target.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Pacing for `--rate`: requests are due every `interval` seconds. A
/// backlog (the thread was descheduled, the window was full, no cookie) is
/// caught up only as far as [`MAX_BACKLOG`] or one batch, whichever is more;
/// beyond that the sends are skipped, so the achieved rate can fall short
/// of the target.
struct Pace {
    interval: f64,
    next_due: f64,
}

/// Longest backlog of paced sends caught up, in seconds.
const MAX_BACKLOG: f64 = 0.005;

impl Pace {
    /// Requests due at `now` (seconds since the start).
    fn credit(&mut self, now: f64) -> usize {
        let backlog = (BATCH as f64 * self.interval).max(MAX_BACKLOG);
        if self.next_due < now - backlog {
            self.next_due = now - backlog;
        }
        if now < self.next_due {
            0
        } else {
            ((now - self.next_due) / self.interval) as usize + 1
        }
    }

    fn until_due(&self, now: f64) -> Duration {
        Duration::from_secs_f64((self.next_due - now).clamp(0.0, 1.0))
    }
}

struct Worker {
    sockets: Vec<UdpSocket>,
    fds: Vec<libc::pollfd>,
    next_socket: usize,
    recv: RecvBatch,
    send: SendBatch,
    random: RandomPool,
    pace: Option<Pace>,
    spin: bool,
    table: Table,
}

impl Worker {
    fn new(
        sessions: Vec<Session>,
        sockets: Vec<UdpSocket>,
        window: usize,
        rate: Option<f64>,
        cfg: &FloodConfig,
    ) -> Self {
        let fds = sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        Self {
            sockets,
            fds,
            next_socket: 0,
            recv: RecvBatch::new(),
            send: SendBatch::new(),
            random: RandomPool::new(),
            pace: rate.map(|r| Pace {
                interval: 1.0 / r,
                next_due: 0.0,
            }),
            spin: cfg.spin,
            table: Table::new(sessions, window, cfg.xleave),
        }
    }

    fn run(mut self, start: Instant, duration: Duration) -> Result<FloodReport, FloodError> {
        let end = start + duration;
        // Every request is answered or lost by then; the loop ends earlier
        // once nothing is in flight.
        let hard_end = end + LOSS_TIMEOUT + Duration::from_millis(200);
        let mut next_expire = start + EXPIRE_EVERY;
        loop {
            let now = Instant::now();
            if now >= hard_end {
                break;
            }
            if now >= next_expire {
                self.table.expire(now);
                next_expire = now + EXPIRE_EVERY;
            }
            let sending = now < end;
            let since = now.saturating_duration_since(start).as_secs_f64();
            if sending {
                self.table.fill(&mut self.random)?;
                self.send_ready(since);
            } else if self.table.in_flight == 0 {
                break;
            }
            let mut wait = IDLE_WAIT.min(next_expire.saturating_duration_since(now));
            if sending {
                wait = wait.min(end.saturating_duration_since(now));
                if !self.table.ready.is_empty() {
                    wait = wait.min(match &self.pace {
                        Some(p) => p.until_due(since),
                        None => SEND_RETRY,
                    });
                }
            }
            if self.spin {
                wait = Duration::ZERO;
            }
            if sys::poll(&mut self.fds, wait)? > 0 {
                for s in 0..self.fds.len() {
                    let ready = self.fds.get(s).is_some_and(|f| f.revents != 0);
                    if ready {
                        self.receive(s);
                    }
                }
            }
        }
        // Still in flight at the hard end: lost.
        self.table.expire(Instant::now() + LOSS_TIMEOUT);
        Ok(self.table.report)
    }

    /// Sends ready requests, up to a batch per call, each call on the next
    /// socket; stops when all sockets refused (full) or the pace says wait.
    fn send_ready(&mut self, since: f64) {
        let mut allowed = match &mut self.pace {
            Some(p) => p.credit(since),
            None => usize::MAX,
        };
        let mut refused = 0;
        let t = &mut self.table;
        while !t.ready.is_empty() && allowed > 0 && refused < self.sockets.len() {
            let n = t.ready.len().min(BATCH).min(allowed);
            let mut packets: [&[u8]; BATCH] = [&[]; BATCH];
            for (p, &idx) in packets.iter_mut().zip(t.ready.iter()).take(n) {
                *p = t.request(idx);
            }
            let s = self.next_socket % self.sockets.len();
            self.next_socket = s + 1;
            let Some(sock) = self.sockets.get(s) else {
                break;
            };
            let sent_at = Instant::now();
            let k = match self
                .send
                .send(sock.as_raw_fd(), packets.get(..n).unwrap_or_default())
            {
                Ok(k) => k,
                Err(e) => {
                    if e.kind() != std::io::ErrorKind::WouldBlock {
                        t.report.errors += 1;
                    }
                    0
                }
            };
            if k < n {
                refused += 1;
            }
            for _ in 0..k {
                let Some(idx) = t.ready.pop_front() else {
                    break;
                };
                if let Some(slot) = t.slots.get_mut(idx as usize) {
                    slot.state = State::InFlight;
                    slot.socket = s as u16;
                    slot.sent_at = sent_at;
                    t.in_flight += 1;
                }
            }
            t.report.sent += k as u64;
            allowed = allowed.saturating_sub(k);
            if let Some(p) = &mut self.pace {
                p.next_due += k as f64 * p.interval;
            }
        }
    }

    fn receive(&mut self, s: usize) {
        let Some(fd) = self.sockets.get(s).map(AsRawFd::as_raw_fd) else {
            return;
        };
        for _ in 0..RECV_CALLS {
            match self.recv.recv(fd, false) {
                Ok(n) => {
                    let now = Instant::now();
                    for i in 0..n {
                        self.table.on_reply(self.recv.get(i), s, now);
                    }
                    if n < BATCH {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // ECONNREFUSED and the like: reported once, then cleared.
                Err(_) => self.table.report.errors += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sockets are spread over source addresses only towards an IPv4
    /// loopback target, and are bound to the address asked for.
    #[test]
    fn source_addresses_apply_to_ipv4_loopback_targets() {
        let mut cfg = FloodConfig::new("127.0.0.1:123".parse().unwrap(), 8, Duration::from_secs(1));
        cfg.source_addresses = 8;
        assert_eq!(source_spread(&cfg), 8);
        cfg.target = "[::1]:123".parse().unwrap();
        assert_eq!(source_spread(&cfg), 1);
        cfg.target = "192.0.2.1:123".parse().unwrap();
        assert_eq!(source_spread(&cfg), 1);
        let s = source_socket(
            "127.0.0.1:9".parse().unwrap(),
            Some(std::net::Ipv4Addr::new(127, 0, 0, 3)),
        )
        .unwrap();
        assert_eq!(
            s.local_addr().unwrap().ip(),
            std::net::IpAddr::from([127, 0, 0, 3])
        );
    }

    #[test]
    fn pacing_gives_credit_as_time_passes_and_caps_the_backlog() {
        let mut p = Pace {
            interval: 0.001,
            next_due: 0.0,
        };
        assert_eq!(p.credit(0.0), 1);
        p.next_due += 0.001;
        assert_eq!(p.credit(0.0005), 0);
        assert_eq!(p.credit(0.0035), 3);
        assert_eq!(p.credit(10.0), BATCH + 1);
        let mut fast = Pace {
            interval: 1e-6,
            next_due: 0.0,
        };
        assert!((4999..=5001).contains(&fast.credit(10.0)));
        assert!(p.until_due(10.0) == Duration::ZERO);
    }

    #[test]
    fn bad_configs_are_refused() {
        let target: SocketAddr = ([127, 0, 0, 1], 9).into();
        let d = Duration::from_millis(10);
        let mut c = FloodConfig::new(target, 1, d);
        c.threads = 2;
        assert!(matches!(flood(&c, Vec::new()), Err(FloodError::Config(_))));
        let mut c = FloodConfig::new(target, 4, d);
        c.sockets = 0;
        assert!(matches!(flood(&c, Vec::new()), Err(FloodError::Config(_))));
        let mut c = FloodConfig::new(target, 4, d);
        c.rate = Some(-1.0);
        assert!(matches!(flood(&c, Vec::new()), Err(FloodError::Config(_))));
    }
}
