//! The io_uring back end: one ring per worker. Each socket has one
//! multishot `RecvMsg` that stays armed and takes its buffers from a ring of
//! provided buffers, so a datagram costs one completion and no new
//! submission. The replies of each pass over the completions go out with
//! `sendmmsg`. All buffers are allocated once at start and never move while
//! the kernel may reference them.
#![allow(unsafe_code)]

mod buffers;
mod send;

use buffers::RecvBuffers;
use send::SendBatch;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::types::RecvMsgOut;
use io_uring::{cqueue, opcode, types, IoUring};

use super::worker::{Worker, MAX_PACKET, SEND_BATCH, STOP_POLL};
use crate::ops::counters::NtpEvent;
use ntsd_udp::{peer_ip, received_in, ControlBuf};

/// Provided receive buffers per worker (a power of two, as the kernel
/// requires). When all are taken the multishot receive stops with ENOBUFS
/// and is re-armed once buffers are back; datagrams wait in the socket.
const RECV_BUFFERS: u16 = 256;
/// The buffer group of the provided receive buffers.
const BUF_GROUP: u16 = 0;

const OP_RECV: u64 = 0;
const OP_CANCEL: u64 = 1 << 32;
const OP_MASK: u64 = !0xffff_ffff;
const INDEX_MASK: u64 = 0xffff_ffff;

/// One provided buffer: the kernel's `io_uring_recvmsg_out` header, the
/// peer address, the control messages, then the datagram.
const NAME_LEN: usize = std::mem::size_of::<libc::sockaddr_storage>();
const CONTROL_LEN: usize = std::mem::size_of::<ControlBuf>();
/// `struct io_uring_recvmsg_out`: four u32s.
const RECV_HEADER_LEN: usize = 16;
const BUF_LEN: usize = (RECV_HEADER_LEN + NAME_LEN + CONTROL_LEN + MAX_PACKET).next_multiple_of(64);

/// Checks that this kernel runs what the back end needs (io_uring itself,
/// which some seccomp profiles and `kernel.io_uring_disabled` block, a
/// provided-buffer ring, Linux 5.19, and multishot `RecvMsg`, Linux 6.0) by
/// receiving one datagram on a Unix socket pair, so no network is needed.
pub(super) fn probe() -> std::io::Result<()> {
    let unsupported = |what: &str| std::io::Error::new(std::io::ErrorKind::Unsupported, what);
    let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
    let msg = recv_template();
    let mut rx = Rx::new(8, 2)?;
    let sqe = recv_entry(a.as_raw_fd(), &msg).user_data(OP_RECV);
    // SAFETY: the entry points at `msg`, declared before `rx` and so
    // dropped after the ring.
    unsafe { rx.ring.submission().push(&sqe) }
        .map_err(|_| std::io::Error::other("submission queue full"))?;
    b.send(b"probe")?;
    let timeout = types::Timespec::new().sec(1);
    let args = types::SubmitArgs::new().timespec(&timeout);
    match rx.ring.submitter().submit_with_args(1, &args) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
        Err(e) => return Err(e),
    }
    let cqe = rx
        .ring
        .completion()
        .next()
        .ok_or_else(|| unsupported("no completion for a multishot receive"))?;
    if cqe.result() < 0 {
        return Err(std::io::Error::from_raw_os_error(-cqe.result()));
    }
    let bid = cqueue::buffer_select(cqe.flags())
        .ok_or_else(|| unsupported("no provided buffer used (multishot receive unsupported)"))?;
    match RecvMsgOut::parse(rx.buffers.get(bid), &msg) {
        Ok(out) if out.payload_data() == b"probe" => Ok(()),
        _ => Err(unsupported(
            "multishot receive returned an unexpected layout",
        )),
    }
}

/// A ring and its provided receive buffers. The ring is declared first so
/// that it is dropped first: closing it ends every operation that may
/// still write into the buffers.
struct Rx {
    ring: IoUring,
    buffers: RecvBuffers,
}

impl Rx {
    fn new(entries: u32, buffers: u16) -> std::io::Result<Rx> {
        let ring = new_ring(entries, buffers)?;
        let buffers = RecvBuffers::new(&ring, buffers)?;
        restrict_and_enable(&ring)?;
        Ok(Rx { ring, buffers })
    }
}

/// Limits the ring, created disabled, to what the worker submits: the
/// multishot receive (with buffer selection) and the cancel at shutdown.
/// seccomp cannot see what a ring submits, so a compromised worker could
/// otherwise open files or sockets through it. No register operation stays
/// allowed (the buffer ring is registered before). Kernels without
/// `IORING_REGISTER_RESTRICTIONS` (before 5.10) run the ring unrestricted.
fn restrict_and_enable(ring: &IoUring) -> std::io::Result<()> {
    use io_uring::register::Restriction;
    let mut allowed = [
        Restriction::sqe_op(opcode::RecvMsgMulti::CODE),
        Restriction::sqe_op(opcode::AsyncCancel2::CODE),
        Restriction::sqe_flags_allowed(io_uring::squeue::Flags::BUFFER_SELECT.bits()),
    ];
    if let Err(e) = ring.submitter().register_restrictions(&mut allowed) {
        // Once per process: every worker's ring would say the same.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(error = %e, "io_uring restrictions refused by the kernel: the rings run unrestricted (a compromised worker could submit any operation); Linux 5.10 or later restricts them");
        });
    }
    ring.submitter().register_enable_rings()
}

