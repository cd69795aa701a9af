//! The replies of one pass over the completions, sent in `sendmmsg`
//! batches.

use std::time::Duration;

use super::super::worker::{Replies, Worker};

/// Replies built in one pass over the completions, sent with one
/// `sendmmsg(2)` per socket: at light load a single reply goes out as soon
/// as it is built, as with `sendmsg`; when busy, up to `SEND_BATCH` go in
/// one call. (Queuing each reply as an io_uring `SendMsg` cost more: the
/// kernel copies and checks every message header per operation.)
#[derive(Debug)]
pub(super) struct SendBatch {
    pub(super) replies: Replies,
    /// The socket of the replies in the batch (one socket per batch).
    fd: i32,
    /// Time spent sending since the pass began, when the pass is timed.
    pub(super) sending: Option<Duration>,
}

impl SendBatch {
    pub(super) fn new() -> SendBatch {
        SendBatch {
            replies: Replies::new(),
            fd: -1,
            sending: None,
        }
    }

    /// Replies queued.
    pub(super) fn len(&self) -> usize {
        self.replies.len()
    }

    /// Makes room for a reply on `fd`, sending what is queued for another
    /// socket or a full batch first.
    pub(super) fn reserve(&mut self, worker: &mut Worker, fd: i32) {
        if self.replies.is_full() || (!self.replies.is_empty() && self.fd != fd) {
            self.flush(worker);
        }
        self.fd = fd;
    }

    /// Sends every queued reply; a datagram the kernel refuses (e.g. an
    /// unreachable peer) is counted and skipped.
    pub(super) fn flush(&mut self, worker: &mut Worker) {
        let timed = self.sending.is_some();
        let took = worker.send(self.fd, &mut self.replies, timed);
        if let (Some(total), Some(t)) = (self.sending.as_mut(), took) {
            *total += t;
        }
    }
}
