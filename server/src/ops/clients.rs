//! The client log: what each worker saw of each client address, in a table
//! of fixed size that the worker writes and `/clients` reads, as chrony's
//! `clientlog.c` keeps for `chronyc clients`.
//!
//! ```text
//! Worker::process ─► ClientLog::hit(ip, now) ─► index ─► note(index, nts, interleaved)
//!                                  └► dropped_one(index) (over the rate limit)
//! GET /clients ─► ClientLog::snapshot (every worker) ─► report, sorted by packets
//! ```
//!
//! Each record is one cache line of relaxed atomics behind a sequence
//! number: the worker (its only writer) bumps the number to odd, writes,
//! and bumps it to even; a reader retries a record that changed under it.
//! So the hot path takes no lock and makes no syscall, and a reader never
//! sees half of two clients. A full bucket replaces its least recently
//! seen record, which is counted as a dropped record (chrony's "Client log
//! records dropped").

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{
    fence, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};

/// Records a lookup may probe: a client lives in one of this many
/// consecutive slots.
const WAYS: usize = 8;
/// The interval average moves by 1/2^SHIFT of each new interval.
const SHIFT: u32 = 3;
/// NTP timestamp units per second.
const SECOND: u64 = 1 << 32;

/// One client's record.
#[derive(Debug, Default)]
#[repr(C, align(64))]
struct Record {
    /// Even when stable, odd while the worker writes.
    seq: AtomicU32,
    /// NTP requests (not refused by the access list).
    hits: AtomicU32,
    /// The address, IPv4 mapped into IPv6; 0 = free.
    addr: [AtomicU64; 2],
    /// The receive time of the last request (NTP format).
    last: AtomicU64,
    /// The average interval between requests, NTP units (2^-32 s).
    interval: AtomicU64,
    /// Requests dropped by the rate limit.
    drops: AtomicU32,
    /// Interleaved replies.
    interleaved: AtomicU32,
    /// NTS-authenticated replies.
    nts: AtomicU32,
}

/// What a record says, read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Client {
    pub(crate) addr: IpAddr,
    pub(crate) hits: u32,
    pub(crate) drops: u32,
    pub(crate) interleaved: u32,
    pub(crate) nts: u32,
    /// log2 of the average interval in seconds; `None` after one request.
    pub(crate) interval: Option<i8>,
    /// Seconds since the last request.
    pub(crate) last_ago: u64,
}

/// One worker's client log.
#[derive(Debug)]
pub(crate) struct ClientLog {
    records: Box<[Record]>,
    /// Hash keys, drawn at start, so that no one can aim addresses at one
    /// bucket.
    keys: [u64; 2],
    /// Records replaced to make room for another address.
    dropped: AtomicU64,
}

impl ClientLog {
    /// Bytes one record costs.
    pub(crate) const RECORD_BYTES: usize = std::mem::size_of::<Record>();

    /// A log of `records` records (at least one bucket; 0 = none, a log
    /// that records nothing), hashed with `keys`.
    pub(crate) fn new(records: usize, keys: [u64; 2]) -> ClientLog {
        let n = if records == 0 {
            0
        } else {
            records.max(WAYS) / WAYS * WAYS
        };
        ClientLog {
            records: (0..n).map(|_| Record::default()).collect(),
            keys,
            dropped: AtomicU64::new(0),
        }
    }

