//! The portable back end: blocking `recvmmsg`/`sendmmsg` in batches,
//! through `ntsd-udp`'s batch types (no unsafe code here).

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Instant;

use ntsd_udp::{peer_ip, RecvBatch};

use super::worker::{Replies, Worker, MAX_PACKET, SEND_BATCH};
use crate::ops::counters::NtpEvent;

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
    // A reply per request at most, so one receive batch fills at most one
    // send batch.
    let mut requests = RecvBatch::<SEND_BATCH, MAX_PACKET>::new();
    let mut replies = Replies::new();
    let mut stamps = worker.tx_timestamps(socket);
    worker.serving();
    while !worker.stopping() {
        let n = match requests.recv(fd) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                worker.count(NtpEvent::ReceiveError);
                errors += 1;
                if errors >= MAX_ERRORS_IN_A_ROW {
                    return Err(format!("recvmmsg failed {errors} times in a row: {e}"));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_PAUSE);
                continue;
            }
        };
        errors = 0;
        pause = FIRST_PAUSE;
        // A pass of one learns nothing about waits and adds none: no clock
        // read for it.
        let handling = (n > 1).then(Instant::now);
        for i in 0..n {
            let Some(d) = requests.get(i) else {
                break;
            };
            if d.truncated {
                worker.count(NtpEvent::Received);
                worker.count(NtpEvent::DropMalformed);
                continue;
            }
            let wait = worker.send_wait.wait(n - 1 - i, replies.len());
            let peer = peer_ip(d.name);
            if let Some(built) = worker.process(
                peer,
                d.received.at,
                d.data,
                replies.next_reply(),
                wait,
                stamps.as_mut().map(|s| (fd, s)),
            ) {
                built.queue(&mut replies, d.name, d.received.local);
            }
        }
        if let Some(t) = handling {
            worker.send_wait.learn_handle(n, t.elapsed());
        }
        worker.send(fd, &mut replies, false, stamps.as_mut());
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
