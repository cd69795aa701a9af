//! Kernel timestamps through `SO_TIMESTAMPING`: a software receive
//! timestamp on every datagram, and a software transmit timestamp for each
//! reply that asks for one, read back from the socket's error queue.
//!
//! ```text
//! TxTimestamps::enable(socket)       SO_TIMESTAMPING: RX_SOFTWARE | SOFTWARE | OPT_ID | OPT_TSONLY
//! SendBatch::commit_stamped(.., tag)  per message: SO_TIMESTAMPING = TX_SOFTWARE
//! SendBatch::send_stamped(fd, tx)     each stamped datagram gets the next id (OPT_ID)
//! TxTimestamps::read(fd, f)           recvmmsg(MSG_ERRQUEUE): id ─► tag, f(tag, Some(time))
//!                                     an id that never comes back ─► f(tag, None)
//! ```
//!
//! `SO_TIMESTAMPNS` is not used: with both options set the kernel reports
//! the one or the other depending on the path, which gives false
//! timestamps.
//!
//! Hardware timestamps would be added here: the `RAW_HARDWARE` flags in
//! [`RX_FLAGS`] and [`TX_REQUEST`], and the third timespec in
//! [`chosen`]. Nothing ntsd runs on has a NIC that takes them yet.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::OnceLock;

use nts_proto::NtpTimestamp;

use crate::mmsg::errno;
use crate::sockopt::set_opt;

/// Receive timestamps in software, reported as SCM_TIMESTAMPING.
const RX_FLAGS: u32 = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
/// Transmit timestamps carry a counter (OPT_ID) in place of the looped
/// back payload (OPT_TSONLY); which datagrams get one is asked per message.
const TX_FLAGS: u32 = libc::SOF_TIMESTAMPING_OPT_ID | libc::SOF_TIMESTAMPING_OPT_TSONLY;
/// The per-message request for a software transmit timestamp.
pub(crate) const TX_REQUEST: u32 = libc::SOF_TIMESTAMPING_TX_SOFTWARE;

/// The timestamp a SCM_TIMESTAMPING message carries: the software one
/// (the first of the three; the third is the raw hardware one).
pub(crate) fn chosen(ts: &[libc::timespec; 3]) -> Option<NtpTimestamp> {
    let [software, _, _] = ts;
    timespec(software)
}

/// A CLOCK_REALTIME timespec as an NTP timestamp; none for zero (the
/// kernel's "not taken") or a negative time.
pub(crate) fn timespec(ts: &libc::timespec) -> Option<NtpTimestamp> {
    match (u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (Ok(0), Ok(0)) => None,
        (Ok(secs), Ok(nanos)) if nanos < 1_000_000_000 => {
            Some(NtpTimestamp::from_unix(secs, nanos))
        }
        _ => None,
    }
}

/// Asks the kernel for a software receive timestamp on every datagram
/// (SO_TIMESTAMPING, CLOCK_REALTIME, taken when the packet arrives).
pub fn enable_rx_timestamps(socket: &impl AsRawFd) -> std::io::Result<()> {
    set_opt(socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPING, &RX_FLAGS)
}

