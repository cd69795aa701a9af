//! One worker's saved timestamps for interleaved mode (RFC 9769): the
//! transmit timestamp of each reply to a request in interleaved form, keyed
//! by the receive timestamp that reply carried, which is what the client's
//! next request names as its origin.
//!
//! ```text
//! handle_interleaved ─► exchange(origin, receive): look origin up, use it once
//! Worker::process    ─► save(receive, daemon T3)  (Pending until the kernel's comes)
//! TxTimestamps::read ─► update(receive, kernel T3) ─► Valid | Lost
//! ```
//!
//! The table is a ring of fixed size, allocated at start and kept sorted by
//! receive timestamp, as chrony's `NtpTimestampMap` is: receive timestamps
//! grow, so a save appends and evicts the oldest, and a lookup is a binary
//! search. Nothing is allocated, locked or logged per packet. One client
//! always reaches one worker (steering by source address), so no table is
//! shared between threads.
//!
//! A pair goes out only with the kernel's transmit timestamp (or, where the
//! kernel gives none, the daemon's): a timestamp that does not come back
//! leaves its entry `Lost`, and the next request naming it gets a basic
//! reply, never a wrong one.

use nts_proto::{Interleave, NtpTimestamp};

/// A saved receive timestamp older than the newest by more than this (in
/// NTP units, 2^-32 s) means the clock stepped back: the table is emptied
/// rather than filled out of order.
const STEP_BACK: u64 = 1 << 32;
/// A save older than the newest entry is inserted in order only when it
/// lands among the newest this many (datagrams of one pass, from several
/// sockets); older ones are not saved.
const INSERT_WINDOW: usize = 64;
/// A kernel transmit timestamp must follow the receive timestamp by at most
/// this much (1 s); anything else is not the reply's and is not used.
const MAX_TX_DELAY: u64 = 1 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the kernel's transmit timestamp.
    Pending,
    /// Holds the transmit timestamp to send: the kernel's.
    Kernel,
    /// Holds the transmit timestamp to send: the daemon's (a socket
    /// without kernel transmit timestamps).
    Daemon,
    /// Sent once, its timestamp lost, or its key saved twice: never sent.
    Spent,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    receive: u64,
    transmit: u64,
    state: State,
}

/// What the last [`Interleave::exchange`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Exchange {
    /// The reply's receive timestamp, to save its transmit timestamp under.
    pub(super) save: Option<NtpTimestamp>,
    /// The reply carries a saved transmit timestamp.
    pub(super) interleaved: bool,
    /// That timestamp was the kernel's.
    pub(super) kernel: bool,
}

/// What a kernel transmit timestamp did to the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Update {
    /// The entry now holds the kernel's timestamp.
    Kernel,
    /// No timestamp came, or one that cannot be the reply's: the entry is
    /// never sent.
    Lost,
    /// The entry is gone already (evicted).
    Gone,
}

/// A worker's saved timestamps.
#[derive(Debug)]
pub(super) struct SavedTimestamps {
    entries: Box<[Entry]>,
    /// Index of the oldest entry; entries are `first..first + len`, mod
    /// capacity, oldest first.
    first: usize,
    len: usize,
    /// The oldest entry's receive key (kept here: every search starts
    /// from it, and its entry is the one least likely in the cache).
    oldest: u64,
    pub(super) last: Exchange,
}

impl SavedTimestamps {
    /// A table of `capacity` entries (at least 1).
    pub(super) fn new(capacity: usize) -> SavedTimestamps {
        let capacity = capacity.max(1);
        let empty = Entry {
            receive: 0,
            transmit: 0,
            state: State::Spent,
        };
        SavedTimestamps {
            entries: vec![empty; capacity].into_boxed_slice(),
            first: 0,
            len: 0,
            oldest: 0,
            last: Exchange::default(),
        }
    }

    /// Bytes one entry costs.
    pub(super) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

    /// Entries held.
    pub(super) fn held(&self) -> usize {
        self.len
    }

    /// Seconds between the oldest and the newest entry.
    pub(super) fn span_seconds(&self) -> u64 {
        // The oldest key is kept in `oldest`: its entry is likely cold.
        match self.len.checked_sub(1).and_then(|i| self.at(i)) {
            Some(new) => new.receive.wrapping_sub(self.oldest) >> 32,
            None => 0,
        }
    }

