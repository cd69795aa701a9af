//! The replies of one pass over the completions, sent in `sendmmsg`
//! batches.
#![allow(unsafe_code)]

use std::time::Duration;

use ntsd_udp::{attach_source, empty_storage, point_reply, SourceBuf};

use super::super::worker::{Worker, MAX_PACKET};
use super::{NAME_LEN, SEND_BATCH};

/// Replies built in one pass over the completions, sent with one
/// `sendmmsg(2)` per socket: at light load a single reply goes out as soon
/// as it is built, as with `sendmsg`; when busy, up to `SEND_BATCH` go in
/// one call. (Queuing each reply as an io_uring `SendMsg` cost more: the
/// kernel copies and checks every message header per operation.)
pub(super) struct SendBatch {
    pub(super) replies: Box<[[u8; MAX_PACKET]; SEND_BATCH]>,
    pub(super) addrs: Box<[libc::sockaddr_storage; SEND_BATCH]>,
    pub(super) iov: Box<[libc::iovec; SEND_BATCH]>,
    pub(super) msgs: Box<[libc::mmsghdr; SEND_BATCH]>,
    /// The source-address control message of each reply (wildcard sockets).
    pub(super) sources: Box<[SourceBuf; SEND_BATCH]>,
    /// The socket of the replies in the batch (one socket per batch).
    pub(super) fd: i32,
    pub(super) len: usize,
    /// Time spent sending since the pass began, when the pass is timed.
    pub(super) sending: Option<Duration>,
}

impl SendBatch {
    pub(super) fn new() -> SendBatch {
        SendBatch {
            replies: Box::new([[0; MAX_PACKET]; SEND_BATCH]),
            addrs: Box::new([empty_storage(); SEND_BATCH]),
            // SAFETY: iovec and mmsghdr are plain old data; zero is valid.
            // Entries are pointed at the batch's own buffers in `commit`.
            iov: Box::new(unsafe { std::mem::zeroed() }),
            msgs: Box::new(unsafe { std::mem::zeroed() }),
            sources: Box::new([[0; 6]; SEND_BATCH]),
            fd: -1,
            len: 0,
            sending: None,
        }
    }

    /// Makes room for a reply on `fd`, sending what is queued for another
    /// socket or a full batch first.
    pub(super) fn reserve(&mut self, worker: &mut Worker, fd: i32) {
        if self.len == SEND_BATCH || (self.len > 0 && self.fd != fd) {
            self.flush(worker);
        }
        self.fd = fd;
    }

    /// The buffer for the next reply.
    pub(super) fn next_reply(&mut self) -> &mut [u8; MAX_PACKET] {
        &mut self.replies[self.len.min(SEND_BATCH - 1)]
    }

    /// Queues the reply built in `next_reply`, `len` bytes, to `name`.
    pub(super) fn commit(&mut self, len: usize, name: &[u8], local: Option<std::net::IpAddr>) {
        let i = self.len.min(SEND_BATCH - 1);
        let namelen = name.len().min(NAME_LEN);
        // SAFETY: sockaddr_storage is plain old data of NAME_LEN bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                name.as_ptr(),
                (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast::<u8>(),
                namelen,
            );
        }
        let Some(reply) = self.replies[i].get_mut(..len) else {
            return;
        };
        point_reply(
            &mut self.msgs[i],
            &mut self.iov[i],
            reply,
            &mut self.addrs[i],
            namelen as libc::socklen_t,
        );
        if let Some(local) = local {
            attach_source(&mut self.msgs[i], &mut self.sources[i], local);
        }
        self.len = i + 1;
    }

    /// Sends every queued reply; a datagram the kernel refuses (e.g. an
    /// unreachable peer) is counted and skipped.
    pub(super) fn flush(&mut self, worker: &mut Worker) {
        let timed = self.sending.is_some();
        // SAFETY: `msgs[..len]` point at replies and addresses owned by the
        // batch, untouched until the call returns.
        let took = unsafe { worker.send(self.fd, &mut self.msgs[..self.len], timed) };
        if let (Some(total), Some(t)) = (self.sending.as_mut(), took) {
            *total += t;
        }
        self.len = 0;
    }
}
