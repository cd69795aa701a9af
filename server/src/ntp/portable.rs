//! The portable back end: blocking `recvmmsg`/`sendmmsg` in batches.
#![allow(unsafe_code)]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::worker::{Worker, MAX_PACKET};
use crate::ops::counters::NtpEvent;
use ntsd_udp::{
    attach_source, empty_storage, errno, peer_ip, point_reply, received, storage_bytes, ControlBuf,
    SourceBuf, CONTROL_WORDS,
};

const BATCH: usize = 32;

struct Batch {
    requests: Box<[[u8; MAX_PACKET]; BATCH]>,
    replies: Box<[[u8; MAX_PACKET]; BATCH]>,
    addrs: [libc::sockaddr_storage; BATCH],
    controls: [ControlBuf; BATCH],
    /// The source-address control message of each reply (wildcard sockets).
    sources: [SourceBuf; BATCH],
}

/// Receive errors in a row (no datagram in between) after which the loop
/// gives up and returns the error to its supervisor, which restarts it
/// (and counts the restart, which `/healthz` reports).
pub(super) const MAX_ERRORS_IN_A_ROW: u32 = 50;
/// The pause after a failed receive doubles from this...
const FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(1);
/// ...up to this, so a persistent error costs little CPU and no log flood.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `socket` until the worker is asked to stop (`Ok`). A receive
/// error is counted and followed by a pause that grows while errors
/// persist; after [`MAX_ERRORS_IN_A_ROW`] of them the loop returns the last
/// one (`Err`) for the supervisor to restart it.
pub(super) fn run(worker: &mut Worker, socket: &UdpSocket) -> Result<(), String> {
    let fd = socket.as_raw_fd();
    let mut errors = 0u32;
    let mut pause = FIRST_PAUSE;
    let mut b = Batch {
        requests: Box::new([[0; MAX_PACKET]; BATCH]),
        replies: Box::new([[0; MAX_PACKET]; BATCH]),
        addrs: [empty_storage(); BATCH],
        controls: [[0; CONTROL_WORDS]; BATCH],
        sources: [[0; 6]; BATCH],
    };
    // SAFETY: iovec and mmsghdr are plain old data; zero is a valid value.
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut out_iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut out: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    worker.serving();
    while !worker.stopping() {
        for i in 0..BATCH {
            iov[i] = libc::iovec {
                iov_base: b.requests[i].as_mut_ptr().cast(),
                iov_len: MAX_PACKET,
            };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut b.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = b.controls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of::<ControlBuf>();
            h.msg_flags = 0;
        }
        // SAFETY: every mmsghdr points at buffers owned by `b` and `iov`,
        // which outlive the call; the kernel writes at most the given lengths.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = errno();
            if matches!(e, libc::EAGAIN | libc::EINTR) {
                continue;
            }
            worker.count(NtpEvent::ReceiveError);
            errors += 1;
            if errors >= MAX_ERRORS_IN_A_ROW {
                return Err(format!(
                    "recvmmsg failed {errors} times in a row: {}",
                    std::io::Error::from_raw_os_error(e)
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
            continue;
        }
        errors = 0;
        pause = FIRST_PAUSE;
        let n = n as usize;
        // A pass of one learns nothing about waits and adds none: no clock
        // read for it.
        let handling = (n > 1).then(Instant::now);
        let mut m = 0;
        for (i, msg) in msgs.iter().enumerate().take(n) {
            let len = msg.msg_len as usize;
            if msg.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                worker.count(NtpEvent::Received);
                worker.count(NtpEvent::DropMalformed);
                continue;
            }
            let info = received(&msg.msg_hdr);
            let peer = peer_ip(storage_bytes(&b.addrs[i], msg.msg_hdr.msg_namelen));
            let wait = worker.send_wait.wait(n - 1 - i, m);
            let Some(reply_len) = worker.process(
                peer,
                info.at,
                &b.requests[i][..len],
                &mut b.replies[i],
                wait,
            ) else {
                continue;
            };
            let Some(reply) = b.replies[i].get_mut(..reply_len) else {
                continue;
            };
            point_reply(
                &mut out[m],
                &mut out_iov[m],
                reply,
                &mut b.addrs[i],
                msg.msg_hdr.msg_namelen,
            );
            if let Some(local) = info.local {
                attach_source(&mut out[m], &mut b.sources[m], local);
            }
            m += 1;
        }
        if let Some(t) = handling {
            worker.send_wait.learn_handle(n, t.elapsed());
        }
        // SAFETY: `out[..m]` point at reply buffers and addresses owned by
        // `b`, untouched until the call returns.
        unsafe { worker.send(fd, &mut out[..m], false) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose every receive fails (its descriptor replaced by a
    /// file's, so `recvmmsg` says ENOTSOCK): the loop backs off, counts each
    /// error, and after the bound returns the error instead of spinning.
    #[test]
    fn a_persistent_receive_error_is_returned_after_a_bounded_backoff() {
        let (socket, _file) = super::super::worker::failing_socket();
        let (mut worker, counters) = Worker::for_tests();
        let started = std::time::Instant::now();
        let e = run(&mut worker, &socket).unwrap_err();
        let took = started.elapsed();
        assert!(e.contains("50 times in a row"), "{e}");
        assert!(e.to_lowercase().contains("socket"), "{e}");
        assert_eq!(
            counters.get(NtpEvent::ReceiveError),
            u64::from(MAX_ERRORS_IN_A_ROW)
        );
        // 49 pauses: 1, 2, ... 64 ms, then 100 ms each: about 4.4 s, never a spin.
        assert!(took >= std::time::Duration::from_secs(3), "{took:?}");
        assert!(took < std::time::Duration::from_secs(15), "{took:?}");
    }
}
