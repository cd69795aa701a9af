//! Batched UDP I/O on Linux, shared by the ntsd server's two back ends and
//! by `ntsd-bench`: socket options, control messages (receive timestamps,
//! the destination address of a datagram, the source address of a reply)
//! and `sendmmsg`/`recvmsg` helpers, in the spirit of `quinn-udp`.
//!
//! ```text
//! sockopt: enable_pktinfo, set_dont_fragment,
//!          steer_by_source (one socket of a SO_REUSEPORT group per source address)
//! timestamping: enable_rx_timestamps, TxTimestamps (SO_TIMESTAMPING, software)
//! RecvBatch::recv (recvmmsg) ─► Datagram { data, name, received: Received { at, local } }
//! SendBatch::next_reply ─► commit(len, name, local) ─► send (sendmmsg)
//!                       └► commit_stamped(.., tag) ─► send_stamped ─► TxTimestamps::read
//! ```
//!
//! Every `unsafe` block that touches the socket API outside the io_uring
//! back end is here, behind safe functions and the two batch types, which
//! own every buffer they hand the kernel. For callers with buffers of
//! their own (the io_uring back end's provided buffers, a reflector that
//! answers in place) there are the parts: [`received_in`] for control
//! messages as bytes, and [`point_reply`] with the one `unsafe fn`,
//! [`send_all`], whose contract its doc states. Nothing here allocates
//! after a batch is created.

#[allow(unsafe_code)]
mod batch;
#[allow(unsafe_code)]
mod cmsg;
#[allow(unsafe_code)]
mod mmsg;
#[allow(unsafe_code)]
mod sockopt;
mod steer;
#[allow(unsafe_code)]
mod timestamping;

pub use batch::{Datagram, RecvBatch, SendBatch};
pub use cmsg::{received_in, ControlBuf, Received};
pub use mmsg::{peer_ip, point_reply, recv_timestamped, send_all};
pub use sockopt::{enable_pktinfo, set_dont_fragment};
pub use steer::{steer_by_source, steered_index};
pub use timestamping::{enable_rx_timestamps, TxTimestamps, PENDING as TX_PENDING};

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use super::*;
    use crate::mmsg::storage_bytes;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (a, b)
    }

    /// A datagram received with timestamps on carries the kernel's
    /// receive time, close to the wall clock.
    #[test]
    fn a_timestamped_receive_has_the_kernels_time() {
        let (a, b) = pair();
        enable_rx_timestamps(&b).unwrap();
        crate::timestamping::wait_for_rx_timestamps(&b);
        a.send_to(b"hello", b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let (n, at) = recv_timestamped(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let at = at.expect("no receive timestamp");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let now = nts_proto::NtpTimestamp::from_unix(now.as_secs(), now.subsec_nanos());
        let late = now.seconds_since(at);
        assert!((0.0..5.0).contains(&late), "received {late} s before now");
    }

    /// Without the option there is no timestamp, never a made-up one.
    #[test]
    fn no_timestamp_without_the_option() {
        let (a, b) = pair();
        a.send_to(b"x", b.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 8];
        let (n, at) = recv_timestamped(b.as_raw_fd(), &mut buf).unwrap();
        assert_eq!((n, at), (1, None));
    }

    /// `send_all` sends every pointed-at datagram, and `peer_ip` reads the
    /// address back out of the storage the header names.
    #[test]
    fn send_all_sends_a_batch() {
        let (a, b) = pair();
        let to = b.local_addr().unwrap();
        let sa = socket2::SockAddr::from(to);
        let len = sa.len();
        let storage = sa.as_storage();
        assert_eq!(peer_ip(storage_bytes(&storage, len)), Some(to.ip()));
        let mut payloads = [*b"one", *b"two", *b"six"];
        let mut addrs = [storage; 3];
        let mut iovs: [libc::iovec; 3] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; 3];
        #[allow(unsafe_code)]
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; 3] = unsafe { std::mem::zeroed() };
        for (((m, iov), p), addr) in msgs
            .iter_mut()
            .zip(iovs.iter_mut())
            .zip(payloads.iter_mut())
            .zip(addrs.iter_mut())
        {
            point_reply(m, iov, p, addr, len);
        }
        #[allow(unsafe_code)]
        // SAFETY: every header points at a payload, an iovec and an
        // address that live until the end of this function.
        let refused = unsafe { send_all(a.as_raw_fd(), &mut msgs) };
        assert_eq!(refused, 0);
        let mut got = Vec::new();
        for _ in 0..3 {
            let mut buf = [0u8; 8];
            let n = b.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"six".to_vec()]);
    }

    /// Control messages the kernel did not write (an empty buffer, a
    /// truncated header) give nothing, not garbage.
    #[test]
    fn empty_or_short_control_gives_nothing() {
        assert_eq!(received_in(&[]), Received::default());
        assert_eq!(received_in(&[0xff; 7]), Received::default());
    }
}