    /// Forgets the last exchange (before each request).
    #[inline]
    pub(super) fn begin(&mut self) {
        self.last = Exchange::default();
    }

    fn slot(&self, i: usize) -> usize {
        (self.first + i) % self.entries.len()
    }

    fn at(&self, i: usize) -> Option<&Entry> {
        (i < self.len).then(|| &self.entries[self.slot(i)])
    }

    /// The receive key of the entry at position `i`, as an offset from the
    /// oldest entry's: offsets grow with the positions, across an era too.
    fn offset(&self, i: usize, oldest: u64) -> u64 {
        self.entries[self.slot(i)].receive.wrapping_sub(oldest)
    }

    /// The position of `receive` among the entries, or where it would go.
    ///
    /// Receive timestamps grow at the rate requests arrive, so where a key
    /// lies between two entries predicts its position: an interpolation
    /// step, alternating with halving so that uneven arrivals still take
    /// at most twice the halving's steps. A table of tens of thousands of
    /// entries is larger than the caches, and each step is a cache miss.
    fn find(&self, receive: u64) -> Result<usize, usize> {
        if self.len == 0 {
            return Err(0);
        }
        let oldest = self.oldest;
        let key = receive.wrapping_sub(oldest);
        let (mut lo, mut hi) = (0, self.len - 1);
        let (mut k_lo, mut k_hi) = (0, self.offset(hi, oldest));
        if key > k_hi {
            return Err(self.len);
        }
        let mut interpolate = true;
        loop {
            if key == k_lo {
                return Ok(lo);
            }
            if key == k_hi {
                return Ok(hi);
            }
            if hi - lo <= 1 {
                return Err(hi);
            }
            // k_lo < key < k_hi here.
            let mid = if interpolate {
                let span = u128::from(k_hi - k_lo).max(1);
                let guess = u128::from(key - k_lo) * (hi - lo) as u128 / span;
                lo + (guess as usize).clamp(1, hi - lo - 1)
            } else {
                lo + (hi - lo) / 2
            };
            interpolate = !interpolate;
            let k = self.offset(mid, oldest);
            match k.cmp(&key) {
                std::cmp::Ordering::Equal => return Ok(mid),
                std::cmp::Ordering::Less => (lo, k_lo) = (mid, k),
                std::cmp::Ordering::Greater => (hi, k_hi) = (mid, k),
            }
        }
    }

    /// Whether `receive` is before the oldest entry.
    fn before_oldest(&self, receive: u64) -> bool {
        self.len > 0 && (receive.wrapping_sub(self.oldest) as i64) < 0
    }

    /// Saves `transmit` under `receive`, `Pending` until the kernel's
    /// timestamp comes when `pending`, else `Valid` at once (a socket
    /// without kernel transmit timestamps). Returns whether it was saved:
    /// a key saved twice disables both (neither reply could be told from
    /// the other), and one far older than the rest is dropped.
    pub(super) fn save(
        &mut self,
        receive: NtpTimestamp,
        transmit: NtpTimestamp,
        pending: bool,
    ) -> bool {
        let receive = receive.0;
        let state = if pending {
            State::Pending
        } else {
            State::Daemon
        };
        let entry = Entry {
            receive,
            transmit: transmit.0,
            state,
        };
        let newest = self
            .len
            .checked_sub(1)
            .and_then(|i| self.at(i))
            .map(|e| e.receive);
        match newest {
            None => return self.push(entry),
            Some(n) if (receive.wrapping_sub(n) as i64) > 0 => return self.push(entry),
            Some(n) if n.wrapping_sub(receive) > STEP_BACK => {
                self.len = 0;
                return self.push(entry);
            }
            Some(_) => {}
        }
        if self.before_oldest(receive) {
            return false;
        }
        match self.find(receive) {
            Ok(i) => {
                let s = self.slot(i);
                self.entries[s].state = State::Spent;
                false
            }
            Err(i) if self.len - i <= INSERT_WINDOW => {
                self.insert(i, entry);
                true
            }
            Err(_) => false,
        }
    }

    fn push(&mut self, entry: Entry) -> bool {
        if self.len == self.entries.len() {
            self.first = self.slot(1);
            self.len -= 1;
        }
        let s = self.slot(self.len);
        self.entries[s] = entry;
        self.len += 1;
        self.oldest = self.entries[self.first].receive;
        true
    }

