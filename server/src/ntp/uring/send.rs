//! The replies of one pass over the completions, sent in `sendmmsg`
//! batches.

use std::time::Duration;

use ntsd_udp::TxTimestamps;

use super::super::worker::{Replies, Worker};

/// Replies built in one pass over the completions, sent with one
/// `sendmmsg(2)` per socket: at light load a single reply goes out as soon
/// as it is built, as with `sendmsg`; when busy, up to `SEND_BATCH` go in
/// one call. (Queuing each reply as an io_uring `SendMsg` cost more: the
/// kernel copies and checks every message header per operation.)
#[derive(Debug)]
pub(super) struct SendBatch {
    pub(super) replies: Replies,
    /// The socket of the replies in the batch (one socket per batch), and
    /// its index among the worker's sockets.
    fd: i32,
    socket: usize,
    /// Time spent sending since the pass began, when the pass is timed.
    pub(super) sending: Option<Duration>,
}

impl SendBatch {
    pub(super) fn new() -> SendBatch {
        SendBatch {
            replies: Replies::new(),
            fd: -1,
            socket: 0,
            sending: None,
        }
    }

    /// Replies queued.
    pub(super) fn len(&self) -> usize {
        self.replies.len()
    }

    /// Makes room for a reply on `fd`, the worker's socket `socket`,
    /// sending what is queued for another socket or a full batch first.
    pub(super) fn reserve(
        &mut self,
        worker: &mut Worker,
        fd: i32,
        socket: usize,
        stamps: &mut [Option<TxTimestamps>],
    ) {
        if self.replies.is_full() || (!self.replies.is_empty() && self.fd != fd) {
            self.flush(worker, stamps);
        }
        self.fd = fd;
        self.socket = socket;
    }

    /// Sends every queued reply; a datagram the kernel refuses (e.g. an
    /// unreachable peer) is counted and skipped. `stamps` are the transmit
    /// timestamps of each of the worker's sockets.
    pub(super) fn flush(&mut self, worker: &mut Worker, stamps: &mut [Option<TxTimestamps>]) {
        let timed = self.sending.is_some();
        let stamps = stamps.get_mut(self.socket).and_then(Option::as_mut);
        let took = worker.send(self.fd, &mut self.replies, timed, stamps);
        if let (Some(total), Some(t)) = (self.sending.as_mut(), took) {
            *total += t;
        }
    }
}