/// Test sockets: waits (up to a second) until `socket`, whose receive
/// timestamps are on, gets a kernel timestamp. The kernel turns software
/// receive timestamps on for the whole host lazily (a deferred static key)
/// when the first socket asks, and a datagram that arrives before carries
/// none (SO_TIMESTAMPNS used to fill in the time of the read instead).
#[cfg(test)]
pub(crate) fn wait_for_rx_timestamps(socket: &std::net::UdpSocket) {
    let me = socket.local_addr().unwrap();
    let before = socket.read_timeout().unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    for _ in 0..100 {
        socket.send_to(b"warm", me).unwrap();
        let mut buf = [0u8; 8];
        if let Ok((_, Some(_))) = crate::recv_timestamped(socket.as_raw_fd(), &mut buf) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    socket.set_read_timeout(before).unwrap();
}

/// Datagrams a socket has asked transmit timestamps for and not yet got:
/// at most this many are remembered; an older one is given up as lost.
pub const PENDING: usize = 256;
/// Error-queue messages read with one `recvmmsg`.
const READ_BATCH: usize = 32;
/// Room for an error-queue message's control data: SCM_TIMESTAMPING (64
/// bytes) and IP_RECVERR / IPV6_RECVERR (a sock_extended_err and the
/// offender's address: 48 bytes, 64 for IPv6).
const ERR_CONTROL_WORDS: usize = 16;

/// The transmit timestamps one socket waits for, matched to the caller's
/// tags by the kernel's counter (`SOF_TIMESTAMPING_OPT_ID`).
pub struct TxTimestamps {
    /// Whether the kernel counts every datagram sent (older kernels) or
    /// only those that ask for a timestamp.
    counts_every_datagram: bool,
    /// The id the kernel gives the next datagram it counts.
    next_id: u32,
    /// (id, tag) of each stamped datagram sent, oldest first.
    pending: Box<[(u32, u64); PENDING]>,
    head: usize,
    len: usize,
    controls: Box<[[u64; ERR_CONTROL_WORDS]; READ_BATCH]>,
    msgs: Box<[libc::mmsghdr; READ_BATCH]>,
}

impl std::fmt::Debug for TxTimestamps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxTimestamps")
            .field("pending", &self.len)
            .finish_non_exhaustive()
    }
}

