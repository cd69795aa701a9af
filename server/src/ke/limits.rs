//! Per-address NTS-KE limits, checked at accept, before TLS:
//!
//! - open connections: an address (IPv4 /32, IPv6 /64) holds at most
//!   `max_connections_per_address` of the `max_connections` slots. A new
//!   connection from an address at its cap closes that address's oldest
//!   connection instead of being refused: a client that dribbles bytes
//!   (slowloris) loses its old sockets, while an honest client behind the
//!   same address, which finishes in milliseconds, still gets in;
//! - rate (`[nts_ke.rate_limit]`, off unless set): sessions an address may
//!   start back to back (`burst`) and then one per `interval`; more are
//!   closed at once.
//!
//! Both tables are bounded: the connection table by `max_connections`
//! (an entry goes with its last connection), the rate table by its fixed
//! size.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

use crate::policy::ratelimit::{Limits, RateLimiter, Verdict};

/// The key of an address: the address itself (IPv4) or its /64 (IPv6),
/// the unit one host usually holds.
fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Open connections per address, oldest first.
#[derive(Debug)]
pub(crate) struct AddressSlots {
    cap: usize,
    open: Mutex<HashMap<IpAddr, VecDeque<(u64, tokio::task::AbortHandle)>>>,
}

impl AddressSlots {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<(u64, tokio::task::AbortHandle)>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits connection `id` of `ip`, run by the task `spawn` starts:
    /// first closes the address's oldest connection if it is at its cap
    /// (returns whether it did). The task is registered under the lock, so
    /// its own [`AddressSlots::remove`] cannot run before it is recorded.
    pub(crate) fn admit(
        &self,
        ip: IpAddr,
        id: u64,
        spawn: impl FnOnce() -> tokio::task::AbortHandle,
    ) -> bool {
        let mut open = self.lock();
        let conns = open.entry(key(ip)).or_default();
        let mut evicted = false;
        while conns.len() >= self.cap {
            if let Some((_, oldest)) = conns.pop_front() {
                oldest.abort();
                evicted = true;
            }
        }
        conns.push_back((id, spawn()));
        evicted
    }

    /// Forgets connection `id` of `ip` (its task ended).
    pub(crate) fn remove(&self, ip: IpAddr, id: u64) {
        let mut open = self.lock();
        let k = key(ip);
        if let Some(conns) = open.get_mut(&k) {
            conns.retain(|(i, _)| *i != id);
            if conns.is_empty() {
                open.remove(&k);
            }
        }
    }

    /// Addresses with open connections.
    #[cfg(test)]
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }
}

/// The per-address session rate, when configured.
#[derive(Debug)]
pub(crate) struct SessionRate {
    limiter: Mutex<RateLimiter>,
    started: std::time::Instant,
}

impl SessionRate {
    pub(crate) fn new(limits: Limits, seed: u64) -> Self {
        Self {
            limiter: Mutex::new(RateLimiter::new(limits, seed)),
            started: std::time::Instant::now(),
        }
    }

    /// Whether a session from `ip` may start now.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut l = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        l.check(ip, now) != Verdict::OverLimit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_connection_of_a_full_address_is_evicted() {
        let slots = AddressSlots::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut tasks = Vec::new();
        for id in 0..2u64 {
            let evicted = slots.admit(ip, id, || {
                let t = tokio::spawn(std::future::pending::<()>());
                let h = t.abort_handle();
                tasks.push(t);
                h
            });
            assert!(!evicted);
        }
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!slots.admit(other, 9, || tokio::spawn(async {}).abort_handle()));
        assert!(slots.admit(ip, 2, || tokio::spawn(async {}).abort_handle()));
        let first = tasks.remove(0).await;
        assert!(
            first.unwrap_err().is_cancelled(),
            "the oldest was not closed"
        );
        for (addr, id) in [(ip, 1), (ip, 2), (other, 9)] {
            slots.remove(addr, id);
        }
        assert_eq!(slots.addresses(), 0);
        // An IPv6 /64 is one address.
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(!slots.admit(a, 7, || tokio::spawn(async {}).abort_handle()));
        assert!(!slots.admit(b, 8, || tokio::spawn(async {}).abort_handle()));
        assert!(slots.admit(b, 10, || tokio::spawn(async {}).abort_handle()));
    }

    #[test]
    fn the_session_rate_limits_per_address() {
        let rate = SessionRate::new(
            Limits {
                interval_ns: 3_600_000_000_000,
                burst: 3,
                leak: 0,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                table_entries: 1024,
            },
            1,
        );
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!((0..3).all(|_| rate.allows(ip)));
        assert!(!rate.allows(ip));
        assert!(rate.allows("192.0.2.10".parse().unwrap()));
    }
}
