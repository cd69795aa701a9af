//! The system calls the generator and the reflector make directly: batched
//! UDP I/O on connected sockets (`recvmmsg`, and `sendmmsg` through
//! `ntsd-udp`), `ppoll` and the clock tick rate. Every `unsafe` block of
//! the crate is here, behind safe, bounds-checked wrappers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Datagrams per `recvmmsg`/`sendmmsg` call.
pub const BATCH: usize = 64;
/// Receive buffer per datagram. A longer datagram is reported truncated.
pub const DATAGRAM_MAX: usize = 4096;

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Buffers for one `recvmmsg` call and the senders' addresses, allocated
/// once and reused; optionally answered in place with [`RecvBatch::send_back`].
pub struct RecvBatch {
    bufs: Vec<u8>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    reply_lens: [usize; BATCH],
    addrs: Box<[libc::sockaddr_storage; BATCH]>,
    addr_lens: [libc::socklen_t; BATCH],
    iov: Box<[libc::iovec; BATCH]>,
    msgs: Box<[libc::mmsghdr; BATCH]>,
    count: usize,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            bufs: vec![0; BATCH * DATAGRAM_MAX],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            reply_lens: [0; BATCH],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain old data
            // for which all-zero bytes (null pointers, zero lengths) are valid.
            addrs: Box::new(unsafe { std::mem::zeroed() }),
            addr_lens: [0; BATCH],
            iov: Box::new(unsafe { std::mem::zeroed() }),
            msgs: Box::new(unsafe { std::mem::zeroed() }),
            count: 0,
        }
    }

    /// One `recvmmsg` of up to [`BATCH`] datagrams. `wait`: block until the
    /// first one arrives (`MSG_WAITFORONE`, on a blocking socket); otherwise
    /// `MSG_DONTWAIT`. Returns how many arrived (`WouldBlock` for none).
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        self.count = 0;
        // The pointers are set on every call: they point into `self`, which
        // may have moved since the last one.
        for (i, chunk) in self.bufs.chunks_exact_mut(DATAGRAM_MAX).enumerate() {
            let (Some(iov), Some(msg), Some(addr)) = (
                self.iov.get_mut(i),
                self.msgs.get_mut(i),
                self.addrs.get_mut(i),
            ) else {
                break;
            };
            *iov = libc::iovec {
                iov_base: chunk.as_mut_ptr().cast(),
                iov_len: chunk.len(),
            };
            let h = &mut msg.msg_hdr;
            h.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            msg.msg_len = 0;
        }
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        // SAFETY: every mmsghdr points at an iovec, buffer and address owned
        // by `self` that outlive the call; the kernel writes at most the
        // lengths given in them.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(last_error());
        }
        let n = (n as usize).min(BATCH);
        for (i, msg) in self.msgs.iter().enumerate().take(n) {
            if let (Some(len), Some(trunc), Some(addr_len), Some(reply)) = (
                self.lens.get_mut(i),
                self.truncated.get_mut(i),
                self.addr_lens.get_mut(i),
                self.reply_lens.get_mut(i),
            ) {
                *len = (msg.msg_len as usize).min(DATAGRAM_MAX);
                *trunc = msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                *addr_len = msg.msg_hdr.msg_namelen;
                *reply = 0;
            }
        }
        self.count = n;
        Ok(n)
    }

    /// Datagrams received by the last [`RecvBatch::recv`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The `i`th datagram, or `None` past the end or if it was truncated.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        if i >= self.count || self.truncated.get(i).copied().unwrap_or(true) {
            return None;
        }
        let len = *self.lens.get(i)?;
        self.bufs.get(i * DATAGRAM_MAX..i * DATAGRAM_MAX + len)
    }

    /// The `i`th datagram's whole buffer ([`DATAGRAM_MAX`] bytes, the
    /// datagram first) and its length, to build a reply in place.
    pub fn get_mut(&mut self, i: usize) -> Option<(&mut [u8], usize)> {
        if i >= self.count || self.truncated.get(i).copied().unwrap_or(true) {
            return None;
        }
        let len = *self.lens.get(i)?;
        let buf = self
            .bufs
            .get_mut(i * DATAGRAM_MAX..(i + 1) * DATAGRAM_MAX)?;
        Some((buf, len))
    }

    /// Marks the first `len` bytes of the `i`th buffer as the reply to send
    /// back to its sender (0: no reply).
    pub fn set_reply(&mut self, i: usize, len: usize) {
        if i < self.count {
            if let Some(r) = self.reply_lens.get_mut(i) {
                *r = len.min(DATAGRAM_MAX);
            }
        }
    }

    /// Sends every marked reply to the address its request came from, in
    /// `sendmmsg` batches. A datagram the kernel refuses is skipped (and
    /// counted in the second value). Returns (sent, failed).
    pub fn send_back(&mut self, fd: RawFd) -> (usize, usize) {
        // SAFETY: as in `new`, all-zero mmsghdr/iovec values are valid.
        let mut out: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut out_iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut m = 0;
        for i in 0..self.count.min(BATCH) {
            let (Some(&len), Some(&addr_len), Some(addr), Some(iov), Some(msg)) = (
                self.reply_lens.get(i),
                self.addr_lens.get(i),
                self.addrs.get_mut(i),
                out_iov.get_mut(m),
                out.get_mut(m),
            ) else {
                break;
            };
            let Some(buf) = self.bufs.get_mut(i * DATAGRAM_MAX..i * DATAGRAM_MAX + len) else {
                continue;
            };
            if len == 0 {
                continue;
            }
            ntsd_udp::point_reply(msg, iov, buf, addr, addr_len);
            m += 1;
        }
        let batch = out.get_mut(..m).unwrap_or_default();
        // SAFETY: every header was pointed by `point_reply` at a reply in
        // `self.bufs`, its iovec in `out_iov` and its address in
        // `self.addrs`, all of which outlive the call.
        let refused = unsafe { ntsd_udp::send_all(fd, batch) };
        (batch.len() - refused, refused)
    }
}

