//! The NTP data path: one thread per worker, each with its own
//! `SO_REUSEPORT` socket per listen address, so the kernel spreads clients
//! over the workers by flow hash and the workers share nothing mutable.
//!
//! Two back ends drive the same [`Worker::process`]: `io_uring` (one ring
//! per worker) and `portable` (blocking `recvmmsg`/`sendmmsg`, for hosts where
//! io_uring is blocked, such as Docker's default seccomp profile).

pub mod access;
mod exclusive;
mod portable;
pub mod ratelimit;
mod send_wait;
mod uring;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use keyrotate::RotatingKeys;
use nts_proto::{Action, NtpTimestamp, ReplyKind, Server};

use crate::clock::now_ntp;
use crate::config::{AccessConfig, Backend, NtpConfig};
use crate::net::SharedEphemeralPort;
use crate::ops::counters::{NtpCounters, NtpEvent};
use crate::ops::health::{self, WorkerHealth, WorkerState};
use crate::rng::WorkerRng;
use crate::time_source::SharedSystem;
use access::AccessList;
use ratelimit::{RateLimiter, Verdict};

/// Largest datagram handled. NTS requests are a few hundred bytes; anything
/// longer than this arrives truncated and is dropped as malformed.
pub const MAX_PACKET: usize = 2048;
/// How often a blocked worker wakes to check for shutdown.
pub const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// State one worker thread owns.
#[derive(Debug)]
pub struct Worker {
    keys: Arc<RotatingKeys>,
    system: SharedSystem,
    counters: Arc<NtpCounters>,
    rng: WorkerRng,
    stop: Arc<AtomicBool>,
    seal_delay: SealDelay,
    /// How long replies wait in the send batch ([`send_wait`]).
    send_wait: send_wait::SendWait,
    health: Arc<WorkerHealth>,
    access: Arc<AccessList>,
    /// This worker's rate-limit table, when `[access.rate_limit]` is set.
    limiter: Option<RateLimiter>,
    /// Answer plain requests over the limit with a RATE kiss-o'-death.
    kod: bool,
}

/// How long the seal of an NTS reply takes after its transmit timestamp is
/// read, learned per worker and per request size. The authenticator covers
/// the transmit timestamp, so it must be read before the seal; adding the
/// expected seal time makes it name the moment the finished reply goes to
/// the kernel, as chrony does for its symmetric-key replies. Without it, an
/// NTS client sees the server's clock late by half the seal time.
///
/// The estimate is a running median, not a mean: each sample moves it one
/// step of 1/64 towards itself, so a seal slowed by a cold cache or an
/// interrupt shifts the next transmit timestamps by 1.6 % of the seal time,
/// not by an eighth of the outlier. Any jitter of the estimate is jitter of
/// the served time. The first sample of a size is often a cold one, so the
/// first [`SealDelay::WARM_UP`] samples move it by 1/8: from ten times too
/// high it is near the median after about 20 seals instead of 140.
#[derive(Debug, Default)]
struct SealDelay {
    /// Running medians in NTP timestamp units (2^-32 s); 0 = nothing learned.
    estimate: [u64; SealDelay::BUCKETS],
    /// Samples learned per size, counted up to `WARM_UP`.
    samples: [u8; SealDelay::BUCKETS],
}

impl SealDelay {
    const BUCKETS: usize = MAX_PACKET / 128;
    /// Longer samples are preemptions or page faults, not seal time.
    const MAX_SAMPLE: u64 = (1 << 32) / 20_000; // 50 µs
    /// Each sample moves the estimate by 1/64 of itself...
    const STEP_DIVISOR: u64 = 64;
    /// ...but by 1/8 while fewer than this many were learned for its size.
    const WARM_UP: u8 = 48;
    const WARM_UP_STEP_DIVISOR: u64 = 8;

    fn bucket(request_len: usize) -> usize {
        (request_len / 128).min(Self::BUCKETS - 1)
    }

    fn get(&self, bucket: usize) -> u64 {
        self.estimate.get(bucket).copied().unwrap_or(0)
    }

