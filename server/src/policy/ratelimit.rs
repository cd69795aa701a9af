//! NTP rate limiting per client prefix, with the semantics of chrony's
//! `ratelimit interval/burst/leak`: a client may send `burst` requests back
//! to back and then one every `interval`; of the requests over the limit, a
//! random 1 in 2^`leak` is still answered, so that a flood spoofing a
//! victim's address cannot silence the victim.
//!
//! ```text
//! peer ─► prefix (/ipv4_prefix, /ipv6_prefix) ─► SipHash, per-process random key
//!      ─► bucket of 4 slots in a fixed table ─► GCRA check ─► allow | over the limit
//! ```
//!
//! The table is allocated once per worker (`table_entries` slots, like
//! chrony's `clientloglimit`); a new client takes a free slot of its bucket
//! or evicts the one that was active least recently. The check runs before
//! any cryptographic work, takes no lock and allocates nothing.
//!
//! Each slot keeps one "theoretical arrival time" (the generic cell rate
//! algorithm, equivalent to a token bucket of `burst` tokens refilled one
//! per `interval`). Time is the packet's receive timestamp; a clock that
//! steps back resets the slots it makes look far ahead.

use crate::config::{KeRateLimitConfig, RateLimitConfig};
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

/// Slots per bucket (a cache line of slots, scanned together).
const WAYS: usize = 4;

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Over the limit but picked by the leak: answer it.
    Leaked,
    OverLimit,
}

/// The limits, from `[access.rate_limit]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) interval_ns: u64,
    pub(crate) burst: u32,
    /// 1 in 2^leak over-limit requests is answered; 0: none is.
    pub(crate) leak: u8,
    pub(crate) ipv4_prefix: u8,
    pub(crate) ipv6_prefix: u8,
    /// Slots in the table (rounded up to a power of two).
    pub(crate) table_entries: usize,
}

impl Limits {
    /// `[access.rate_limit]`: the NTP workers' limit.
    pub(crate) fn of_ntp(c: &RateLimitConfig) -> Limits {
        Limits {
            interval_ns: nanos(c.interval.0),
            burst: c.burst,
            leak: c.leak,
            ipv4_prefix: c.ipv4_prefix,
            ipv6_prefix: c.ipv6_prefix,
            table_entries: c.table_entries,
        }
    }

    /// `[nts_ke.rate_limit]`: sessions per address (IPv4 /32, IPv6 /64),
    /// none answered over the limit.
    pub(crate) fn of_ke(c: &KeRateLimitConfig) -> Limits {
        Limits {
            interval_ns: nanos(c.interval.0),
            burst: c.burst,
            leak: 0,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_entries: 16_384,
        }
    }
}

fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
struct Slot {
    /// The masked prefix; IPv4 in the low 32 bits.
    key: u128,
    /// 0 = free, 4 or 6.
    family: u8,
    /// Theoretical arrival time, ns.
    tat: u64,
}

/// One worker's table.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: Limits,
    slots: Box<[Slot]>,
    bucket_mask: usize,
    hasher: RandomState,
    rng: u64,
}

impl RateLimiter {
    /// A table for `limits`; `seed` starts the leak's random stream.
    pub(crate) fn new(limits: Limits, seed: u64) -> Self {
        let entries = limits.table_entries.max(WAYS).next_power_of_two();
        Self {
            limits,
            slots: vec![Slot::default(); entries].into_boxed_slice(),
            bucket_mask: entries / WAYS - 1,
            hasher: RandomState::new(),
            rng: seed | 1,
        }
    }

    /// Bytes the table occupies.
    #[cfg(test)]
    pub fn memory(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }

    fn prefix(&self, ip: IpAddr) -> (u128, u8) {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let host = 32 - u32::from(self.limits.ipv4_prefix.min(32));
                let mask = u32::MAX.checked_shl(host).unwrap_or(0);
                (u128::from(u32::from(a) & mask), 4)
            }
            IpAddr::V6(a) => {
                let host = 128 - u32::from(self.limits.ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(host).unwrap_or(0);
                (u128::from(a) & mask, 6)
            }
        }
    }

    /// A request from `ip` at `now_ns` (any clock in ns, normally the
    /// receive timestamp).
    #[inline]
    pub(crate) fn check(&mut self, ip: IpAddr, now_ns: u64) -> Verdict {
        let (key, family) = self.prefix(ip);
        let bucket = (self.hasher.hash_one((key, family)) as usize) & self.bucket_mask;
        let interval = self.limits.interval_ns;
        let tolerance = interval.saturating_mul(u64::from(self.limits.burst.saturating_sub(1)));
        let start = bucket * WAYS;
        let Some(ways) = self.slots.get_mut(start..start + WAYS) else {
            return Verdict::Allow;
        };
        let slot = match ways.iter().position(|s| s.family == family && s.key == key) {
            Some(i) => &mut ways[i],
            None => {
                // A free slot, else the one active least recently (lowest
                // arrival time): a new client starts with a full burst.
                let i = ways
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, s)| (s.family != 0, s.tat))
                    .map_or(0, |(i, _)| i);
                let s = &mut ways[i];
                *s = Slot {
                    key,
                    family,
                    tat: now_ns,
                };
                s
            }
        };
        // A back step of the clock leaves the slot far ahead: start afresh.
        if slot.tat > now_ns.saturating_add(tolerance).saturating_add(interval) {
            slot.tat = now_ns;
        }
        let tat = slot.tat.max(now_ns);
        if tat <= now_ns.saturating_add(tolerance) {
            slot.tat = tat.saturating_add(interval);
            return Verdict::Allow;
        }
        if self.limits.leak == 0 {
            return Verdict::OverLimit;
        }
        // xorshift64: the leak's coin, cheap and unpredictable enough
        // (seeded from the system RNG) that a flood cannot time it.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mask = (1u64 << self.limits.leak.min(63)) - 1;
        if self.rng & mask == 0 {
            Verdict::Leaked
        } else {
            Verdict::OverLimit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn limits() -> Limits {
        Limits {
            interval_ns: 2 * S,
            burst: 8,
            leak: 2,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_entries: 1024,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_one_per_interval_with_a_leak() {
        let mut r = RateLimiter::new(limits(), 42);
        let a = ip("192.0.2.1");
        for i in 0..8 {
            assert_eq!(r.check(a, 0), Verdict::Allow, "burst {i}");
        }
        let (mut leaked, mut over) = (0, 0);
        for _ in 0..4000 {
            match r.check(a, 0) {
                Verdict::Leaked => leaked += 1,
                Verdict::OverLimit => over += 1,
                Verdict::Allow => panic!("over the burst"),
            }
        }
        // 1 in 4 leaks.
        assert!(
            (800..1200).contains(&leaked),
            "{leaked} leaked, {over} dropped"
        );
        // Credit comes back at one per interval.
        assert_eq!(r.check(a, 2 * S), Verdict::Allow);
        assert_ne!(r.check(a, 2 * S), Verdict::Allow);
        // Another client is not affected.
        assert_eq!(r.check(ip("192.0.2.2"), 0), Verdict::Allow);
    }

    #[test]
    fn a_steady_client_within_the_limit_is_always_answered() {
        let mut r = RateLimiter::new(limits(), 1);
        let a = ip("2001:db8::1");
        for i in 0..1000u64 {
            assert_eq!(r.check(a, i * 2 * S), Verdict::Allow, "{i}");
        }
    }

    #[test]
    fn prefixes_group_clients() {
        let mut r = RateLimiter::new(limits(), 1);
        // One /64: its addresses share the budget.
        for i in 0..8 {
            assert_eq!(r.check(ip(&format!("2001:db8::{i:x}")), 0), Verdict::Allow);
        }
        assert_ne!(r.check(ip("2001:db8::ff"), 0), Verdict::Allow);
        assert_eq!(r.check(ip("2001:db8:0:1::1"), 0), Verdict::Allow);
    }

    #[test]
    fn a_clock_stepping_back_does_not_silence_clients() {
        let mut r = RateLimiter::new(limits(), 1);
        let a = ip("192.0.2.9");
        let late = 1_000_000 * S;
        for _ in 0..8 {
            assert_eq!(r.check(a, late), Verdict::Allow);
        }
        assert_eq!(r.check(a, late - 3600 * S), Verdict::Allow);
    }

    /// A million distinct addresses: the table never grows, and a client
    /// within its limit keeps being answered throughout.
    #[test]
    fn a_million_addresses_stay_within_the_table() {
        let mut r = RateLimiter::new(
            Limits {
                table_entries: 65_536,
                ..limits()
            },
            7,
        );
        let before = r.memory();
        assert_eq!(before, 65_536 * std::mem::size_of::<Slot>());
        let honest = ip("198.51.100.7");
        let mut now = 0u64;
        for i in 0..1_000_000u32 {
            now += 10_000; // 100,000 requests a second
            let spoofed = IpAddr::V4((0x0a00_0000 + i).into());
            r.check(spoofed, now);
            if i % 200_000 == 0 {
                now += 2 * S;
                assert_ne!(r.check(honest, now), Verdict::OverLimit, "at {i}");
            }
        }
        assert_eq!(r.memory(), before);
    }
}
