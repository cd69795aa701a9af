//! Batches of datagrams behind a safe interface: [`RecvBatch`] receives up
//! to `N` with one `recvmmsg(2)`, [`SendBatch`] sends up to `N` replies with
//! `sendmmsg(2)`. Each owns every buffer and header the kernel touches,
//! allocated once (boxed, so they never move) and reused for every batch.
//!
//! ```text
//! RecvBatch::recv(fd) ─► get(i): Datagram { data, truncated, name, received }
//!                                     │ (the caller builds a reply)
//! SendBatch::next_reply() ─► commit(len, name, local) ─► send(fd)
//! ```

use std::net::IpAddr;
use std::os::fd::RawFd;

use crate::cmsg::{attach_control, received, ControlBuf, Received, SourceBuf, CONTROL_WORDS};
use crate::mmsg::{empty_storage, errno, point_reply, send_all, storage_bytes};
use crate::timestamping::TxTimestamps;

const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_storage>();

/// Up to `N` datagrams of at most `LEN` bytes, received together.
pub struct RecvBatch<const N: usize, const LEN: usize> {
    bufs: Box<[[u8; LEN]; N]>,
    addrs: Box<[libc::sockaddr_storage; N]>,
    controls: Box<[ControlBuf; N]>,
    iov: Box<[libc::iovec; N]>,
    msgs: Box<[libc::mmsghdr; N]>,
    count: usize,
}

impl<const N: usize, const LEN: usize> std::fmt::Debug for RecvBatch<N, LEN> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<const N: usize, const LEN: usize> Default for RecvBatch<N, LEN> {
    fn default() -> Self {
        Self::new()
    }
}

/// One received datagram, borrowed from its [`RecvBatch`].
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The bytes received (at most the batch's `LEN`).
    pub data: &'a [u8],
    /// The datagram was longer than `LEN` and was cut.
    pub truncated: bool,
    /// The sender's address as the kernel wrote it (a `sockaddr_in` or
    /// `sockaddr_in6`), for [`SendBatch::commit`] and [`crate::peer_ip`].
    pub name: &'a [u8],
    /// What the control messages said: receive time, destination address.
    pub received: Received,
}

impl<const N: usize, const LEN: usize> RecvBatch<N, LEN> {
    pub fn new() -> Self {
        RecvBatch {
            bufs: Box::new([[0; LEN]; N]),
            addrs: Box::new([empty_storage(); N]),
            controls: Box::new([[0; CONTROL_WORDS]; N]),
            // SAFETY: iovec and mmsghdr are plain old data; zero is valid.
            // They are pointed at the batch's buffers before each receive.
            iov: Box::new(unsafe { std::mem::zeroed() }),
            msgs: Box::new(unsafe { std::mem::zeroed() }),
            count: 0,
        }
    }

    /// Waits for at least one datagram on `fd` and takes as many as are
    /// queued, up to `N` (`MSG_WAITFORONE`); returns how many. Errors are
    /// the kernel's (`WouldBlock` after the socket's receive timeout,
    /// `Interrupted`, or a real failure).
    pub fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        self.count = 0;
        for i in 0..N {
            self.iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: LEN,
            };
            let h = &mut self.msgs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = NAME_LEN as libc::socklen_t;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<ControlBuf>();
            h.msg_flags = 0;
        }
        // SAFETY: every header points at buffers this batch owns (boxed,
        // so they do not move), which outlive the call; the kernel writes at
        // most the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                N as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::from_raw_os_error(errno()));
        }
        self.count = (n as usize).min(N);
        Ok(self.count)
    }

    /// Datagrams received by the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`-th datagram of the last receive.
    #[inline]
    pub fn get(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.count {
            return None;
        }
        let msg = self.msgs.get(i)?;
        let len = (msg.msg_len as usize).min(LEN);
        Some(Datagram {
            data: self.bufs.get(i)?.get(..len)?,
            truncated: msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            name: storage_bytes(self.addrs.get(i)?, msg.msg_hdr.msg_namelen),
            received: received(&msg.msg_hdr),
        })
    }
}