    fn learn(&mut self, bucket: usize, sample: u64) {
        if sample > Self::MAX_SAMPLE {
            return;
        }
        let (Some(e), Some(n)) = (self.estimate.get_mut(bucket), self.samples.get_mut(bucket))
        else {
            return;
        };
        if *n < Self::WARM_UP {
            *n += 1;
        }
        if *e == 0 {
            *e = sample;
            return;
        }
        let divisor = if *n < Self::WARM_UP {
            Self::WARM_UP_STEP_DIVISOR
        } else {
            Self::STEP_DIVISOR
        };
        let step = (*e / divisor).max(1);
        if sample > *e {
            *e += step;
        } else if sample < *e {
            *e -= step.min(*e - 1);
        }
    }
}

impl Worker {
    /// Answers one datagram into `reply`; returns the reply length, if any.
    /// `received` is the kernel's receive timestamp (a clock read now if the
    /// kernel gave none); the transmit timestamp is read as late as `handle`
    /// allows, and names that moment plus the expected seal time plus
    /// `wait`, the time the reply will wait in the send batch
    /// ([`send_wait::SendWait::wait`]).
    ///
    /// `peer` is checked against the access list and the rate limit first,
    /// before any cryptographic work: a refused request costs a lookup.
    #[inline]
    pub fn process(
        &mut self,
        peer: Option<std::net::IpAddr>,
        received: Option<NtpTimestamp>,
        request: &[u8],
        reply: &mut [u8],
        wait: u64,
    ) -> Option<usize> {
        self.counters.add(NtpEvent::Received);
        let received = match received {
            Some(t) => {
                self.counters.add(NtpEvent::KernelTimestamp);
                t
            }
            None => {
                self.counters.add(NtpEvent::NoKernelTimestamp);
                now_ntp()
            }
        };
        if let Some(ip) = peer {
            if !self.access.permits(ip) {
                self.counters.add(NtpEvent::DropAccessDenied);
                return None;
            }
            if let Some(limiter) = self.limiter.as_mut() {
                if limiter.check(ip, received.as_nanos()) == Verdict::OverLimit {
                    return self.over_limit(received, request, reply);
                }
            }
        }
        let ring = self.keys.load();
        let system = self.system.load();
        let server = Server {
            keys: &**ring,
            system: &system,
        };
        let bucket = SealDelay::bucket(request.len());
        let ahead = self.seal_delay.get(bucket).saturating_add(wait);
        let mut read_at = NtpTimestamp(0);
        let transmit = || {
            read_at = now_ntp();
            NtpTimestamp(read_at.0.wrapping_add(ahead))
        };
        let action = server.handle_timed(received, transmit, request, reply, &mut self.rng);
        if let Action::Reply {
            kind: ReplyKind::Nts,
            ..
        } = action
        {
            let sealed = now_ntp().0.wrapping_sub(read_at.0);
            self.seal_delay.learn(bucket, sealed);
        }
        self.counters.add(NtpEvent::of(&action));
        match action {
            Action::Reply { len, .. } => Some(len),
            Action::Ignore(reason) => {
                tracing::trace!(?reason, "request ignored");
                None
            }
        }
    }

    /// A request over the rate limit: dropped, or for a plain request (no
    /// extension fields) with `kod = true`, a RATE kiss-o'-death. NTS
    /// requests are never answered here: a NAK would make an honest client
    /// drop its cookies.
    #[cold]
    fn over_limit(
        &mut self,
        received: NtpTimestamp,
        request: &[u8],
        reply: &mut [u8],
    ) -> Option<usize> {
        if self.kod && request.len() == nts_proto::packet::HEADER_LEN {
            if let Some(len) = nts_proto::server::rate_kod(request, received, reply) {
                self.counters.add(NtpEvent::ReplyKod);
                return Some(len);
            }
        }
        self.counters.add(NtpEvent::DropRateLimited);
        None
    }

    pub fn count(&self, event: NtpEvent) {
        self.counters.add(event);
    }