/// A ring owned by this thread alone. Deferred task running (Linux 6.1)
/// completes the receives only when the worker asks for completions, in
/// one batch, instead of interrupting it for each arriving datagram; older
/// kernels get a plain ring.
///
/// The completion queue holds a completion for every provided buffer
/// twice over, so that a burst never overflows it.
fn new_ring(entries: u32, buffers: u16) -> std::io::Result<IoUring> {
    let cq = (u32::from(buffers) * 2).max(entries * 2);
    IoUring::builder()
        .setup_cqsize(cq)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(entries)
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(cq)
                .setup_r_disabled()
                .build(entries)
        })
}

/// The `msghdr` a multishot receive reads its name and control lengths from.
fn recv_template() -> Box<libc::msghdr> {
    // SAFETY: msghdr is plain old data; all-zero is valid.
    let mut msg: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
    msg.msg_namelen = NAME_LEN as libc::socklen_t;
    msg.msg_controllen = CONTROL_LEN;
    msg
}

fn recv_entry(fd: i32, template: &libc::msghdr) -> io_uring::squeue::Entry {
    opcode::RecvMsgMulti::new(types::Fd(fd), template, BUF_GROUP).build()
}

/// Serves `sockets` on a new ring until the worker is asked to stop (`Ok`)
/// or the ring fails (`Err`, for the supervisor to restart it).
pub(super) fn run(worker: &mut Worker, sockets: &[UdpSocket]) -> Result<(), String> {
    let fds: Vec<i32> = sockets.iter().map(|s| s.as_raw_fd()).collect();
    // Declared before the ring, so dropped after it: the receives point at
    // the template.
    let template = recv_template();
    let entries = (fds.len() + 1).next_power_of_two() as u32;
    let mut rx =
        Rx::new(entries, RECV_BUFFERS).map_err(|e| format!("cannot set up io_uring: {e}"))?;
    let mut stamps: Vec<_> = sockets.iter().map(|s| worker.tx_timestamps(s)).collect();
    worker.serving();
    let result = serve(worker, &mut rx, &template, &fds, &mut stamps);
    drop(rx);
    result
}

fn serve(
    worker: &mut Worker,
    Rx { ring, buffers }: &mut Rx,
    template: &libc::msghdr,
    fds: &[i32],
    stamps: &mut [Option<ntsd_udp::TxTimestamps>],
) -> Result<(), String> {
    // Armed receives (one per socket until the worker stops).
    let mut in_flight = 0usize;
    // Receives to (re-)arm, pushed after each pass.
    let mut rearm = Vec::<io_uring::squeue::Entry>::with_capacity(fds.len());
    for (i, &fd) in fds.iter().enumerate() {
        rearm.push(recv_entry(fd, template).user_data(OP_RECV | i as u64));
    }
    let mut batch = SendBatch::new();
    let timeout = types::Timespec::new().nsec(STOP_POLL.as_nanos() as u32);
    let args = types::SubmitArgs::new().timespec(&timeout);
    let mut cancelled = false;
    // Receives that ended in an error, in a row (no datagram in between).
    let mut errors = 0u32;
    loop {
        for sqe in rearm.drain(..) {
            // SAFETY: the entry points at the template, which outlives the
            // ring; the queue has room for one receive per socket.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                // Never a socket that silently stops receiving.
                return Err("cannot re-arm a receive: the submission queue is full".into());
            }
            in_flight += 1;
        }
        if worker.stopping() && !cancelled {
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(OP_CANCEL);
            // SAFETY: a cancel entry references no memory.
            if unsafe { ring.submission().push(&cancel) }.is_err() {
                break;
            }
            cancelled = true;
        }
        if in_flight == 0 {
            break;
        }
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(format!("io_uring_enter failed: {e}")),
        }
        let mut recycled = false;
        let completions = ring.completion();
        let pass = completions.len();
        // A pass of one learns nothing about waits and adds none: no clock
        // read for it.
        let handling = (pass > 1).then(Instant::now);
        batch.sending = handling.map(|_| Duration::ZERO);
        for (k, cqe) in completions.enumerate() {
            let data = cqe.user_data();
            if data & OP_MASK != OP_RECV {
                continue;
            }
            let index = (data & INDEX_MASK) as usize;
            let flags = cqe.flags();
            if let Some(bid) = cqueue::buffer_select(flags) {
                errors = 0;
                if let (false, Some(&fd)) = (cancelled, fds.get(index)) {
                    on_receive(
                        worker,
                        buffers.get(bid),
                        cqe.result(),
                        template,
                        (fd, index),
                        &mut batch,
                        stamps,
                        pass - 1 - k,
                    );
                }
                buffers.recycle(bid);
                recycled = true;
            } else if cqe.result() < 0
                && cqe.result() != -libc::ENOBUFS
                && cqe.result() != -libc::ECANCELED
            {
                worker.count(NtpEvent::ReceiveError);
                errors += 1;
                if errors >= super::portable::MAX_ERRORS_IN_A_ROW {
                    return Err(format!(
                        "receives failed {errors} times in a row: {}",
                        std::io::Error::from_raw_os_error(-cqe.result())
                    ));
                }
            }
            if !cqueue::more(flags) {
                in_flight -= 1;
                if let (false, Some(&fd)) = (cancelled, fds.get(index)) {
                    rearm.push(recv_entry(fd, template).user_data(data));
                }
            }
        }
        if let (Some(t), Some(sending)) = (handling, batch.sending) {
            worker
                .send_wait
                .learn_handle(pass, t.elapsed().saturating_sub(sending));
        }
        batch.sending = None;
        batch.flush(worker, stamps);
        if recycled {
            buffers.publish();
        }
    }
    Ok(())
}