    /// Records the table holds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.records.len()
    }

    /// Records replaced to make room.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    fn bucket(&self, addr: [u64; 2]) -> usize {
        let buckets = (self.records.len() / WAYS) as u64;
        let [k0, k1] = self.keys;
        // Two keyed multiplications folded together; enough to spread
        // addresses that cannot see the keys, and a few cycles.
        let h = (addr[0] ^ k0).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ (addr[1] ^ k1).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        let h = h ^ (h >> 29);
        ((u128::from(h) * u128::from(buckets)) >> 64) as usize * WAYS
    }

    /// A request from `ip` received at `now`: counts it and returns its
    /// record, for [`ClientLog::note`] and [`ClientLog::dropped_one`].
    #[inline]
    pub(crate) fn hit(&self, ip: IpAddr, now: u64) -> Option<usize> {
        if self.records.is_empty() {
            return None;
        }
        let addr = key(ip);
        let start = self.bucket(addr);
        let ways = self.records.get(start..start + WAYS)?;
        let found = ways
            .iter()
            .position(|r| r.addr[0].load(Relaxed) == addr[0] && r.addr[1].load(Relaxed) == addr[1]);
        let i = match found {
            Some(i) => i,
            None => {
                // A free record, else the one seen least recently.
                let (i, r) = ways.iter().enumerate().min_by_key(|(_, r)| {
                    let free = r.addr[0].load(Relaxed) == 0 && r.addr[1].load(Relaxed) == 0;
                    (!free, r.last.load(Relaxed))
                })?;
                if r.hits.load(Relaxed) > 0 {
                    self.dropped.fetch_add(1, Relaxed);
                }
                write(r, |r| {
                    r.addr[0].store(addr[0], Relaxed);
                    r.addr[1].store(addr[1], Relaxed);
                    r.hits.store(0, Relaxed);
                    r.drops.store(0, Relaxed);
                    r.interleaved.store(0, Relaxed);
                    r.nts.store(0, Relaxed);
                    r.interval.store(0, Relaxed);
                    r.last.store(0, Relaxed);
                });
                i
            }
        };
        let r = ways.get(i)?;
        write(r, |r| {
            let last = r.last.load(Relaxed);
            if last != 0 {
                let gap = now.wrapping_sub(last);
                // A clock stepping back gives no interval.
                if (gap as i64) > 0 {
                    let avg = r.interval.load(Relaxed);
                    let avg = if avg == 0 {
                        gap
                    } else if gap > avg {
                        avg + ((gap - avg) >> SHIFT)
                    } else {
                        avg - ((avg - gap) >> SHIFT)
                    };
                    r.interval.store(avg, Relaxed);
                }
            }
            r.last.store(now, Relaxed);
            r.hits
                .store(r.hits.load(Relaxed).saturating_add(1), Relaxed);
        });
        Some(start + i)
    }

    /// The reply to the request just logged at `index`.
    #[inline]
    pub(crate) fn note(&self, index: usize, nts: bool, interleaved: bool) {
        if !nts && !interleaved {
            return;
        }
        if let Some(r) = self.records.get(index) {
            write(r, |r| {
                if nts {
                    r.nts.store(r.nts.load(Relaxed).saturating_add(1), Relaxed);
                }
                if interleaved {
                    r.interleaved
                        .store(r.interleaved.load(Relaxed).saturating_add(1), Relaxed);
                }
            });
        }
    }

    /// The request just logged at `index` was dropped by the rate limit.
    #[inline]
    pub(crate) fn dropped_one(&self, index: usize) {
        if let Some(r) = self.records.get(index) {
            write(r, |r| {
                r.drops
                    .store(r.drops.load(Relaxed).saturating_add(1), Relaxed)
            });
        }
    }

    /// Every client in the log, as of `now` (NTP format). Reads each
    /// record whole (retrying one the worker is writing), never blocks the
    /// worker.
    pub(crate) fn snapshot(&self, now: u64, out: &mut Vec<Client>) {
        for r in self.records.iter() {
            if let Some(c) = read(r, now) {
                out.push(c);
            }
        }
    }
}

/// The most clients one report lists.
pub(crate) const MAX_REPORT: usize = 1 << 20;

/// The report `/clients` serves: every client of every worker's log (an
/// address that two workers saw is summed), sorted by packets, the first
/// `top`; one line a client, the columns named in the first line.
pub(crate) fn report(logs: &[std::sync::Arc<ClientLog>], now: u64, top: usize) -> String {
    let mut all = Vec::new();
    for log in logs {
        log.snapshot(now, &mut all);
    }
    all.sort_by_key(|c| c.addr);
    let mut merged: Vec<Client> = Vec::with_capacity(all.len());
    for c in all {
        match merged.last_mut() {
            Some(m) if m.addr == c.addr => {
                if c.hits > m.hits {
                    m.interval = c.interval;
                }
                m.hits = m.hits.saturating_add(c.hits);
                m.drops = m.drops.saturating_add(c.drops);
                m.interleaved = m.interleaved.saturating_add(c.interleaved);
                m.nts = m.nts.saturating_add(c.nts);
                m.last_ago = m.last_ago.min(c.last_ago);
            }
            _ => merged.push(c),
        }
    }
    merged.sort_by(|a, b| b.hits.cmp(&a.hits).then(a.addr.cmp(&b.addr)));
    let mut out = String::from("# address ntp drop interval last interleaved nts\n");
    for c in merged.iter().take(top.min(MAX_REPORT)) {
        let interval = c.interval.map_or_else(|| "-".to_owned(), |i| i.to_string());
        out.push_str(&format!(
            "{} {} {} {} {} {} {}\n",
            c.addr, c.hits, c.drops, interval, c.last_ago, c.interleaved, c.nts
        ));
    }
    out
}

