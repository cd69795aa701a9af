//! Many requests at once: [`Server::handle_batch`].
//!
//! ```text
//! per datagram, in order:  classify ─ plain reply now ─────────────────────┐
//!                                   └ NTS ─┐                               │
//! all NTS of the batch:    open cookies side by side (one master key)      │
//! per NTS datagram:        verify ─ NAK now, or frame (nonces drawn in order)
//! all frames:              seal the new cookies side by side (sealing key) │
//! per framed datagram:     read transmit time, seal reply ─────────────────┤
//!                                                                    actions
//! ```
//!
//! The work under the master keys (opening each request's cookie, sealing
//! every new cookie) is the same key for the whole batch, so it runs as
//! independent AES chains side by side (`siv::BATCH_LANES` at a time)
//! instead of one chain after another. The work under each client's own
//! keys (verifying its request, sealing its reply) stays per datagram.
//! Randomness is drawn in datagram order and each datagram's transmit time
//! is read once, just before its own reply is sealed, so a batch gives the
//! bytes that [`Server::handle_timed`] gives for its datagrams one by one.

use crate::cookie::{open_cookies, seal_cookies, CookieError, CookieKeys, SessionKeys};
use crate::server::{
    frame_reply, nak_reason, nak_reply, plain_reply, verify, Classified, Frame, NtsRequest,
};
use crate::siv::BATCH_LANES;
use crate::{Action, DropReason, NtpTimestamp, Random, Server};

/// One datagram of a batch: when it arrived, its bytes, and the buffer its
/// reply goes into (as long as the request for a full reply).
#[derive(Debug)]
pub struct Datagram<'a> {
    pub received: NtpTimestamp,
    pub request: &'a [u8],
    pub reply: &'a mut [u8],
}

/// The clock of a batch. A closure `FnMut(usize) -> NtpTimestamp` is one
/// that only gives transmit times.
pub trait BatchClock {
    /// The transmit timestamp of datagram `i`, read once per reply, as
    /// late as for one datagram: just before its reply is sealed.
    fn transmit(&mut self, i: usize) -> NtpTimestamp;
    /// Datagram `i`'s NTS reply is sealed (for a caller that learns how
    /// long sealing takes after the transmit time is read).
    fn sealed(&mut self, _i: usize) {}
}

impl<F: FnMut(usize) -> NtpTimestamp> BatchClock for F {
    fn transmit(&mut self, i: usize) -> NtpTimestamp {
        self(i)
    }
}

/// `clock` with the datagram indices of a chunk offset by `base`.
struct Offset<'c, C> {
    clock: &'c mut C,
    base: usize,
}

impl<C: BatchClock> BatchClock for Offset<'_, C> {
    fn transmit(&mut self, i: usize) -> NtpTimestamp {
        self.clock.transmit(self.base + i)
    }
    fn sealed(&mut self, i: usize) {
        self.clock.sealed(self.base + i);
    }
}

