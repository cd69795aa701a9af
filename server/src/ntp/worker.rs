//! One worker's state and its answer to one datagram, shared by both
//! back ends: access list and rate limit first, then
//! `nts_proto::Server::handle` with the learned transmit delays
//! ([`super::transmit`]), then the counters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keyrotate::RotatingKeys;
use nts_proto::{Action, NtpTimestamp, ReplyKind, Server};

use super::interleave::{SavedTimestamps, Update};
use super::rng::WorkerRng;
use super::transmit::{SealDelay, SendWait};
use crate::ops::clients::ClientLog;
use crate::ops::counters::{NtpCounters, NtpEvent};
use crate::ops::health::{WorkerHealth, WorkerState};
use crate::policy::access::AccessList;
use crate::policy::ratelimit::{RateLimiter, Verdict};
use crate::time::clock::now_ntp;
use crate::time::source::SharedSystem;

/// Largest datagram handled. NTS requests are a few hundred bytes; anything
/// longer than this arrives truncated and is dropped as malformed.
pub(super) const MAX_PACKET: usize = 2048;
/// Replies a worker sends with one `sendmmsg`, at most: this bounds how long
/// a built reply waits for its batch.
pub(super) const SEND_BATCH: usize = 32;
/// A worker's batch of replies.
pub(super) type Replies = ntsd_udp::SendBatch<SEND_BATCH, MAX_PACKET>;
/// Transmit timestamps left in a socket's error queue before it is read
/// after a send: reads are batched, and made at once only for a request
/// whose pair is still waiting (see [`Worker::process`]). The queue shares
/// `SO_RCVBUF` with the requests, so this stays small.
const READ_STAMPS_AT: usize = 64;
/// How often a blocked worker wakes to check for shutdown.
pub(super) const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// State one worker thread owns.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) keys: Arc<RotatingKeys>,
    pub(super) system: SharedSystem,
    pub(super) counters: Arc<NtpCounters>,
    pub(super) rng: WorkerRng,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) seal_delay: SealDelay,
    /// How long replies wait in the send batch ([`SendWait`]).
    pub(super) send_wait: SendWait,
    pub(super) health: Arc<WorkerHealth>,
    pub(super) access: Arc<AccessList>,
    /// This worker's rate-limit table, when `[access.rate_limit]` is set.
    pub(super) limiter: Option<RateLimiter>,
    /// Answer plain requests over the limit with a RATE kiss-o'-death.
    pub(super) kod: bool,
    /// Interleaved mode's saved timestamps, when `[ntp] interleaved` is on.
    pub(super) saved: Option<SavedTimestamps>,
    /// This thread's client log (its only writer).
    pub(super) clients: Arc<ClientLog>,
}

/// A reply built into the send batch's buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Built {
    pub(super) len: usize,
    /// Ask the kernel for this reply's transmit timestamp, and report it
    /// under this tag (the reply's receive timestamp) to
    /// [`Worker::transmitted`].
    pub(super) stamp: Option<u64>,
}

/// Whether `request` may name a saved pair still waiting for the kernel's
/// transmit timestamp: an NTPv4 request whose origin is a (marked) receive
/// timestamp no older than the oldest reply whose timestamp is awaited.
/// The look is cheap; the protocol core decides whether the request is in
/// interleaved form, and the table whether the pair exists.
#[inline]
fn awaits_stamp(request: &[u8], stamps: &ntsd_udp::TxTimestamps) -> bool {
    let (Some(oldest), Some(first), Some(origin)) = (
        stamps.oldest_pending(),
        request.first(),
        request
            .get(24..32)
            .and_then(|b| <[u8; 8]>::try_from(b).ok()),
    ) else {
        return false;
    };
    let origin = u64::from_be_bytes(origin);
    (first >> 3) & 7 == 4 && origin & 1 == 1 && (origin.wrapping_sub(oldest) as i64) >= 0
}

impl Built {
    /// Queues the reply to `name`, from `local`, asking the kernel for its
    /// transmit timestamp when it is to be saved.
    #[inline]
    pub(super) fn queue(self, replies: &mut Replies, name: &[u8], local: Option<std::net::IpAddr>) {
        match self.stamp {
            Some(tag) => replies.commit_stamped(self.len, name, local, tag),
            None => replies.commit(self.len, name, local),
        }
    }
}