/// An address as the log keys it: IPv4 mapped into IPv6, in two words.
fn key(ip: IpAddr) -> [u64; 2] {
    let v6 = match ip.to_canonical() {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let n = u128::from(v6);
    [(n >> 64) as u64, n as u64]
}

/// The worker's write of one record: sequence odd, the change, sequence
/// even again.
#[inline]
fn write(r: &Record, f: impl FnOnce(&Record)) {
    let s = r.seq.load(Relaxed);
    r.seq.store(s.wrapping_add(1), Relaxed);
    fence(Release);
    f(r);
    r.seq.store(s.wrapping_add(2), Release);
}

/// A reader's copy of one record; `None` for a free one.
fn read(r: &Record, now: u64) -> Option<Client> {
    for _ in 0..64 {
        let s = r.seq.load(Acquire);
        if s % 2 == 1 {
            std::hint::spin_loop();
            continue;
        }
        let addr = [r.addr[0].load(Relaxed), r.addr[1].load(Relaxed)];
        let hits = r.hits.load(Relaxed);
        let drops = r.drops.load(Relaxed);
        let interleaved = r.interleaved.load(Relaxed);
        let nts = r.nts.load(Relaxed);
        let last = r.last.load(Relaxed);
        let interval = r.interval.load(Relaxed);
        fence(Acquire);
        if r.seq.load(Relaxed) != s {
            continue;
        }
        if addr == [0, 0] || hits == 0 {
            return None;
        }
        let v6 = Ipv6Addr::from((u128::from(addr[0]) << 64) | u128::from(addr[1]));
        return Some(Client {
            addr: IpAddr::V6(v6).to_canonical(),
            hits,
            drops,
            interleaved,
            nts,
            interval: (interval > 0).then(|| log2_seconds(interval)),
            last_ago: now.wrapping_sub(last).min(u64::MAX / 2) / SECOND,
        });
    }
    None
}

/// log2 of `interval` (NTP units) in seconds, rounded to the nearest.
fn log2_seconds(interval: u64) -> i8 {
    // log2 of the units, less 32; +0.5 for rounding done on the value by
    // comparing with sqrt(2) times the power below.
    let floor = 63 - interval.leading_zeros() as i32;
    let low = 1u128 << floor;
    let rounded = if u128::from(interval) * 1000 >= low * 1414 {
        floor + 1
    } else {
        floor
    };
    (rounded - 32).clamp(-128, 127) as i8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn all(log: &ClientLog, now: u64) -> Vec<Client> {
        let mut v = Vec::new();
        log.snapshot(now, &mut v);
        v.sort_by_key(|c| std::cmp::Reverse(c.hits));
        v
    }

    #[test]
    fn a_record_is_one_cache_line() {
        assert_eq!(ClientLog::RECORD_BYTES, 64);
    }

    /// Requests every 16 s: the log counts them, their kinds and drops,
    /// and gives the interval as 4 (log2 s) and the time since the last.
    #[test]
    fn counts_interval_and_last() {
        let log = ClientLog::new(64, [1, 2]);
        let t0 = 0xe9a0_0000_0000_0000u64;
        for n in 0..10u64 {
            let i = log.hit(ip("192.0.2.7"), t0 + n * 16 * SECOND).unwrap();
            log.note(i, n % 2 == 0, n >= 2);
            if n == 9 {
                log.dropped_one(i);
            }
        }
        log.hit(ip("2001:db8::1"), t0).unwrap();
        let v = all(&log, t0 + 9 * 16 * SECOND + 3 * SECOND);
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            Client {
                addr: ip("192.0.2.7"),
                hits: 10,
                drops: 1,
                interleaved: 8,
                nts: 5,
                interval: Some(4),
                last_ago: 3,
            }
        );
        assert_eq!(v[1].addr, ip("2001:db8::1"));
        assert_eq!(v[1].interval, None);
        assert_eq!(log.dropped(), 0);
    }

    /// A full log replaces its least recently seen clients and counts each
    /// replaced record; the memory never grows.
    #[test]
    fn a_full_log_drops_the_least_recent() {
        let log = ClientLog::new(16, [3, 4]);
        for n in 0..1000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            log.hit(a, 0xe9a0_0000_0000_0000 + u64::from(n) * SECOND);
        }
        assert_eq!(log.capacity(), 16);
        let v = all(&log, 0xe9a0_0000_0000_0000 + 1000 * SECOND);
        assert_eq!(v.len(), 16);
        assert_eq!(log.dropped(), 1000 - 16);
        // The newest client of each bucket is still there.
        assert!(v
            .iter()
            .any(|c| c.addr == IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + 999u32))));
    }

    #[test]
    fn intervals_round_to_the_nearest_power_of_two() {
        assert_eq!(log2_seconds(SECOND), 0);
        assert_eq!(log2_seconds(SECOND / 16), -4);
        assert_eq!(log2_seconds(SECOND * 64), 6);
        assert_eq!(
            log2_seconds(SECOND * 3 / 2),
            1,
            "1.5 s is nearer 2 s than 1 s (in log)"
        );
        assert_eq!(log2_seconds(SECOND * 13 / 10), 0);
    }

    #[test]
    fn an_empty_log_records_nothing() {
        let log = ClientLog::new(0, [0, 0]);
        assert_eq!(log.hit(ip("192.0.2.1"), 1), None);
        assert!(all(&log, 1).is_empty());
    }
}