    /// Inserts at position `i`, moving the newer entries up by one (at
    /// most [`INSERT_WINDOW`] of them); a full table drops its oldest.
    fn insert(&mut self, mut i: usize, entry: Entry) {
        if self.len == self.entries.len() {
            self.first = self.slot(1);
            self.len -= 1;
            i = i.saturating_sub(1);
        }
        let mut j = self.len;
        while j > i {
            let (to, from) = (self.slot(j), self.slot(j - 1));
            self.entries[to] = self.entries[from];
            j -= 1;
        }
        let s = self.slot(i);
        self.entries[s] = entry;
        self.len += 1;
        self.oldest = self.entries[self.first].receive;
    }

    /// The kernel's transmit timestamp of the reply saved under `receive`
    /// (`None`: it did not come back).
    pub(super) fn update(&mut self, receive: u64, transmit: Option<NtpTimestamp>) -> Update {
        let Ok(i) = self.find(receive) else {
            return Update::Gone;
        };
        let s = self.slot(i);
        let e = &mut self.entries[s];
        if e.state != State::Pending {
            return Update::Gone;
        }
        match transmit {
            Some(t) if t.0.wrapping_sub(receive) <= MAX_TX_DELAY => {
                // The mark of interleaved mode: transmit timestamps are even.
                e.transmit = t.0 & !1;
                e.state = State::Kernel;
                Update::Kernel
            }
            _ => {
                e.state = State::Spent;
                Update::Lost
            }
        }
    }
}