impl Worker {
    /// Answers one datagram into `reply`; returns the reply length, if any.
    /// `received` is the kernel's receive timestamp (a clock read now if the
    /// kernel gave none); the transmit timestamp is read as late as `handle`
    /// allows, and names that moment plus the expected seal time plus
    /// `wait`, the time the reply will wait in the send batch
    /// ([`SendWait::wait`]).
    ///
    /// `peer` is checked against the access list and the rate limit first,
    /// before any cryptographic work: a refused request costs a lookup.
    ///
    /// With interleaved mode on, a reply to a request in interleaved form
    /// has its transmit timestamp saved: the daemon's, replaced by the
    /// kernel's when the socket reports transmit timestamps (`stamps`) and
    /// the kernel's comes back. A request whose pair is still waiting for
    /// the kernel's timestamp has the socket's error queue read first.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn process(
        &mut self,
        peer: Option<std::net::IpAddr>,
        received: Option<NtpTimestamp>,
        request: &[u8],
        reply: &mut [u8],
        wait: u64,
        stamps: Option<(std::os::fd::RawFd, &mut ntsd_udp::TxTimestamps)>,
    ) -> Option<Built> {
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
        let mut logged = None;
        if let Some(ip) = peer {
            if !self.access.permits(ip) {
                self.counters.add(NtpEvent::DropAccessDenied);
                return None;
            }
            logged = self.clients.hit(ip, received.0);
            if let Some(limiter) = self.limiter.as_mut() {
                if limiter.check(ip, received.as_nanos()) == Verdict::OverLimit {
                    let len = self.over_limit(received, request, reply);
                    if let (None, Some(i)) = (len, logged) {
                        self.clients.dropped_one(i);
                    }
                    return Some(Built {
                        len: len?,
                        stamp: None,
                    });
                }
            }
        }
        let stamped = stamps.is_some();
        if let Some((fd, stamps)) = stamps {
            if awaits_stamp(request, stamps) {
                self.read_stamps(fd, stamps);
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
        let action = match self.saved.as_mut() {
            Some(saved) => {
                saved.begin();
                server.handle_interleaved(received, transmit, saved, request, reply, &mut self.rng)
            }
            None => server.handle_timed(received, transmit, request, reply, &mut self.rng),
        };
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
            Action::Reply {
                len,
                kind: kind @ (ReplyKind::Plain | ReplyKind::Nts),
            } => {
                let (stamp, interleaved) =
                    self.save(NtpTimestamp(read_at.0.wrapping_add(ahead)), stamped);
                if let Some(i) = logged {
                    self.clients.note(i, kind == ReplyKind::Nts, interleaved);
                }
                Some(Built { len, stamp })
            }
            Action::Reply { len, .. } => Some(Built { len, stamp: None }),
            Action::Ignore(reason) => {
                tracing::trace!(?reason, "request ignored");
                None
            }
        }
    }

    /// After a reply to a request in interleaved form: counts an
    /// interleaved reply and saves this reply's transmit timestamp
    /// (`transmit`, the daemon's) under its receive timestamp. Returns the
    /// tag to ask the kernel's timestamp under, when `stamped`, and whether
    /// the reply was interleaved.
    #[inline]
    fn save(&mut self, transmit: NtpTimestamp, stamped: bool) -> (Option<u64>, bool) {
        let Some(saved) = self.saved.as_mut() else {
            return (None, false);
        };
        let last = saved.last;
        let Some(receive) = last.save else {
            return (None, false);
        };
        if last.interleaved {
            self.counters.add(NtpEvent::ReplyInterleaved);
            if last.kernel {
                self.counters.add(NtpEvent::KernelTxTimestamp);
            }
        }
        let kept = saved.save(receive, transmit, stamped);
        self.counters.set_saved(saved.held(), saved.span_seconds());
        ((kept && stamped).then_some(receive.0), last.interleaved)
    }

    /// The kernel's transmit timestamp of the reply tagged `tag` (`None`:
    /// it will not come back).
    pub(super) fn transmitted(&mut self, tag: u64, at: Option<NtpTimestamp>) {
        if let Some(saved) = self.saved.as_mut() {
            if saved.update(tag, at) == Update::Lost {
                self.counters.add(NtpEvent::TxTimestampLost);
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

    pub(super) fn count(&self, event: NtpEvent) {
        self.counters.add(event);
    }

    pub(super) fn count_n(&self, event: NtpEvent, n: u64) {
        if n > 0 {
            self.counters.add_n(event, n);
        }
    }

    /// Sends the queued replies on `fd`, counts the datagrams sent and
    /// refused, and learns the send time per message ([`SendWait`]) from a
    /// batch of two or more. Returns how long the call took when `timed` or
    /// when the batch was timed for learning. With `stamps` (the socket's
    /// transmit timestamps), the stamped replies are noted, and the error
    /// queue is read once [`READ_STAMPS_AT`] timestamps wait in it.
    pub(super) fn send(
        &mut self,
        fd: std::os::fd::RawFd,
        batch: &mut Replies,
        timed: bool,
        stamps: Option<&mut ntsd_udp::TxTimestamps>,
    ) -> Option<std::time::Duration> {
        let n = batch.len();
        if n == 0 {
            return None;
        }
        let start = (n > 1 || timed).then(std::time::Instant::now);
        let refused = match stamps {
            Some(stamps) => {
                let refused = batch.send_stamped(fd, stamps, |tag| self.transmitted(tag, None));
                if stamps.pending() >= READ_STAMPS_AT {
                    self.read_stamps(fd, stamps);
                }
                refused
            }
            None => batch.send(fd),
        };
        let took = start.map(|t| t.elapsed());
        if let (Some(t), true) = (took, n > 1) {
            self.send_wait.learn_send(n, t);
        }
        self.count_n(NtpEvent::SendError, refused as u64);
        self.count_n(NtpEvent::Sent, n.saturating_sub(refused) as u64);
        took
    }

    /// Reads the transmit timestamps the kernel has taken on `fd`, if any
    /// are awaited.
    #[inline]
    fn read_stamps(&mut self, fd: std::os::fd::RawFd, stamps: &mut ntsd_udp::TxTimestamps) {
        if stamps.pending() > 0 {
            stamps.read(fd, |tag, at| self.transmitted(tag, at));
        }
    }

    /// The socket's transmit timestamps, when interleaved mode is on and
    /// the kernel reports them; `None` (and a warning, once) where it does
    /// not: saved pairs then carry the daemon's transmit timestamp.
    pub(super) fn tx_timestamps(
        &self,
        socket: &std::net::UdpSocket,
    ) -> Option<ntsd_udp::TxTimestamps> {
        self.saved.as_ref()?;
        match ntsd_udp::TxTimestamps::enable(socket) {
            Ok(t) => Some(t),
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(error = %e, "no kernel transmit timestamps: interleaved replies carry the daemon's transmit timestamp");
                });
                None
            }
        }
    }

    /// The back end is set up and receiving (for `/healthz`).
    pub(super) fn serving(&self) {
        self.health.set(WorkerState::Serving);
    }

    pub(super) fn stopping(&self) -> bool {
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
            crate::time::clock::unix_secs(),
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
            send_wait: SendWait::default(),
            health: Arc::new(WorkerHealth::new("test".into())),
            access: Arc::new(AccessList::new(&[], &[])),
            limiter: None,
            kod: false,
            saved: Some(SavedTimestamps::new(64)),
            clients: Arc::new(ClientLog::new(64, [1, 2])),
        };
        (worker, counters)
    }
}

/// A UDP socket on which every receive fails (ENOTSOCK): its descriptor
/// replaced by a file's, kept open beside it. For the back ends' tests of
/// persistent receive errors.
#[cfg(test)]
#[allow(unsafe_code)]
pub(crate) fn failing_socket() -> (std::net::UdpSocket, std::fs::File) {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let file = std::fs::File::open("/dev/null").expect("/dev/null");
    // SAFETY: dup2 onto a descriptor this function owns; both stay open
    // for as long as the caller keeps them.
    let r = unsafe { libc::dup2(file.as_raw_fd(), socket.as_raw_fd()) };
    assert_eq!(r, socket.as_raw_fd());
    (socket, file)
}
