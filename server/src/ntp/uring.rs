//! The io_uring back end: one ring per worker, a fixed set of slots per
//! socket, each slot alternating between a `RecvMsg` and a `SendMsg` on its
//! own buffers. Buffers and message headers are allocated once at start and
//! never move while the kernel may reference them.
#![allow(unsafe_code)]

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

use super::sys::{empty_storage, rx_timestamp, ControlBuf};
use super::{Worker, MAX_PACKET, STOP_POLL};
use crate::stats::NtpEvent;

/// Receives kept in flight per socket.
const SLOTS_PER_SOCKET: usize = 64;
const OP_RECV: u64 = 0;
const OP_SEND: u64 = 1 << 32;
const OP_CANCEL: u64 = 2 << 32;
const SLOT_MASK: u64 = 0xffff_ffff;

/// Checks that io_uring can be set up here (it is blocked by some seccomp
/// profiles and by `kernel.io_uring_disabled`).
pub fn probe() -> std::io::Result<()> {
    IoUring::new(8).map(|_| ())
}

struct Slot {
    fd: i32,
    request: [u8; MAX_PACKET],
    reply: [u8; MAX_PACKET],
    addr: libc::sockaddr_storage,
    control: ControlBuf,
    recv_iov: libc::iovec,
    recv_msg: libc::msghdr,
    send_iov: libc::iovec,
    send_msg: libc::msghdr,
}

impl Slot {
    fn new(fd: i32) -> Box<Slot> {
        // SAFETY: iovec and msghdr are plain old data; zero is valid. They are
        // pointed at the slot's own fields in `arm_recv` / `arm_send`, after
        // the slot has reached its final heap address.
        Box::new(Slot {
            fd,
            request: [0; MAX_PACKET],
            reply: [0; MAX_PACKET],
            addr: empty_storage(),
            control: [0; 8],
            recv_iov: unsafe { std::mem::zeroed() },
            recv_msg: unsafe { std::mem::zeroed() },
            send_iov: unsafe { std::mem::zeroed() },
            send_msg: unsafe { std::mem::zeroed() },
        })
    }

    fn arm_recv(&mut self) -> io_uring::squeue::Entry {
        self.recv_iov = libc::iovec {
            iov_base: self.request.as_mut_ptr().cast(),
            iov_len: MAX_PACKET,
        };
        self.recv_msg.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.recv_msg.msg_namelen =
            std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        self.recv_msg.msg_iov = &mut self.recv_iov;
        self.recv_msg.msg_iovlen = 1;
        self.recv_msg.msg_control = self.control.as_mut_ptr().cast();
        self.recv_msg.msg_controllen = std::mem::size_of::<ControlBuf>();
        self.recv_msg.msg_flags = 0;
        opcode::RecvMsg::new(types::Fd(self.fd), &mut self.recv_msg).build()
    }

    /// Sends the reply at once with sendmsg(2); `false` if the socket buffer
    /// is full (then the send goes through the ring). Sending directly keeps
    /// the time between the transmit timestamp and the wire as short as with
    /// the portable back end; through the ring it measured ~3 µs longer on
    /// loopback, which showed as a negative offset bias in chrony's samples.
    /// It costs a syscall per reply, so it is used only at light load.
    fn send_now(&mut self, len: usize) -> Result<bool, i32> {
        self.prepare_send(len);
        // SAFETY: send_msg points at this slot's reply buffer and address,
        // both valid for the duration of the call.
        let r = unsafe { libc::sendmsg(self.fd, &self.send_msg, libc::MSG_DONTWAIT) };
        if r >= 0 {
            return Ok(true);
        }
        match super::sys::errno() {
            libc::EAGAIN => Ok(false),
            e => Err(e),
        }
    }

    fn prepare_send(&mut self, len: usize) {
        self.send_iov = libc::iovec {
            iov_base: self.reply.as_mut_ptr().cast(),
            iov_len: len,
        };
        self.send_msg.msg_name = (&mut self.addr as *mut libc::sockaddr_storage).cast();
        self.send_msg.msg_namelen = self.recv_msg.msg_namelen;
        self.send_msg.msg_iov = &mut self.send_iov;
        self.send_msg.msg_iovlen = 1;
        self.send_msg.msg_control = std::ptr::null_mut();
        self.send_msg.msg_controllen = 0;
        self.send_msg.msg_flags = 0;
    }