impl Interleave for SavedTimestamps {
    #[inline]
    fn exchange(&mut self, origin: NtpTimestamp, receive: NtpTimestamp) -> Option<NtpTimestamp> {
        self.last.save = Some(receive);
        let i = self.find(origin.0).ok()?;
        let s = self.slot(i);
        let e = &mut self.entries[s];
        let kernel = match e.state {
            State::Kernel => true,
            State::Daemon => false,
            State::Pending | State::Spent => return None,
        };
        // RFC 9769: a saved transmit timestamp goes out once.
        e.state = State::Spent;
        self.last.interleaved = true;
        self.last.kernel = kernel;
        Some(NtpTimestamp(e.transmit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1 << 32;

    fn ts(v: u64) -> NtpTimestamp {
        NtpTimestamp(v)
    }

    /// Receive key `n` of a run: odd, a millisecond apart.
    fn rx(n: u64) -> NtpTimestamp {
        ts(0xe9a0_0000_0000_0001 + n * (S / 1000) * 2)
    }

    #[test]
    fn a_saved_pair_is_found_once() {
        let mut t = SavedTimestamps::new(8);
        assert!(t.save(rx(1), ts(rx(1).0 + 100), false));
        assert_eq!(t.exchange(rx(1), rx(2)), Some(ts(rx(1).0 + 100)));
        assert!(t.last.interleaved);
        assert_eq!(t.last.save, Some(rx(2)));
        t.begin();
        assert_eq!(t.exchange(rx(1), rx(3)), None, "used twice");
        assert!(!t.last.interleaved);
        assert_eq!(t.exchange(rx(7), rx(3)), None, "never saved");
    }

    /// A pending entry is not sent until the kernel's timestamp comes; a
    /// lost one never is, and a timestamp that cannot be the reply's (before
    /// the request, or a second later) counts as lost.
    #[test]
    fn a_lost_transmit_timestamp_gives_a_basic_reply() {
        let mut t = SavedTimestamps::new(8);
        for n in 1..=4 {
            t.save(rx(n), ts(rx(n).0 + 10), true);
        }
        assert_eq!(t.exchange(rx(1), rx(9)), None, "still pending");
        let kernel = ts(rx(1).0 + 5_000);
        assert_eq!(t.update(rx(1).0, Some(kernel)), Update::Kernel);
        assert_eq!(t.update(rx(2).0, None), Update::Lost);
        assert_eq!(t.update(rx(3).0, Some(ts(rx(3).0 - 10))), Update::Lost);
        assert_eq!(t.update(rx(4).0, Some(ts(rx(4).0 + 2 * S))), Update::Lost);
        assert_eq!(t.update(rx(4).0, Some(ts(rx(4).0 + 1))), Update::Gone);
        assert_eq!(t.exchange(rx(1), rx(9)), Some(ts(kernel.0 & !1)));
        assert!(t.last.kernel);
        for n in 2..=4 {
            assert_eq!(t.exchange(rx(n), rx(9)), None, "entry {n}");
        }
    }

    /// A full table drops its oldest entries: their clients get a basic
    /// reply, the newest still an interleaved one, and memory stays fixed.
    #[test]
    fn a_full_table_drops_the_oldest() {
        let mut t = SavedTimestamps::new(4);
        for n in 0..10 {
            assert!(t.save(rx(n), ts(rx(n).0 + 1), false));
        }
        assert_eq!(t.held(), 4);
        assert_eq!(t.entries.len(), 4);
        assert_eq!(SavedTimestamps::ENTRY_BYTES, 24);
        for n in 0..6 {
            assert_eq!(t.exchange(rx(n), rx(20)), None, "evicted {n}");
        }
        for n in 6..10 {
            assert!(t.exchange(rx(n), rx(20)).is_some(), "kept {n}");
        }
        assert_eq!(t.update(rx(0).0, Some(rx(0))), Update::Gone);
    }

    /// Saves slightly out of order (several sockets in one pass) land in
    /// order; a key saved twice disables it; a save far older than the
    /// table is dropped; a step back of the clock empties the table.
    #[test]
    fn out_of_order_duplicate_and_stepped_back_saves() {
        let mut t = SavedTimestamps::new(16);
        for n in [1, 2, 4, 5] {
            t.save(rx(n), ts(rx(n).0 + 1), false);
        }
        assert!(t.save(rx(3), ts(rx(3).0 + 1), false));
        let keys: Vec<u64> = (0..t.held()).map(|i| t.at(i).unwrap().receive).collect();
        assert_eq!(keys, [1, 2, 3, 4, 5].map(|n| rx(n).0));
        assert!(!t.save(rx(4), ts(rx(4).0 + 2), false), "a key saved twice");
        assert_eq!(t.exchange(rx(4), rx(9)), None, "…is never sent");
        assert!(!t.save(rx(0), ts(1), false), "older than the table");
        assert_eq!(t.span_seconds(), 0);
        let back = ts(rx(1).0 - 5 * S);
        assert!(t.save(back, ts(back.0 + 1), false));
        assert_eq!(t.held(), 1, "a step back empties the table");
        assert!(t.exchange(back, rx(9)).is_some());
    }

    /// The interpolating search finds every key and every gap as a plain
    /// scan does, for evenly and unevenly spaced keys, across a wrapped
    /// ring and an NTP era.
    #[test]
    fn find_agrees_with_a_scan() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (start, spread) in [(1u64, 1_000u64), (u64::MAX - 50_000, 1_000), (7, 1 << 40)] {
            let mut t = SavedTimestamps::new(300);
            let mut k = start | 1;
            for _ in 0..500 {
                // Bursts and pauses: gaps from 2 to `spread`, sometimes 1000x more.
                let gap = 2 + next() % spread * if next() % 10 == 0 { 1000 } else { 1 };
                k = k.wrapping_add(gap & !1);
                t.save(ts(k), ts(k.wrapping_add(9)), false);
            }
            let keys: Vec<u64> = (0..t.held()).map(|i| t.at(i).unwrap().receive).collect();
            let oldest = keys[0];
            for (i, &key) in keys.iter().enumerate() {
                assert_eq!(t.find(key), Ok(i));
                let between = key.wrapping_add(1);
                let want = keys
                    .iter()
                    .filter(|&&x| x.wrapping_sub(oldest) < between.wrapping_sub(oldest))
                    .count();
                assert_eq!(t.find(between), Err(want), "gap after {i}");
            }
            assert_eq!(
                t.find(keys[keys.len() - 1].wrapping_add(2)),
                Err(keys.len())
            );
        }
    }

    #[test]
    fn the_span_is_oldest_to_newest() {
        let mut t = SavedTimestamps::new(8);
        t.save(ts(100 * S + 1), ts(100 * S + 3), false);
        t.save(ts(160 * S + 1), ts(160 * S + 3), false);
        assert_eq!((t.held(), t.span_seconds()), (2, 60));
    }
}
