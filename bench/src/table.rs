//! A flood thread's table of outstanding requests: fixed slots, each with
//! its request bytes built ahead, matched to replies through the transmit
//! timestamp (random, with the slot index in its low 16 bits), verified,
//! and freed on a reply or after [`LOSS_TIMEOUT`].
//!
//! With `xleave`, every request is in interleaved form (RFC 9769): its
//! origin is the receive timestamp of an earlier reply not named before,
//! and its receive field is the transmit timestamp with [`XLEAVE_MARK`]
//! flipped (slot bits kept), which an interleaved reply carries back as
//! its origin.

use std::collections::VecDeque;
use std::time::Instant;

use nts_proto::client::{ClientError, NONCE_LEN, UNIQUE_ID_LEN};
use nts_proto::packet::{Mode, NtpHeader, HEADER_LEN};
use nts_proto::reader::Reader;
use nts_proto::NtpTimestamp;

use crate::flood::{FloodReport, LOSS_TIMEOUT, SLOT_MASK};
use crate::random::{RandomError, RandomPool};
use crate::session::Session;

/// Flipped in a request's transmit timestamp to make its receive field:
/// different from the transmit, with the same slot bits.
const XLEAVE_MARK: u64 = 1 << 62;

/// Plain NTPv4: a 48-byte server reply whose origin is our transmit.
pub(crate) fn verify_plain(reply: &[u8], transmit: NtpTimestamp) -> Result<(), ClientError> {
    let h = NtpHeader::decode(&mut Reader::new(reply)).ok_or(ClientError::Malformed)?;
    if h.mode != Mode::Server || h.origin != transmit || reply.len() != HEADER_LEN {
        return Err(ClientError::Unsolicited);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Free,
    Ready,
    InFlight,
}

pub(crate) struct Slot {
    pub(crate) state: State,
    pub(crate) socket: u16,
    pub(crate) session: u32,
    pub(crate) len: u32,
    pub(crate) transmit: u64,
    /// The receive field of an interleaved-form request (0: none).
    pub(crate) receive: u64,
    /// Transmit of the last request of this slot counted lost (0: none).
    pub(crate) expired: u64,
    pub(crate) sent_at: Instant,
    pub(crate) unique_id: [u8; UNIQUE_ID_LEN],
}

/// The outstanding-request table and what verifying needs.
pub(crate) struct Table {
    pub(crate) slots: Vec<Slot>,
    /// Request bytes, `stride` per slot.
    pub(crate) bufs: Vec<u8>,
    pub(crate) stride: usize,
    pub(crate) free: Vec<u32>,
    pub(crate) ready: VecDeque<u32>,
    pub(crate) in_flight: usize,
    pub(crate) sessions: Vec<Session>,
    pub(crate) next_session: usize,
    pub(crate) report: FloodReport,
    /// Requests in interleaved form.
    pub(crate) xleave: bool,
    /// Receive timestamps of replies that no request has named yet, oldest
    /// first (at most one per slot).
    pub(crate) fresh: VecDeque<u64>,
}

/// The next session with a cookie, in turn.
fn pick_session(sessions: &[Session], next: &mut usize) -> Option<usize> {
    let n = sessions.len();
    for _ in 0..n {
        let i = *next % n;
        *next = next.wrapping_add(1);
        if sessions.get(i).is_some_and(|s| s.cookies_left() > 0) {
            return Some(i);
        }
    }
    None
}

impl Table {
    pub(crate) fn new(sessions: Vec<Session>, window: usize, xleave: bool) -> Self {
        let stride = sessions
            .iter()
            .map(Session::max_request_len)
            .max()
            .unwrap_or(HEADER_LEN);
        let now = Instant::now();
        let slots = (0..window)
            .map(|_| Slot {
                state: State::Free,
                socket: 0,
                session: 0,
                len: 0,
                transmit: 0,
                receive: 0,
                expired: 0,
                sent_at: now,
                unique_id: [0; UNIQUE_ID_LEN],
            })
            .collect();
        Self {
            slots,
            bufs: vec![0; window * stride],
            stride,
            // Popped from the back: slot 0 first.
            free: (0..window as u32).rev().collect(),
            ready: VecDeque::with_capacity(window),
            in_flight: 0,
            sessions,
            next_session: 0,
            report: FloodReport::default(),
            xleave,
            fresh: VecDeque::with_capacity(if xleave { window } else { 0 }),
        }
    }

    pub(crate) fn request(&self, idx: u32) -> &[u8] {
        let i = idx as usize;
        let len = self.slots.get(i).map_or(0, |s| s.len as usize);
        self.bufs
            .get(i * self.stride..i * self.stride + len)
            .unwrap_or_default()
    }

    /// Builds a request in every free slot (as far as cookies allow).
    pub(crate) fn fill(&mut self, random: &mut RandomPool) -> Result<(), RandomError> {
        while let Some(&idx) = self.free.last() {
            let i = idx as usize;
            let (Some(slot), Some(buf)) = (
                self.slots.get_mut(i),
                self.bufs.get_mut(i * self.stride..(i + 1) * self.stride),
            ) else {
                self.free.pop();
                continue;
            };
            // Random, with the slot index in the low bits; the top bit set
            // keeps it non-zero (and a plausible era-0 timestamp).
            let transmit = (random.u64()? & !SLOT_MASK) | (1 << 63) | u64::from(idx);
            let mut header = NtpHeader::client_request(NtpTimestamp(transmit));
            if self.xleave {
                // Odd, as the server's receive timestamps are: a request in
                // interleaved form even before a reply came back.
                header.origin = NtpTimestamp(self.fresh.pop_front().unwrap_or(1));
                header.receive = NtpTimestamp(transmit ^ XLEAVE_MARK);
            }
            if self.sessions.is_empty() {
                let h = header.to_bytes();
                let Some(dst) = buf.get_mut(..HEADER_LEN) else {
                    break;
                };
                dst.copy_from_slice(&h);
                slot.len = HEADER_LEN as u32;
            } else {
                let Some(s) = pick_session(&self.sessions, &mut self.next_session) else {
                    break;
                };
                let random = random.bytes::<{ UNIQUE_ID_LEN + NONCE_LEN }>()?;
                let built = self
                    .sessions
                    .get_mut(s)
                    .map(|session| session.build_request_with(&header, &random, buf));
                let Some(Ok(len)) = built else {
                    // Cannot happen with buffers sized for the session; the
                    // cookie is spent, so this ends.
                    self.report.errors += 1;
                    continue;
                };
                slot.len = len as u32;
                slot.session = s as u32;
                let (uid, _) = random.split_at(UNIQUE_ID_LEN);
                slot.unique_id.copy_from_slice(uid);
            }
            slot.transmit = transmit;
            slot.receive = header.receive.0;
            slot.state = State::Ready;
            self.free.pop();
            self.ready.push_back(idx);
        }
        Ok(())
    }

    pub(crate) fn on_reply(&mut self, reply: Option<&[u8]>, socket: usize, now: Instant) {
        let origin = reply
            .and_then(|r| r.get(24..32))
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        let (Some(reply), Some(origin)) = (reply, origin) else {
            self.report.invalid += 1;
            return;
        };
        let idx = (origin & SLOT_MASK) as usize;
        let Some(slot) = self.slots.get_mut(idx) else {
            self.report.invalid += 1;
            return;
        };
        // An interleaved reply names the request's receive field instead.
        let interleaved = self.xleave && slot.receive == origin && origin != 0;
        if slot.state != State::InFlight
            || (slot.transmit != origin && !interleaved)
            || usize::from(slot.socket) != socket
        {
            let expired = if self.xleave { origin ^ XLEAVE_MARK } else { 0 };
            if origin != 0 && (slot.expired == origin || slot.expired == expired) {
                self.report.late += 1;
                slot.expired = 0;
            } else {
                self.report.invalid += 1;
            }
            return;
        }
        let transmit = NtpTimestamp(origin);
        let verdict = if self.sessions.is_empty() {
            verify_plain(reply, transmit)
        } else {
            match self.sessions.get_mut(slot.session as usize) {
                Some(s) => s.verify_reply(reply, transmit, &slot.unique_id).map(|_| ()),
                None => Err(ClientError::Unsolicited),
            }
        };
        match verdict {
            Ok(()) => {
                self.report.valid += 1;
                self.report.interleaved += u64::from(interleaved);
                if self.xleave && self.fresh.len() < self.fresh.capacity() {
                    let receive = reply.get(32..40).and_then(|b| <[u8; 8]>::try_from(b).ok());
                    self.fresh.extend(receive.map(u64::from_be_bytes));
                }
                let us = now.saturating_duration_since(slot.sent_at).as_micros();
                self.report
                    .latency
                    .record(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Err(ClientError::Nak) => self.report.naks += 1,
            Err(_) => self.report.invalid += 1,
        }
        slot.state = State::Free;
        self.free.push(idx as u32);
        self.in_flight -= 1;
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.state == State::InFlight
                && now.saturating_duration_since(slot.sent_at) >= LOSS_TIMEOUT
            {
                self.report.lost += 1;
                slot.expired = slot.transmit;
                slot.state = State::Free;
                self.free.push(i as u32);
                self.in_flight -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_replies_need_mode_4_our_origin_and_48_bytes() {
        let t = NtpTimestamp(0x8000_0000_0000_0042);
        let mut reply = NtpHeader::client_request(NtpTimestamp(5)).to_bytes();
        reply[0] = 0x24;
        reply[24..32].copy_from_slice(&t.0.to_be_bytes());
        assert_eq!(verify_plain(&reply, t), Ok(()));
        assert!(verify_plain(&reply, NtpTimestamp(1)).is_err());
        assert!(verify_plain(&reply[..47], t).is_err());
        let mut long = reply.to_vec();
        long.extend_from_slice(&[0; 4]);
        assert!(verify_plain(&long, t).is_err());
        reply[0] = 0x23;
        assert!(verify_plain(&reply, t).is_err());
    }

    /// With `xleave`, requests are in interleaved form: the first names
    /// no reply yet (origin 1), later ones the receive timestamp of a
    /// reply not named before; a reply whose origin is the request's
    /// receive field counts as interleaved.
    #[test]
    fn xleave_requests_name_earlier_replies_and_match_interleaved_ones() {
        let mut t = Table::new(Vec::new(), 2, true);
        let mut random = RandomPool::new();
        t.fill(&mut random).unwrap();
        let header =
            |t: &Table, idx: u32| NtpHeader::decode(&mut Reader::new(t.request(idx))).unwrap();
        let first = header(&t, 0);
        assert_eq!(first.origin, NtpTimestamp(1));
        assert_ne!(first.receive, first.transmit);
        assert_eq!(first.receive.0 & SLOT_MASK, 0);
        // A basic reply to slot 0 (its receive timestamp 0x...1001).
        t.ready.clear();
        t.slots[0].state = State::InFlight;
        t.in_flight = 1;
        let mut reply = first;
        reply.mode = Mode::Server;
        reply.origin = first.transmit;
        reply.receive = NtpTimestamp(0xe9a0_0000_0000_1001);
        t.on_reply(Some(&reply.to_bytes()), 0, Instant::now());
        assert_eq!((t.report.valid, t.report.interleaved), (1, 0));
        assert_eq!(t.fresh, [0xe9a0_0000_0000_1001]);
        // The next request names it; its interleaved reply matches.
        t.fill(&mut random).unwrap();
        let second = header(&t, 0);
        assert_eq!(second.origin, NtpTimestamp(0xe9a0_0000_0000_1001));
        t.slots[0].state = State::InFlight;
        t.in_flight = 1;
        reply.origin = second.receive;
        t.on_reply(Some(&reply.to_bytes()), 0, Instant::now());
        assert_eq!(
            (t.report.valid, t.report.interleaved, t.report.invalid),
            (2, 1, 0)
        );
    }
}