impl TxTimestamps {
    /// Turns on receive and transmit timestamps on `socket`. Fails where
    /// the kernel does not return software transmit timestamps (found once
    /// per process on a loopback socket pair); the socket then still has
    /// receive timestamps.
    pub fn enable(socket: &impl AsRawFd) -> std::io::Result<TxTimestamps> {
        enable_rx_timestamps(socket)?;
        let counts_every_datagram = match kernel_counting() {
            Ok(every) => every,
            Err(e) => return Err(std::io::Error::new(e.kind(), e.to_string())),
        };
        // OPT_ID was just turned off (receive flags only) and is turned on
        // again: the kernel restarts its counter at 0.
        set_opt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            &(RX_FLAGS | TX_FLAGS),
        )?;
        let mut stamps = TxTimestamps {
            counts_every_datagram,
            next_id: 0,
            pending: Box::new([(0, 0); PENDING]),
            head: 0,
            len: 0,
            controls: Box::new([[0; ERR_CONTROL_WORDS]; READ_BATCH]),
            // SAFETY: mmsghdr is plain old data; zero is valid. Each is
            // pointed at its control buffer before every read.
            msgs: Box::new(unsafe { std::mem::zeroed() }),
        };
        // Timestamps of an earlier user of the socket (a worker restarted
        // by its supervisor) carry ids of the old count: never ours.
        while stamps.read_batch(socket.as_raw_fd()) > 0 {}
        Ok(stamps)
    }

    /// Timestamps asked for and not yet read or given up.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// The tag of the oldest timestamp still awaited: tags given in
    /// growing order (the worker's receive timestamps) at or after it are
    /// awaited, or were lost.
    pub fn oldest_pending(&self) -> Option<u64> {
        self.front().map(|&(_, tag)| tag)
    }

    /// Notes the datagrams of one `sendmmsg` batch, in order: `Some(tag)`
    /// for one sent with a timestamp request, `None` for one without.
    /// `lost` is called with each tag given up to make room.
    pub(crate) fn sent(&mut self, stamped: Option<u64>, lost: &mut impl FnMut(u64)) {
        match stamped {
            Some(tag) => {
                if self.len == PENDING {
                    if let Some(tag) = self.pop() {
                        lost(tag.1);
                    }
                }
                let at = (self.head + self.len) % PENDING;
                self.pending[at] = (self.next_id, tag);
                self.len += 1;
                self.next_id = self.next_id.wrapping_add(1);
            }
            None if self.counts_every_datagram => self.next_id = self.next_id.wrapping_add(1),
            None => {}
        }
    }

    fn pop(&mut self) -> Option<(u32, u64)> {
        if self.len == 0 {
            return None;
        }
        let e = self.pending[self.head];
        self.head = (self.head + 1) % PENDING;
        self.len -= 1;
        Some(e)
    }

    /// After a datagram was refused, which ids the kernel gave is
    /// unknown: every pending timestamp is given up (`lost`), the error
    /// queue emptied, and the kernel's counter restarted at 0 (turning
    /// OPT_ID off and on again resets it).
    pub(crate) fn resync(&mut self, fd: RawFd, lost: &mut impl FnMut(u64)) {
        while let Some((_, tag)) = self.pop() {
            lost(tag);
        }
        while self.read_batch(fd) > 0 {}
        let off = set_opt(&Fd(fd), libc::SOL_SOCKET, libc::SO_TIMESTAMPING, &RX_FLAGS);
        let on = set_opt(
            &Fd(fd),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPING,
            &(RX_FLAGS | TX_FLAGS),
        );
        debug_assert!(off.is_ok() && on.is_ok());
        self.next_id = 0;
    }

    /// Reads every transmit timestamp queued on `fd` (without waiting) and
    /// calls `f(tag, Some(time))` for each, and `f(tag, None)` for each
    /// datagram sent before one that came back, whose own never will.
    /// Returns how many came back.
    pub fn read(&mut self, fd: RawFd, mut f: impl FnMut(u64, Option<NtpTimestamp>)) -> usize {
        let mut got = 0;
        while self.len > 0 {
            let n = self.read_batch(fd);
            for i in 0..n {
                let Some((id, at)) = self.stamp(i) else {
                    continue;
                };
                // Older ids than this one were dropped by the kernel (its
                // error queue shares SO_RCVBUF with the requests).
                while let Some(&(front, tag)) = self.front() {
                    if front == id {
                        self.pop();
                        f(tag, Some(at));
                        got += 1;
                        break;
                    }
                    if (id.wrapping_sub(front) as i32) < 0 {
                        break; // not one of ours (from before a resync)
                    }
                    self.pop();
                    f(tag, None);
                }
            }
            if n < READ_BATCH {
                break;
            }
        }
        got
    }

    fn front(&self) -> Option<&(u32, u64)> {
        (self.len > 0).then(|| &self.pending[self.head])
    }

    /// Receives up to a batch of error-queue messages; returns how many.
    fn read_batch(&mut self, fd: RawFd) -> usize {
        for i in 0..READ_BATCH {
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            // OPT_TSONLY: no payload comes back.
            h.msg_iov = std::ptr::null_mut();
            h.msg_iovlen = 0;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<[u64; ERR_CONTROL_WORDS]>();
            h.msg_flags = 0;
        }
        // SAFETY: every header points at a control buffer this value owns
        // (boxed, so it does not move) and no data buffer; the kernel
        // writes at most the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                READ_BATCH as libc::c_uint,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let _ = errno(); // EAGAIN: nothing queued
            return 0;
        }
        (n as usize).min(READ_BATCH)
    }

    /// The id and software transmit time of error-queue message `i`, when
    /// it is a timestamp report.
    fn stamp(&self, i: usize) -> Option<(u32, NtpTimestamp)> {
        error_queue_stamp(&self.msgs.get(i)?.msg_hdr)
    }
}

/// A raw descriptor for [`set_opt`].
struct Fd(RawFd);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The OPT_ID counter and software timestamp of an error-queue message.
fn error_queue_stamp(msg: &libc::msghdr) -> Option<(u32, NtpTimestamp)> {
    let (mut id, mut at) = (None, None);
    crate::cmsg::each_cmsg(msg, |level, ty, c| match (level, ty) {
        (libc::SOL_SOCKET, libc::SO_TIMESTAMPING) => {
            at = c.read::<[libc::timespec; 3]>().and_then(|ts| chosen(&ts));
        }
        (libc::SOL_IP, libc::IP_RECVERR) | (libc::SOL_IPV6, libc::IPV6_RECVERR) => {
            if let Some(e) = c.read::<libc::sock_extended_err>() {
                if e.ee_errno == libc::ENOMSG as u32
                    && e.ee_origin == libc::SO_EE_ORIGIN_TIMESTAMPING
                    && e.ee_info == 0
                {
                    id = Some(e.ee_data);
                }
            }
        }
        _ => {}
    });
    Some((id?, at?))
}