    pub fn count_n(&self, event: NtpEvent, n: u64) {
        if n > 0 {
            self.counters.add_n(event, n);
        }
    }

    /// Sends a batch of replies ([`sys::send_all`]), counts the datagrams
    /// sent and refused, and learns the send time per message
    /// ([`send_wait`]) from a batch of two or more. Returns how long the
    /// call took when `timed` or when the batch was timed for learning.
    ///
    /// # Safety
    /// As for [`sys::send_all`].
    #[allow(unsafe_code)]
    pub unsafe fn send(
        &mut self,
        fd: i32,
        msgs: &mut [libc::mmsghdr],
        timed: bool,
    ) -> Option<std::time::Duration> {
        let n = msgs.len();
        let start = (n > 1 || timed).then(std::time::Instant::now);
        // SAFETY: the caller's guarantee, passed on.
        let refused = unsafe { sys::send_all(fd, msgs) };
        let took = start.map(|t| t.elapsed());
        if let (Some(t), true) = (took, n > 1) {
            self.send_wait.learn_send(n, t);
        }
        self.count_n(NtpEvent::SendError, refused as u64);
        self.count_n(NtpEvent::Sent, n.saturating_sub(refused) as u64);
        took
    }

    /// The back end is set up and receiving (for `/healthz`).
    pub fn serving(&self) {
        self.health.set(WorkerState::Serving);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
impl Worker {
    /// A worker with in-memory keys, for the back ends' unit tests; and its
    /// counters.
    pub(crate) fn for_tests() -> (Worker, Arc<NtpCounters>) {
        let sched = keyrotate::Schedule {
            interval: 3600,
            keep: 1,
        };
        let keys = RotatingKeys::new(
            sched,
            Box::<keyrotate::RandomKeys>::default(),
            None,
            None,
            crate::clock::unix_secs(),
        )
        .expect("in-memory keys");
        let counters = Arc::new(NtpCounters::default());
        let worker = Worker {
            keys: Arc::new(keys),
            system: Arc::new(arc_swap::ArcSwap::from_pointee(
                nts_proto::SystemInfo::unsynchronized(),
            )),
            counters: counters.clone(),
            rng: WorkerRng::new().expect("random"),
            stop: Arc::new(AtomicBool::new(false)),
            seal_delay: SealDelay::default(),
            send_wait: send_wait::SendWait::default(),
            health: Arc::new(WorkerHealth::new("test".into())),
            access: Arc::new(AccessList::new(&[], &[])),
            limiter: None,
            kod: false,
        };
        (worker, counters)
    }
}

/// A UDP socket on which every receive fails (ENOTSOCK): its descriptor
/// replaced by a file's, kept open beside it. For the back ends' tests of
/// persistent receive errors.
#[cfg(test)]
#[allow(unsafe_code)]
pub(crate) fn failing_socket() -> (UdpSocket, std::fs::File) {
    use std::os::fd::AsRawFd;
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let file = std::fs::File::open("/dev/null").expect("/dev/null");
    // SAFETY: dup2 onto a descriptor this function owns; both stay open
    // for as long as the caller keeps them.
    let r = unsafe { libc::dup2(file.as_raw_fd(), socket.as_raw_fd()) };
    assert_eq!(r, socket.as_raw_fd());
    (socket, file)
}

/// The running workers.
#[derive(Debug)]
pub struct Workers {
    pub counters: Vec<Arc<NtpCounters>>,
    /// One per thread (portable runs a thread per socket).
    pub health: Vec<Arc<WorkerHealth>>,
    pub backend: Backend,
    /// Addresses actually bound (ephemeral ports resolved).
    pub local_addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Workers {
    /// Signals every worker to stop and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Whether this kernel, and the seccomp profile around ntsd, run the
/// io_uring back end (Linux 6.0 or later, io_uring not blocked).
pub fn io_uring_probe() -> std::io::Result<()> {
    uring::probe()
}

/// Number of workers for `configured` (0 = one per available core).
pub fn worker_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Opens one `SO_REUSEPORT` socket per worker and listen address. A listen
/// port of 0 is resolved by the first socket and reused by the rest, so all
/// workers (and all addresses with port 0) share one ephemeral port.
fn open_sockets(listen: &[SocketAddr], workers: usize) -> std::io::Result<Vec<Vec<UdpSocket>>> {
    let mut port = SharedEphemeralPort::default();
    let mut per_worker: Vec<Vec<UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    for &configured in listen {
        for (i, sockets) in per_worker.iter_mut().enumerate() {
            let mut addr = port.resolve(configured);
            if i == 0 && addr.port() == 0 {
                // A port no socket holds, not one the kernel would let the
                // workers share with another SO_REUSEPORT group.
                if let Some(free) = exclusive::free_port(addr) {
                    addr.set_port(free);
                }
            }
            if i == 0 && addr.port() != 0 {
                exclusive::ensure_not_held(addr)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::AddrInUse, e))?;
            }
            let udp = match open_socket(addr) {
                Ok(s) => s,
                Err(e) if i == 0 && listen.len() > 1 && crate::net::ipv6_missing(addr, &e) => {
                    crate::net::warn_ipv6_missing("[ntp] listen", addr, &e);
                    break;
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot bind NTP to {addr}: {e}"),
                    ))
                }
            };
            port.learn(configured, udp.local_addr()?);
            sockets.push(udp);
        }
    }
    if per_worker.first().is_some_and(Vec::is_empty) {
        return Err(std::io::Error::other(
            "[ntp] listen: no address could be bound",
        ));
    }
    Ok(per_worker)
}