/// Up to `N` replies of at most `LEN` bytes, each to its own address and
/// optionally from a given local address, sent together.
pub struct SendBatch<const N: usize, const LEN: usize> {
    replies: Box<[[u8; LEN]; N]>,
    addrs: Box<[libc::sockaddr_storage; N]>,
    iov: Box<[libc::iovec; N]>,
    msgs: Box<[libc::mmsghdr; N]>,
    /// The control messages of each reply: its source address (wildcard
    /// sockets) and the request for a transmit timestamp.
    sources: Box<[SourceBuf; N]>,
    /// The caller's tag of each reply that asks for a transmit timestamp.
    stamps: Box<[Option<u64>; N]>,
    len: usize,
}

impl<const N: usize, const LEN: usize> std::fmt::Debug for SendBatch<N, LEN> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<const N: usize, const LEN: usize> Default for SendBatch<N, LEN> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const LEN: usize> SendBatch<N, LEN> {
    pub fn new() -> Self {
        assert!(N > 0, "a batch holds at least one reply");
        SendBatch {
            replies: Box::new([[0; LEN]; N]),
            addrs: Box::new([empty_storage(); N]),
            // SAFETY: iovec and mmsghdr are plain old data; zero is valid.
            // Entries are pointed at the batch's own buffers in `commit`.
            iov: Box::new(unsafe { std::mem::zeroed() }),
            msgs: Box::new(unsafe { std::mem::zeroed() }),
            sources: Box::new([[0; 8]; N]),
            stamps: Box::new([None; N]),
            len: 0,
        }
    }

    /// Replies queued.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether [`SendBatch::commit`] would replace the last reply: send
    /// first.
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// The buffer for the next reply (the last one while the batch is
    /// full).
    #[inline]
    pub fn next_reply(&mut self) -> &mut [u8; LEN] {
        let i = self.len.min(N - 1);
        &mut self.replies[i]
    }

    /// Queues the first `len` bytes written into [`SendBatch::next_reply`]
    /// for `name` (a socket address as the kernel writes it, as in
    /// [`Datagram::name`]), sent from `local` when given (a socket bound to
    /// a wildcard address answers from the address the request came to).
    #[inline]
    pub fn commit(&mut self, len: usize, name: &[u8], local: Option<IpAddr>) {
        self.queue(len, name, local, None);
    }

    /// [`SendBatch::commit`] for a reply whose software transmit timestamp
    /// the kernel reports back: [`SendBatch::send_stamped`] hands `tag` to
    /// the socket's [`TxTimestamps`], whose `read` returns it with the
    /// time the reply left.
    #[inline]
    pub fn commit_stamped(&mut self, len: usize, name: &[u8], local: Option<IpAddr>, tag: u64) {
        self.queue(len, name, local, Some(tag));
    }