    fn arm_send(&mut self, len: usize) -> io_uring::squeue::Entry {
        self.prepare_send(len);
        opcode::SendMsg::new(types::Fd(self.fd), &self.send_msg).build()
    }
}

/// A ring owned by this thread alone. Deferred task running (Linux 6.1)
/// completes the receives only when the worker asks for completions, in
/// one batch, instead of interrupting it for each arriving datagram; older
/// kernels get a plain ring.
fn new_ring(entries: u32) -> std::io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(entries)
        .or_else(|_| IoUring::new(entries))
}

pub fn run(mut worker: Worker, sockets: Vec<UdpSocket>) {
    // Slots are declared before the ring so that the ring is dropped (and its
    // operations torn down) before the buffers they point into.
    let mut slots: Vec<Box<Slot>> = sockets
        .iter()
        .flat_map(|s| (0..SLOTS_PER_SOCKET).map(move |_| Slot::new(s.as_raw_fd())))
        .collect();
    let entries = (slots.len() * 2).next_power_of_two() as u32;
    let mut ring = match new_ring(entries) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot create io_uring; worker not started");
            return;
        }
    };
    let mut in_flight = 0usize;
    for (i, slot) in slots.iter_mut().enumerate() {
        let sqe = slot.arm_recv().user_data(OP_RECV | i as u64);
        // SAFETY: the entry points into a boxed slot that lives until the
        // ring is gone; the queue was sized for every slot.
        if unsafe { ring.submission().push(&sqe) }.is_ok() {
            in_flight += 1;
        }
    }
    let timeout = types::Timespec::new().nsec(STOP_POLL.as_nanos() as u32);
    let args = types::SubmitArgs::new().timespec(&timeout);
    let mut cancelled = false;
    // Refills for the slots that completed; sized once, reused every pass.
    let mut pending = Vec::<io_uring::squeue::Entry>::with_capacity(slots.len());
    while in_flight > 0 {
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
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "io_uring_enter failed; worker stopping");
                break;
            }
        }
        // Light load (one completion): send at once for the best timestamps.
        // Busy: queue the sends on the ring, where they go out in one batch.
        let direct = ring.completion().len() == 1;
        for cqe in ring.completion() {
            let data = cqe.user_data();
            if data == OP_CANCEL {
                continue;
            }
            in_flight -= 1;
            let Some(slot) = slots.get_mut((data & SLOT_MASK) as usize) else {
                continue;
            };
            let op = data & !SLOT_MASK;
            let next = if cancelled {
                None
            } else if op == OP_RECV {
                on_receive(&mut worker, slot, cqe.result())
            } else {
                if cqe.result() < 0 {
                    worker.count(NtpEvent::SendError);
                }
                None
            };
            if !cancelled {
                let queued_send = match next {
                    Some(len) if direct => match slot.send_now(len) {
                        Ok(true) => None,
                        Ok(false) => Some(len),
                        Err(_) => {
                            worker.count(NtpEvent::SendError);
                            None
                        }
                    },
                    other => other,
                };
                let sqe = match queued_send {
                    Some(len) => slot.arm_send(len).user_data(OP_SEND | (data & SLOT_MASK)),
                    None => slot.arm_recv().user_data(OP_RECV | (data & SLOT_MASK)),
                };
                pending.push(sqe);
            }
        }
        for sqe in pending.drain(..) {
            // SAFETY: as above, the entry points into a live boxed slot.
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                in_flight += 1;
            }
        }
    }
    drop(ring);
    drop(slots);
    drop(sockets);
}

/// Handles a finished receive; returns the reply length to send, if any.
fn on_receive(worker: &mut Worker, slot: &mut Slot, result: i32) -> Option<usize> {
    if result < 0 {
        worker.count(NtpEvent::ReceiveError);
        return None;
    }
    if slot.recv_msg.msg_flags & libc::MSG_TRUNC != 0 {
        worker.count(NtpEvent::Received);
        worker.count(NtpEvent::DropMalformed);
        return None;
    }
    let len = (result as usize).min(MAX_PACKET);
    let received = rx_timestamp(&slot.recv_msg);
    let Slot { request, reply, .. } = slot;
    worker.process(received, &request[..len], reply)
}