fn open_socket(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        None,
    )?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_read_timeout(Some(STOP_POLL))?;
    sys::enable_rx_timestamps(&s)?;
    if addr.is_ipv4() {
        sys::set_dont_fragment(&s)?;
    }
    if addr.ip().is_unspecified() {
        sys::enable_pktinfo(&s, addr.is_ipv6())?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Binds the sockets and starts the workers. A worker whose back end fails
/// is restarted with backoff ([`health::supervise`]); one that keeps
/// failing sends its error to `fatal`, and ntsd exits non-zero.
pub fn start(
    cfg: &NtpConfig,
    access: &AccessConfig,
    keys: Arc<RotatingKeys>,
    system: SharedSystem,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
) -> Result<Workers, String> {
    let acl = Arc::new(AccessList::new(&access.allow, &access.deny));
    let limits = access.rate_limit.as_ref().map(|r| (r.limits(), r.kod));
    let n = worker_count(cfg.workers);
    let sockets = open_sockets(&cfg.listen, n).map_err(|e| e.to_string())?;
    let local_addrs = sockets
        .first()
        .map(|s| s.iter().filter_map(|u| u.local_addr().ok()).collect())
        .unwrap_or_default();
    let backend = match cfg.backend {
        // The portable back end: in every paired run of bench/compare.sh
        // it spent less CPU per reply than io_uring (README, Performance),
        // and it runs everywhere, Docker's default seccomp profile included.
        Backend::Auto => Backend::Portable,
        Backend::IoUring => {
            uring::probe()
                .map_err(|e| format!("[ntp] backend = \"io-uring\": io_uring unavailable: {e}"))?;
            Backend::IoUring
        }
        Backend::Portable => Backend::Portable,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters = Vec::new();
    let mut healths = Vec::new();
    let mut threads = Vec::new();
    for (i, worker_sockets) in sockets.into_iter().enumerate() {
        let c = Arc::new(NtpCounters::default());
        counters.push(c.clone());
        let mut make_worker = |name: String| -> Result<Worker, String> {
            let health = Arc::new(WorkerHealth::new(name));
            healths.push(health.clone());
            let mut rng = WorkerRng::new().map_err(|_| "system random number generator failed")?;
            let limiter = limits.map(|(l, _)| {
                let mut seed = [0u8; 8];
                nts_proto::Random::fill(&mut rng, &mut seed);
                RateLimiter::new(l, u64::from_le_bytes(seed))
            });
            Ok(Worker {
                keys: keys.clone(),
                system: system.clone(),
                counters: c.clone(),
                rng,
                stop: stop.clone(),
                seal_delay: SealDelay::default(),
                send_wait: send_wait::SendWait::default(),
                health,
                access: acl.clone(),
                limiter,
                kod: limits.is_some_and(|(_, kod)| kod),
            })
        };
        match backend {
            Backend::IoUring => {
                let w = make_worker(format!("{i}"))?;
                let fatal = fatal.clone();
                threads.push(spawn(format!("ntp-uring-{i}"), move || {
                    supervised(w, fatal, |w| uring::run(w, &worker_sockets))
                })?);
            }
            _ => {
                // recvmmsg blocks on one socket, so each socket gets a thread.
                for (j, sock) in worker_sockets.into_iter().enumerate() {
                    let w = make_worker(format!("{i}.{j}"))?;
                    let fatal = fatal.clone();
                    threads.push(spawn(format!("ntp-mmsg-{i}.{j}"), move || {
                        supervised(w, fatal, |w| portable::run(w, &sock))
                    })?);
                }
            }
        }
    }
    // Ready (and READY=1 to systemd) means serving: wait, bounded, until
    // every worker has set its back end up (or failed and is restarting).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while healths.iter().any(|h| h.state() == WorkerState::Starting)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    tracing::info!(workers = n, ?backend, addrs = ?local_addrs, "NTP workers started");
    Ok(Workers {
        counters,
        health: healths,
        backend,
        local_addrs,
        threads,
        stop,
    })
}

/// A worker thread's body: its serve loop under [`health::supervise`].
fn supervised(
    mut worker: Worker,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
    mut run: impl FnMut(&mut Worker) -> Result<(), String>,
) {
    let health = worker.health.clone();
    let stop = worker.stop.clone();
    let stopping = || stop.load(Ordering::Relaxed);
    let sleep = |d: std::time::Duration| {
        // In steps, so a shutdown during the backoff is not held up.
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until && !stopping() {
            std::thread::sleep(STOP_POLL);
        }
    };
    if let Err(e) = health::supervise(&health, stopping, sleep, || run(&mut worker)) {
        let _ = fatal.send(format!("NTP worker {}: {e}", health.name));
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| format!("cannot start NTP worker thread: {e}"))
}

/// Socket options, control messages and other helpers shared by both back
/// ends (and by `ntsd-bench path`, which reads kernel timestamps the same
/// way).
#[allow(unsafe_code)]
pub mod sys {
    use std::os::fd::AsRawFd;

    use nts_proto::NtpTimestamp;

    /// Room for the control messages of a received datagram, as u64s for
    /// alignment: SCM_TIMESTAMPNS (CMSG_SPACE of a timespec, 32 bytes on
    /// 64-bit Linux) and, on wildcard sockets, IP_PKTINFO (32) or
    /// IPV6_PKTINFO (40).
    pub const CONTROL_WORDS: usize = 12;
    pub type ControlBuf = [u64; CONTROL_WORDS];

    /// Room for the one control message of a reply: the source address
    /// (IP_PKTINFO or IPV6_PKTINFO, at most 40 bytes).
    pub type SourceBuf = [u64; 6];

    /// What the control messages of a received datagram say.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct Received {
        /// The kernel's receive timestamp.
        pub at: Option<NtpTimestamp>,
        /// The address the datagram was sent to, on a socket bound to a
        /// wildcard address (IP_PKTINFO / IPV6_RECVPKTINFO); a unicast
        /// address only.
        pub local: Option<std::net::IpAddr>,
    }

    /// Asks the kernel for the destination address of every datagram, so
    /// that a socket bound to `0.0.0.0` or `[::]` answers from the address
    /// the client sent to (an anycast address, or one of several): a
    /// reply from another address is dropped by the client.
    pub fn enable_pktinfo(socket: &impl AsRawFd, ipv6: bool) -> std::io::Result<()> {
        let (level, name) = match ipv6 {
            true => (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
            false => (libc::IPPROTO_IP, libc::IP_PKTINFO),
        };
        set_flag(socket, level, name)
    }

    /// Turns on an integer socket option.
    fn set_flag(
        socket: &impl AsRawFd,
        level: libc::c_int,
        name: libc::c_int,
    ) -> std::io::Result<()> {
        set_int(socket, level, name, 1)
    }

    /// Sets an integer socket option.
    fn set_int(
        socket: &impl AsRawFd,
        level: libc::c_int,
        name: libc::c_int,
        on: libc::c_int,
    ) -> std::io::Result<()> {
        // SAFETY: the option value is a c_int that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Writes the control message that sends a reply from `local` into
    /// `buf` and points `msg` at it.
    pub fn attach_source(msg: &mut libc::mmsghdr, buf: &mut SourceBuf, local: std::net::IpAddr) {
        *buf = [0; 6];
        let h = &mut msg.msg_hdr;
        h.msg_control = buf.as_mut_ptr().cast();
        h.msg_controllen = std::mem::size_of::<SourceBuf>();
        match local {
            std::net::IpAddr::V4(a) => put_cmsg(
                h,
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            std::net::IpAddr::V6(a) => put_cmsg(
                h,
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: 0,
                },
            ),
        }
    }

    /// Writes one control message carrying `value` at the start of
    /// `h.msg_control` (which must hold CMSG_SPACE of it) and sets
    /// `msg_controllen` to exactly that message; clears the control
    /// pointer if it does not fit.
    fn put_cmsg<T>(h: &mut libc::msghdr, level: libc::c_int, ty: libc::c_int, value: T) {
        let size = std::mem::size_of::<T>() as u32;
        // SAFETY: CMSG_FIRSTHDR is null unless msg_controllen holds a
        // header; the space check keeps the header and `value` within the
        // buffer the caller pointed at, and the value is written unaligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(h);
            let space = libc::CMSG_SPACE(size) as usize;
            if cmsg.is_null() || h.msg_controllen < space {
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                return;
            }
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = ty;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast(), value);
            h.msg_controllen = space;
        }
    }

    /// The peer's address from the sockaddr bytes the kernel wrote
    /// (`sockaddr_in` or `sockaddr_in6`, read field by field).
    #[inline]
    pub fn peer_ip(name: &[u8]) -> Option<std::net::IpAddr> {
        let family = u16::from_ne_bytes([*name.first()?, *name.get(1)?]);
        match i32::from(family) {
            libc::AF_INET => {
                let a: [u8; 4] = name.get(4..8)?.try_into().ok()?;
                Some(std::net::IpAddr::from(a))
            }
            libc::AF_INET6 => {
                let a: [u8; 16] = name.get(8..24)?.try_into().ok()?;
                Some(std::net::IpAddr::from(a))
            }
            _ => None,
        }
    }

    /// The first `len` bytes of `storage`, as the kernel filled them.
    #[inline]
    pub fn storage_bytes(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> &[u8] {
        let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: sockaddr_storage is plain old data of at least `len`
        // bytes, borrowed for the lifetime of the slice.
        unsafe {
            std::slice::from_raw_parts((storage as *const libc::sockaddr_storage).cast::<u8>(), len)
        }
    }

    pub fn empty_storage() -> libc::sockaddr_storage {
        // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }

    pub fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// Points `msg` (through `iov`) at `reply`, addressed to the first
    /// `namelen` bytes of `addr`, for [`send_all`].
    pub fn point_reply(
        msg: &mut libc::mmsghdr,
        iov: &mut libc::iovec,
        reply: &mut [u8],
        addr: &mut libc::sockaddr_storage,
        namelen: libc::socklen_t,
    ) {
        *iov = libc::iovec {
            iov_base: reply.as_mut_ptr().cast(),
            iov_len: reply.len(),
        };
        let h = &mut msg.msg_hdr;
        h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = namelen;
        h.msg_iov = iov;
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }

    /// Sends every message in `msgs` with `sendmmsg(2)`, retrying on EINTR;
    /// a datagram the kernel refuses (e.g. an unreachable peer) is skipped.
    /// Returns how many were refused.
    ///
    /// # Safety
    /// Every header must point (as [`point_reply`] sets it) at a buffer and
    /// an address that are valid for the duration of the call.
    pub unsafe fn send_all(fd: i32, msgs: &mut [libc::mmsghdr]) -> usize {
        let (mut sent, mut refused) = (0, 0);
        while sent < msgs.len() {
            let rest = &mut msgs[sent..];
            // SAFETY: the caller guarantees the headers; `rest` holds
            // `rest.len()` of them.
            let r = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as u32, 0) };
            if r < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                refused += 1;
                sent += 1;
            } else {
                sent += r as usize;
            }
        }
        refused
    }

    /// Asks the kernel for a software receive timestamp on every datagram
    /// (SO_TIMESTAMPNS, CLOCK_REALTIME, taken when the packet arrives).
    pub fn enable_rx_timestamps(socket: &impl AsRawFd) -> std::io::Result<()> {
        set_flag(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)
    }

    /// Sends every IPv4 reply with Don't Fragment set and IP ID 0
    /// (IP_PMTUDISC_PROBE), never fragmented by the kernel. A reply is
    /// never larger than its request, so it fits the path the request came
    /// by. Path-MTU updates are ignored: a spoofed ICMP "fragmentation
    /// needed" cannot make the server fragment its replies, which is how
    /// off-path attackers inject forged fragments into NTP replies. And with
    /// DF the kernel leaves out its shared, hashed IP-ID generator
    /// (`__ip_select_ident`, under the default IP_PMTUDISC_WANT): about
    /// 2.5 % of the CPU per plain reply in paired runs (median).
    pub fn set_dont_fragment(socket: &impl AsRawFd) -> std::io::Result<()> {
        set_int(
            socket,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_PROBE,
        )
    }

    /// The kernel receive timestamp in the control messages of `msg`, if any.
    pub fn rx_timestamp(msg: &libc::msghdr) -> Option<NtpTimestamp> {
        received(msg).at
    }

    /// The receive timestamp and destination address in `msg`'s control
    /// messages.
    pub fn received(msg: &libc::msghdr) -> Received {
        let mut out = Received::default();
        if msg.msg_control.is_null() || msg.msg_controllen < std::mem::size_of::<libc::cmsghdr>() {
            return out;
        }
        // SAFETY: msg_control/msg_controllen describe a buffer we own and the
        // kernel filled; the CMSG macros stay within msg_controllen, and each
        // payload is read unaligned from the data of a header whose length
        // was checked to hold it.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(msg);
            while !cmsg.is_null() {
                let c = &*cmsg;
                let holds = |n: usize| c.cmsg_len as usize >= libc::CMSG_LEN(n as u32) as usize;
                match (c.cmsg_level, c.cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS)
                        if holds(std::mem::size_of::<libc::timespec>()) =>
                    {
                        let ts: libc::timespec =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        if let (Ok(secs), Ok(nanos)) =
                            (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec))
                        {
                            out.at = Some(NtpTimestamp::from_unix(secs, nanos));
                        }
                    }
                    (libc::IPPROTO_IP, libc::IP_PKTINFO)
                        if holds(std::mem::size_of::<libc::in_pktinfo>()) =>
                    {
                        let info: libc::in_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        let a = std::net::Ipv4Addr::from(info.ipi_addr.s_addr.to_ne_bytes());
                        if !a.is_broadcast() && !a.is_multicast() && !a.is_unspecified() {
                            out.local = Some(a.into());
                        }
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                        if holds(std::mem::size_of::<libc::in6_pktinfo>()) =>
                    {
                        let info: libc::in6_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        let a = std::net::Ipv6Addr::from(info.ipi6_addr.s6_addr);
                        if !a.is_multicast() && !a.is_unspecified() {
                            out.local = Some(a.into());
                        }
                    }
                    _ => {}
                }
                cmsg = libc::CMSG_NXTHDR(msg, cmsg);
            }
        }
        out
    }

    /// The kernel receive timestamp in `control`, control messages as the
    /// kernel laid them out (a multishot receive's buffer).
    pub fn rx_timestamp_in(control: &[u8]) -> Option<NtpTimestamp> {
        received_in(control).at
    }

    /// [`received`] for control messages as bytes (io_uring's layout).
    pub fn received_in(control: &[u8]) -> Received {
        let mut aligned: ControlBuf = [0; CONTROL_WORDS];
        let len = control.len().min(std::mem::size_of::<ControlBuf>());
        // SAFETY: copies `len` bytes, within both buffers, into an aligned
        // buffer, so the cmsg headers are read at their natural alignment.
        unsafe {
            std::ptr::copy_nonoverlapping(control.as_ptr(), aligned.as_mut_ptr().cast::<u8>(), len);
        }
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = aligned.as_mut_ptr().cast();
        msg.msg_controllen = len;
        received(&msg)
    }
}