    #[inline]
    fn queue(&mut self, len: usize, name: &[u8], local: Option<IpAddr>, stamp: Option<u64>) {
        let i = self.len.min(N - 1);
        let namelen = name.len().min(NAME_LEN);
        let (Some(addr), Some(reply)) = (self.addrs.get_mut(i), self.replies[i].get_mut(..len))
        else {
            return;
        };
        // SAFETY: sockaddr_storage is plain old data of NAME_LEN bytes, and
        // at most NAME_LEN bytes of `name` are copied into it (the kernel
        // reads only those `namelen` bytes back).
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (addr as *mut libc::sockaddr_storage).cast::<u8>(),
                namelen,
            );
        }
        point_reply(
            &mut self.msgs[i],
            &mut self.iov[i],
            reply,
            addr,
            namelen as libc::socklen_t,
        );
        attach_control(
            &mut self.msgs[i],
            &mut self.sources[i],
            local,
            stamp.is_some(),
        );
        self.stamps[i] = stamp;
        self.len = i + 1;
    }

    /// Sends every queued reply on `fd` and empties the batch; a datagram
    /// the kernel refuses (an unreachable peer, say) is skipped. Returns
    /// how many were refused.
    pub fn send(&mut self, fd: RawFd) -> usize {
        let n = self.len;
        self.len = 0;
        let Some(msgs) = self.msgs.get_mut(..n) else {
            return 0;
        };
        // SAFETY: `commit` pointed each of these headers at a reply, an
        // iovec, an address and a control buffer this batch owns (boxed, so
        // they have not moved), none of which changes until the call
        // returns.
        unsafe { send_all(fd, msgs) }
    }

    /// [`SendBatch::send`] for a socket with transmit timestamps: each
    /// reply committed with a tag is noted in `stamps`, in send order. A
    /// tag whose timestamp cannot come back (a refused datagram, which
    /// leaves the kernel's ids unknown; a full list) is passed to `lost`.
    pub fn send_stamped(
        &mut self,
        fd: RawFd,
        stamps: &mut TxTimestamps,
        mut lost: impl FnMut(u64),
    ) -> usize {
        let n = self.len;
        let refused = self.send(fd);
        for stamp in self.stamps.iter().take(n) {
            stamps.sent(*stamp, &mut lost);
        }
        if refused > 0 {
            stamps.resync(fd, &mut lost);
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;

    /// A batch received on one socket is answered through a send batch to
    /// each sender, every reply from the right address with the right
    /// bytes.
    #[test]
    fn receive_a_batch_and_answer_each_sender() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        crate::enable_rx_timestamps(&server).unwrap();
        crate::timestamping::wait_for_rx_timestamps(&server);
        let to = server.local_addr().unwrap();
        let clients: Vec<UdpSocket> = (0..3)
            .map(|_| {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c
            })
            .collect();
        for (i, c) in clients.iter().enumerate() {
            c.send_to(&[i as u8; 10], to).unwrap();
        }
        let mut rx = RecvBatch::<8, 64>::new();
        let mut got = 0;
        let mut tx = SendBatch::<8, 64>::new();
        while got < 3 {
            let n = rx.recv(server.as_raw_fd()).unwrap();
            for i in 0..n {
                let d = rx.get(i).unwrap();
                assert!(!d.truncated);
                assert!(d.received.at.is_some(), "no kernel timestamp");
                let reply = tx.next_reply();
                reply[..d.data.len()].copy_from_slice(d.data);
                reply[0] ^= 0xff;
                tx.commit(d.data.len(), d.name, None);
            }
            assert!(rx.get(n).is_none());
            got += n;
        }
        assert_eq!(tx.len(), 3);
        assert_eq!(tx.send(server.as_raw_fd()), 0);
        assert!(tx.is_empty());
        for (i, c) in clients.iter().enumerate() {
            let mut buf = [0u8; 64];
            let (len, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, to);
            let mut want = [i as u8; 10];
            want[0] ^= 0xff;
            assert_eq!(&buf[..len], &want);
        }
    }

    /// A datagram longer than the batch's buffers is cut and says so.
    #[test]
    fn a_long_datagram_is_marked_truncated() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.send_to(&[7; 100], server.local_addr().unwrap()).unwrap();
        let mut rx = RecvBatch::<2, 48>::new();
        assert_eq!(rx.recv(server.as_raw_fd()).unwrap(), 1);
        let d = rx.get(0).unwrap();
        assert!(d.truncated);
        assert_eq!(d.data.len(), 48);
        assert_eq!(crate::peer_ip(d.name), Some(c.local_addr().unwrap().ip()));
    }

    /// A full batch keeps its replies; a commit on a full batch replaces
    /// the last one rather than writing past the end.
    #[test]
    fn a_full_batch_never_grows() {
        let mut tx = SendBatch::<2, 8>::new();
        let name = socket2::SockAddr::from("127.0.0.1:9".parse::<std::net::SocketAddr>().unwrap());
        let len = name.len();
        let name_bytes = crate::mmsg::storage_bytes(&name.as_storage(), len).to_vec();
        for _ in 0..3 {
            tx.next_reply()[0] = 1;
            tx.commit(1, &name_bytes, None);
        }
        assert!(tx.is_full());
        assert_eq!(tx.len(), 2);
    }
}