impl<K: CookieKeys> Server<'_, K> {
    /// Answers every datagram of `batch`: `actions[i]` is what
    /// [`Server::handle_timed`] returns for `batch[i]` (extra actions are
    /// left alone; missing ones drop the datagrams they would describe).
    /// `clock.transmit(i)` is called once per reply, as late as for one
    /// datagram.
    pub fn handle_batch(
        &self,
        batch: &mut [Datagram<'_>],
        actions: &mut [Action],
        rng: &mut impl Random,
        mut clock: impl BatchClock,
    ) {
        let mut base = 0;
        for (chunk, actions) in batch
            .chunks_mut(BATCH_LANES)
            .zip(actions.chunks_mut(BATCH_LANES))
        {
            let mut offset = Offset {
                clock: &mut clock,
                base,
            };
            self.chunk(chunk, actions, rng, &mut offset);
            base += BATCH_LANES;
        }
    }

    fn chunk(
        &self,
        chunk: &mut [Datagram<'_>],
        actions: &mut [Action],
        rng: &mut impl Random,
        clock: &mut impl BatchClock,
    ) {
        // Per datagram of the chunk: its checked NTS fields, later its
        // frame. Keys stay where `open_cookies` put them, never moved.
        let mut nts: [Option<NtsRequest<'_>>; BATCH_LANES] = Default::default();
        for (i, ((d, slot), action)) in chunk
            .iter_mut()
            .zip(nts.iter_mut())
            .zip(actions.iter_mut())
            .enumerate()
        {
            *action = match self.classify(d.received, d.request, d.reply) {
                Ok(Classified::Plain(response)) => {
                    plain_reply(response, || clock.transmit(i), d.reply)
                        .unwrap_or_else(Action::Ignore)
                }
                Ok(Classified::Nts(n)) => {
                    *slot = Some(n);
                    continue;
                }
                Err(reason) => Action::Ignore(reason),
            };
        }

        // The cookies, side by side.
        let mut cookies: [&[u8]; BATCH_LANES] = [&[]; BATCH_LANES];
        let mut key_of = [usize::MAX; BATCH_LANES];
        let mut n = 0;
        for (slot, key) in nts.iter().zip(key_of.iter_mut()) {
            if let (Some(req), Some(c)) = (slot, cookies.get_mut(n)) {
                *c = req.cookie;
                *key = n;
                n += 1;
            }
        }
        if n == 0 {
            return;
        }
        let mut opened: [Result<SessionKeys, CookieError>; BATCH_LANES] =
            std::array::from_fn(|_| Err(CookieError::BadLength));
        open_cookies(
            self.keys,
            cookies.get(..n).unwrap_or_default(),
            opened.get_mut(..n).unwrap_or_default(),
        );

        // Each request under its own keys: NAK now, or frame the reply.
        let (key_id, master) = self.keys.sealing_key();
        let mut frames: [Option<Frame>; BATCH_LANES] = Default::default();
        for (i, ((((d, req), action), frame), &k)) in chunk
            .iter_mut()
            .zip(&nts)
            .zip(actions.iter_mut())
            .zip(frames.iter_mut())
            .zip(&key_of)
            .enumerate()
        {
            let (Some(req), Some(keys)) = (req, opened.get(k)) else {
                continue;
            };
            let verified = match keys {
                Ok(keys) => verify(d.request, keys, req.fields(), d.reply).map(|w| (keys, w)),
                Err(e) => Err(nak_reason(*e)),
            };
            match verified {
                Ok((keys, wanted)) => match frame_reply(req, keys, wanted, key_id, d.reply, rng) {
                    Ok(f) => *frame = Some(f),
                    Err(_) => *action = Action::Ignore(DropReason::BufferTooSmall),
                },
                Err(reason) => {
                    *action = nak_reply(req, d.received, clock.transmit(i), reason, d.reply)
                        .unwrap_or_else(Action::Ignore);
                }
            }
        }

        // Every new cookie of the chunk, side by side.
        {
            let mut all: [&mut [u8]; BATCH_LANES] = Default::default();
            let mut k = 0;
            for (frame, d) in frames.iter().zip(chunk.iter_mut()) {
                let Some(frame) = frame else {
                    continue;
                };
                for cookie in frame.cookies(d.reply) {
                    if k == BATCH_LANES {
                        seal_cookies(master, &mut all);
                        k = 0;
                    }
                    if let Some(slot) = all.get_mut(k) {
                        *slot = cookie;
                        k += 1;
                    }
                }
            }
            seal_cookies(master, all.get_mut(..k).unwrap_or_default());
        }

        // Each reply sealed, its transmit time read just before.
        for (i, (((frame, d), action), &k)) in frames
            .iter()
            .zip(chunk.iter_mut())
            .zip(actions.iter_mut())
            .zip(&key_of)
            .enumerate()
        {
            if let (Some(frame), Some(Ok(keys))) = (frame, opened.get(k)) {
                *action = frame
                    .seal(keys, d.reply, || clock.transmit(i))
                    .unwrap_or(Action::Ignore(DropReason::BufferTooSmall));
                clock.sealed(i);
            }
        }
    }
}