#[cfg(test)]
mod tests {
    use super::SealDelay;

    /// IPv4 sockets send with Don't Fragment and IP ID 0: the kernel skips
    /// its shared IP-ID generator for every reply (IPv6 has no such field).
    #[test]
    #[allow(unsafe_code)]
    fn ipv4_sockets_set_dont_fragment() {
        use std::os::fd::AsRawFd;
        let mode = |s: &std::net::UdpSocket, level, name| {
            let mut v: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `v` and `len` outlive the call; the kernel writes at
            // most `len` bytes.
            let r = unsafe {
                libc::getsockopt(
                    s.as_raw_fd(),
                    level,
                    name,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(r, 0);
            v
        };
        let v4 = super::open_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(
            mode(&v4, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
            libc::IP_PMTUDISC_PROBE
        );
    }

    const US: u64 = (1 << 32) / 1_000_000;

    #[test]
    fn seal_delay_learns_the_median_per_size_and_ignores_preemption() {
        let mut d = SealDelay::default();
        let small = SealDelay::bucket(228);
        let large = SealDelay::bucket(1100);
        assert_ne!(small, large);
        assert_eq!(SealDelay::bucket(100_000), SealDelay::BUCKETS - 1);
        assert_eq!(d.get(small), 0, "nothing is added before a seal was timed");
        d.learn(small, US);
        assert_eq!(d.get(small), US, "the first sample is taken as it is");
        for _ in 0..100 {
            d.learn(small, 2 * US);
        }
        let near = |d: &SealDelay, v: u64| d.get(small).abs_diff(v) <= v / 32;
        assert!(
            near(&d, 2 * US),
            "converges: {} vs {}",
            d.get(small),
            2 * US
        );
        d.learn(small, 1000 * US);
        assert!(near(&d, 2 * US), "a preempted seal is ignored");
        // Noisy samples with slow outliers: the estimate follows their median
        // (2 µs), not their mean (4.6 µs), and one outlier moves it by one step.
        for _ in 0..200 {
            for v in [2, 2, 3, 1, 15] {
                d.learn(small, v * US);
            }
        }
        assert!(near(&d, 2 * US), "median: {} vs {}", d.get(small), 2 * US);
        let before = d.get(small);
        d.learn(small, 40 * US);
        assert_eq!(d.get(small), before + before / 64);

        // A cold first seal, ten times the usual: warm-up steps of 1/8 bring
        // the estimate near the usual seal time within 20 samples.
        let mut d = SealDelay::default();
        d.learn(small, 20 * US);
        for _ in 0..20 {
            d.learn(small, 2 * US);
        }
        assert!(
            d.get(small).abs_diff(2 * US) <= 2 * US / 7,
            "warm-up: {} vs {}",
            d.get(small),
            2 * US
        );
        assert_eq!(d.get(large), 0, "other sizes are learned on their own");
    }
}