/// Handles one received datagram in a provided buffer: answers it into the
/// send batch. `later` completions of this pass follow it.
#[allow(clippy::too_many_arguments)]
fn on_receive(
    worker: &mut Worker,
    buf: &[u8],
    result: i32,
    template: &libc::msghdr,
    (fd, socket): (i32, usize),
    batch: &mut SendBatch,
    stamps: &mut [Option<ntsd_udp::TxTimestamps>],
    later: usize,
) {
    if result < 0 {
        worker.count(NtpEvent::ReceiveError);
        return;
    }
    let written = (result as usize).min(buf.len());
    let Ok(msg) = RecvMsgOut::parse(buf.get(..written).unwrap_or(buf), template) else {
        worker.count(NtpEvent::ReceiveError);
        return;
    };
    if msg.is_payload_truncated() {
        worker.count(NtpEvent::Received);
        worker.count(NtpEvent::DropMalformed);
        return;
    }
    if msg.is_name_data_truncated() {
        worker.count(NtpEvent::ReceiveError);
        return;
    }
    batch.reserve(worker, fd, socket, stamps);
    let info = received_in(msg.control_data());
    let peer = peer_ip(msg.name_data());
    // The batch is sent when it is full or at the end of the pass.
    let queued = batch.len();
    let later = later.min((SEND_BATCH - 1).saturating_sub(queued));
    let wait = worker.send_wait.wait(later, queued);
    let replies = &mut batch.replies;
    if let Some(built) = worker.process(
        peer,
        info.at,
        msg.payload_data(),
        replies.next_reply(),
        wait,
        stamps
            .get_mut(socket)
            .and_then(Option::as_mut)
            .map(|s| (fd, s)),
    ) {
        built.queue(replies, msg.name_data(), info.local);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose receives always fail (its descriptor replaced by a
    /// file's): the ring's receive ends in an error, is re-armed, fails
    /// again, and after the bound `run` returns the error for the
    /// supervisor, never a socket that silently stops receiving.
    /// Whether io_uring runs here; a skip that says why where it does not.
    fn available() -> bool {
        let probed = probe();
        let why = format!("io_uring ({:?})", probed.as_ref().err());
        testkit::require(&why, probed.is_ok())
    }

    #[test]
    fn a_persistent_receive_error_is_returned() {
        if !available() {
            return;
        }
        let (socket, _file) = super::super::worker::failing_socket();
        let (mut worker, counters) = Worker::for_tests();
        let e = run(&mut worker, std::slice::from_ref(&socket)).unwrap_err();
        assert!(e.contains("in a row"), "{e}");
        assert_eq!(
            counters.get(NtpEvent::ReceiveError),
            u64::from(super::super::portable::MAX_ERRORS_IN_A_ROW)
        );
    }

    /// The worker's ring refuses an operation it does not use (here a
    /// read), where the kernel supports restrictions, and still receives.
    #[test]
    fn the_ring_allows_only_the_receive_and_the_cancel() {
        if !available() {
            return;
        }
        let mut rx = Rx::new(8, 2).unwrap();
        let mut buf = [0u8; 8];
        let file = std::fs::File::open("/dev/zero").unwrap();
        let read = opcode::Read::new(types::Fd(file.as_raw_fd()), buf.as_mut_ptr(), 8)
            .build()
            .user_data(7);
        // SAFETY: `buf` and `file` outlive the submission and its completion.
        unsafe { rx.ring.submission().push(&read) }.unwrap();
        rx.ring.submitter().submit_and_wait(1).unwrap();
        let cqe = rx.ring.completion().next().unwrap();
        assert_eq!(cqe.result(), -libc::EACCES, "a read went through the ring");
        drop(rx);
        // The restricted ring still does its job.
        probe().unwrap();
    }
}
