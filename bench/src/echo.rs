//! `ntsd-bench echo`: a bare UDP reflector, the ceiling of the harness and
//! the kernel's cost of a request/reply pair.
//!
//! One `SO_REUSEPORT` socket per thread; `recvmmsg` batches of up to 64;
//! each datagram of at least 48 bytes is turned in place into the smallest
//! reply the plain flood accepts and sent back with `sendmmsg`:
//!
//! - byte 0: leap indicator 0, the request's version, mode 4 (server);
//! - bytes 24..32 (origin) := the request's bytes 40..48 (transmit);
//! - only the first 48 bytes go back; everything else is the request's
//!   bytes as they came (for a client request: stratum 0, zero timestamps
//!   but the transmit one, which stays the client's).
//!
//! The plain flood checks only mode 4, the origin and the 48-byte length,
//! so this passes; it is not a usable time source for a real client.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::sys::RecvBatch;

/// Turns the request in `buf[..len]` into a reply in place; returns the
/// reply's length, or `None` for a datagram shorter than an NTP header.
pub fn reflect(buf: &mut [u8], len: usize) -> Option<usize> {
    if len < 48 {
        return None;
    }
    let packet = buf.get_mut(..48)?;
    let (head, tail) = packet.split_at_mut(40);
    let first = head.first_mut()?;
    *first = (*first & 0x38) | 4;
    head.get_mut(24..32)?.copy_from_slice(tail);
    Some(48)
}

/// `threads` sockets bound to `listen` with SO_REUSEPORT (an ephemeral port
/// is chosen by the first and shared by the rest).
pub fn bind(listen: SocketAddr, threads: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut addr = listen;
    let mut out = Vec::with_capacity(threads);
    for _ in 0..threads.max(1) {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        s.set_reuse_port(true)?;
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        let s: UdpSocket = s.into();
        addr = s.local_addr()?;
        // A timeout so that `serve` sees `stop` while idle.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        out.push(s);
    }
    Ok(out)
}

/// Answers datagrams on `socket` until `stop` is set. Returns the number of
/// replies sent.
pub fn serve(socket: &UdpSocket, stop: &AtomicBool) -> u64 {
    let fd = socket.as_raw_fd();
    let mut batch = RecvBatch::new();
    let mut replies = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = batch.recv(fd, true) else {
            // Timeout (EAGAIN), interruption, or a transient error.
            continue;
        };
        for i in 0..n {
            if let Some((buf, len)) = batch.get_mut(i) {
                if let Some(reply) = reflect(buf, len) {
                    batch.set_reply(i, reply);
                }
            }
        }
        replies += batch.send_back(fd).0 as u64;
    }
    replies
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::packet::{Mode, NtpHeader};
    use nts_proto::reader::Reader;
    use nts_proto::NtpTimestamp;

    #[test]
    fn a_request_becomes_a_server_reply_with_our_origin() {
        let t = NtpTimestamp(0x8123_4567_89ab_cdef);
        let mut buf = [0u8; 100];
        buf[..48].copy_from_slice(&NtpHeader::client_request(t).to_bytes());
        assert_eq!(reflect(&mut buf, 100), Some(48));
        let h = NtpHeader::decode(&mut Reader::new(&buf[..48])).expect("header");
        assert_eq!((h.mode, h.version, h.origin), (Mode::Server, 4, t));
        assert_eq!(reflect(&mut buf, 47), None);
        assert_eq!(reflect(&mut [0u8; 10], 48), None);
    }

    #[test]
    fn two_threads_share_one_port_and_stop() {
        let socks = bind(([127, 0, 0, 1], 0).into(), 2).expect("bind");
        let port = socks[0].local_addr().expect("addr").port();
        assert_eq!(socks[1].local_addr().expect("addr").port(), port);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            let h: Vec<_> = socks
                .iter()
                .map(|sock| s.spawn(|| serve(sock, &stop)))
                .collect();
            let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
            c.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            c.send_to(&[0x23; 48], ("127.0.0.1", port)).expect("send");
            let mut b = [0u8; 64];
            let n = c.recv(&mut b).expect("reply");
            assert_eq!((n, b[0]), (48, 0x24));
            stop.store(true, Ordering::Relaxed);
            let total: u64 = h.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            assert_eq!(total, 1);
        });
    }
}