/// Whether this kernel gives an OPT_ID to every datagram sent, or only to
/// those that ask for a timestamp (newer kernels): found once, on a
/// loopback pair, by sending one datagram of each kind. An error means no
/// software transmit timestamp came back.
fn kernel_counting() -> Result<bool, &'static std::io::Error> {
    static PROBED: OnceLock<std::io::Result<bool>> = OnceLock::new();
    PROBED.get_or_init(probe_counting).as_ref().map(|&b| b)
}

fn probe_counting() -> std::io::Result<bool> {
    use std::net::UdpSocket;
    let a = UdpSocket::bind("127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0")?;
    set_opt(
        &a,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPING,
        &(RX_FLAGS | TX_FLAGS),
    )?;
    // Connected: the batch's replies need no address of their own.
    a.connect(b.local_addr()?)?;
    let mut batch = crate::SendBatch::<2, 8>::new();
    batch.next_reply()[0] = 1;
    batch.commit(1, &[], None);
    batch.next_reply()[0] = 2;
    batch.commit_stamped(1, &[], None, 0);
    if batch.send(a.as_raw_fd()) != 0 {
        return Err(std::io::Error::other("the probe's datagrams were refused"));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        let mut control = [0u64; ERR_CONTROL_WORDS];
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: msg points at `control`, valid for the call, and no data.
        let r = unsafe {
            libc::recvmsg(
                a.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            if let Some((id, _)) = error_queue_stamp(&msg) {
                return Ok(id == 1);
            }
        } else if std::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "no software transmit timestamp came back on a loopback socket",
            ));
        } else {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::SendBatch;

    fn now() -> NtpTimestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
    }

    fn name_of(s: &UdpSocket) -> Vec<u8> {
        let sa = socket2::SockAddr::from(s.local_addr().unwrap());
        {
            let len = sa.len();
            crate::mmsg::storage_bytes(&sa.as_storage(), len).to_vec()
        }
    }

    /// Reads until `want` tags were reported, for up to a second.
    fn read_all(tx: &mut TxTimestamps, fd: RawFd, want: usize) -> Vec<(u64, Option<NtpTimestamp>)> {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while got.len() < want && std::time::Instant::now() < deadline {
            tx.read(fd, |tag, at| got.push((tag, at)));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        got
    }

    /// Replies with and without a request, mixed in one batch: each
    /// stamped reply's timestamp comes back with its own tag, taken between
    /// the send and the read, and the others ask nothing.
    #[test]
    fn each_stamped_reply_gets_its_own_timestamp() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut tx = TxTimestamps::enable(&a).unwrap();
        let to = name_of(&b);
        let mut batch = SendBatch::<8, 8>::new();
        for i in 0..6u64 {
            batch.next_reply()[0] = i as u8;
            if i % 2 == 1 {
                batch.commit_stamped(1, &to, None, 100 + i);
            } else {
                batch.commit(1, &to, None);
            }
        }
        let before = now();
        assert_eq!(
            batch.send_stamped(a.as_raw_fd(), &mut tx, |t| panic!("lost {t}")),
            0
        );
        assert_eq!(tx.pending(), 3);
        let got = read_all(&mut tx, a.as_raw_fd(), 3);
        let after = now();
        let tags: Vec<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(tags, [101, 103, 105]);
        for (_, at) in &got {
            let at = at.expect("a timestamp");
            assert!(
                at >= before && at <= after,
                "{at:?} not in {before:?}..{after:?}"
            );
        }
        assert_eq!(tx.pending(), 0);
        // The next batch carries on with the kernel's ids.
        batch.next_reply()[0] = 9;
        batch.commit(1, &to, None);
        batch.next_reply()[0] = 9;
        batch.commit_stamped(1, &to, None, 7);
        batch.send_stamped(a.as_raw_fd(), &mut tx, |t| panic!("lost {t}"));
        let got = read_all(&mut tx, a.as_raw_fd(), 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 7);
    }

    /// The error queue shares SO_RCVBUF: timestamps the kernel drops are
    /// reported lost once a later one comes back, never given to another
    /// reply's tag.
    #[test]
    fn timestamps_the_kernel_drops_are_reported_lost() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&a).set_recv_buffer_size(1).unwrap();
        let mut tx = TxTimestamps::enable(&a).unwrap();
        let to = name_of(&b);
        let mut batch = SendBatch::<32, 8>::new();
        for i in 0..32u64 {
            batch.commit_stamped(1, &to, None, i);
        }
        batch.send_stamped(a.as_raw_fd(), &mut tx, |t| panic!("lost {t}"));
        let mut first = Vec::new();
        tx.read(a.as_raw_fd(), |tag, at| first.push((tag, at)));
        let came: Vec<u64> = first
            .iter()
            .filter(|g| g.1.is_some())
            .map(|g| g.0)
            .collect();
        assert!(came.len() < 32, "the small buffer kept all 32");
        assert_eq!(came, (0..came.len() as u64).collect::<Vec<_>>());
        batch.commit_stamped(1, &to, None, 1000);
        batch.send_stamped(a.as_raw_fd(), &mut tx, |t| panic!("lost {t}"));
        let mut second = Vec::new();
        tx.read(a.as_raw_fd(), |tag, at| second.push((tag, at)));
        let lost: Vec<u64> = second
            .iter()
            .filter(|g| g.1.is_none())
            .map(|g| g.0)
            .collect();
        assert_eq!(lost, (came.len() as u64..32).collect::<Vec<_>>());
        assert_eq!(
            second.last().map(|g| (g.0, g.1.is_some())),
            Some((1000, true))
        );
        assert_eq!(tx.pending(), 0);
    }

    /// A refused datagram leaves the kernel's ids unknown: every pending
    /// tag is reported lost, and the next stamped reply is matched again.
    #[test]
    fn a_refused_datagram_resets_the_ids() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut tx = TxTimestamps::enable(&a).unwrap();
        let to = name_of(&b);
        let v6 = socket2::SockAddr::from("[::1]:9".parse::<std::net::SocketAddr>().unwrap());
        let v6len = v6.len();
        let bad = crate::mmsg::storage_bytes(&v6.as_storage(), v6len).to_vec();
        let mut batch = SendBatch::<4, 8>::new();
        batch.commit_stamped(1, &to, None, 1);
        batch.commit(1, &bad, None);
        batch.commit_stamped(1, &to, None, 2);
        let mut lost = Vec::new();
        assert_eq!(
            batch.send_stamped(a.as_raw_fd(), &mut tx, |t| lost.push(t)),
            1
        );
        assert_eq!(lost, [1, 2]);
        assert_eq!(tx.pending(), 0);
        batch.commit_stamped(1, &to, None, 3);
        batch.send_stamped(a.as_raw_fd(), &mut tx, |t| panic!("lost {t}"));
        let got = read_all(&mut tx, a.as_raw_fd(), 1);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 3);
        assert!(got[0].1.is_some());
    }

    /// Receive timestamps come as SCM_TIMESTAMPING once transmit
    /// timestamps are on, as before.
    #[test]
    fn receive_timestamps_stay_on() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let _tx = TxTimestamps::enable(&b).unwrap();
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        let (_, at) = crate::recv_timestamped(b.as_raw_fd(), &mut buf).unwrap();
        assert!(at.is_some());
    }
}