/// Header arrays for `sendmmsg` on a connected socket, allocated once.
pub struct SendBatch {
    iov: Box<[libc::iovec; BATCH]>,
    msgs: Box<[libc::mmsghdr; BATCH]>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SendBatch { .. }")
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        Self {
            // SAFETY: all-zero iovec and mmsghdr values are valid.
            iov: Box::new(unsafe { std::mem::zeroed() }),
            msgs: Box::new(unsafe { std::mem::zeroed() }),
        }
    }

    /// One `sendmmsg` of up to [`BATCH`] of `packets` on the connected
    /// socket `fd`. Returns how many the kernel took (from the front); an
    /// error only if it took none.
    pub fn send(&mut self, fd: RawFd, packets: &[&[u8]]) -> io::Result<usize> {
        let mut n = 0;
        for ((p, iov), msg) in packets
            .iter()
            .zip(self.iov.iter_mut())
            .zip(self.msgs.iter_mut())
        {
            // sendmmsg only reads through iov_base.
            *iov = libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            };
            let h = &mut msg.msg_hdr;
            h.msg_name = std::ptr::null_mut();
            h.msg_namelen = 0;
            h.msg_iov = iov;
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            n += 1;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: the first `n` headers point at iovecs in `self` and at the
        // caller's packets, all valid for the duration of the call; the
        // kernel only reads them.
        let r = unsafe {
            libc::sendmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            Err(last_error())
        } else {
            Ok(r as usize)
        }
    }
}

/// Waits up to `timeout` for an event on `fds` (`ppoll`, so the timeout
/// has microsecond resolution). Returns the number of ready descriptors;
/// 0 on timeout or interruption.
pub fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(3600) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `fds` is a valid slice of pollfd of the given length and `ts`
    // outlives the call; a null signal mask leaves the mask unchanged.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = last_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// Clock ticks per second of the times in `/proc/PID/stat` (USER_HZ).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_batch_goes_out_and_comes_back_in_place() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
        client
            .connect(server.local_addr().expect("addr"))
            .expect("connect");
        let packets: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        assert_eq!(
            SendBatch::new().send(client.as_raw_fd(), &refs).ok(),
            Some(3)
        );

        let mut batch = RecvBatch::new();
        let mut got = 0;
        for _ in 0..100 {
            if let Ok(n) = batch.recv(server.as_raw_fd(), false) {
                got = n;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(got, 3);
        assert_eq!(batch.get(1), Some(&[1u8; 11][..]));
        assert_eq!(batch.get(3), None);
        let (buf, len) = batch.get_mut(2).expect("datagram 2");
        assert_eq!(len, 12);
        buf[0] = 99;
        batch.set_reply(2, 4);
        assert_eq!(batch.send_back(server.as_raw_fd()), (1, 0));

        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let n = client.recv(&mut buf).expect("reply");
        assert_eq!(&buf[..n], &[99, 2, 2, 2]);
    }

    #[test]
    fn poll_times_out_and_ticks_are_sane() {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut fds = [libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(poll(&mut fds, Duration::from_millis(1)).ok(), Some(0));
        assert!(clock_ticks_per_second() >= 1.0);
    }
}
