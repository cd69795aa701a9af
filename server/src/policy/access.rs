//! Access lists: `[access] allow` and `deny` (CIDR prefixes), applied to
//! NTP and, unless `[nts_ke]` overrides them, to NTS-KE. Deny wins; an
//! empty `allow` allows everyone.
//!
//! Each list is kept as sorted, merged address ranges per family, so a
//! lookup is two binary searches: its cost grows with log2 of the number of
//! prefixes (10,000 prefixes: 14 steps), and it allocates nothing.

use std::net::IpAddr;

use crate::config::Cidr;

/// Sorted, merged, inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ranges<T> {
    ranges: Vec<(T, T)>,
}

impl<T: Copy + Ord + num::Bits> Ranges<T> {
    fn from_prefixes(prefixes: impl Iterator<Item = (T, u8)>) -> Self {
        let mut ranges: Vec<(T, T)> = prefixes.map(|(a, p)| T::span(a, p)).collect();
        ranges.sort_unstable();
        let mut merged: Vec<(T, T)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1 || T::next(last.1) == Some(lo) => {
                    last.1 = last.1.max(hi);
                }
                _ => merged.push((lo, hi)),
            }
        }
        Self { ranges: merged }
    }

    #[inline]
    fn contains(&self, x: T) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= x);
        i > 0 && self.ranges.get(i - 1).is_some_and(|r| x <= r.1)
    }

    fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

mod num {
    /// Integer addresses: the range a prefix spans, and the successor.
    pub(super) trait Bits: Sized {
        fn span(addr: Self, prefix: u8) -> (Self, Self);
        fn next(self) -> Option<Self>;
    }

    macro_rules! bits {
        ($t:ty) => {
            impl Bits for $t {
                fn span(addr: $t, prefix: u8) -> ($t, $t) {
                    let host = <$t>::BITS - u32::from(prefix);
                    let mask = <$t>::MAX.checked_shl(host).unwrap_or(0);
                    (addr & mask, (addr & mask) | !mask)
                }
                fn next(self) -> Option<$t> {
                    self.checked_add(1)
                }
            }
        };
    }
    bits!(u32);
    bits!(u128);
}

/// One list (allow or deny), both families.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct List {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl List {
    fn new(prefixes: &[Cidr]) -> Self {
        let v4 = prefixes.iter().filter_map(|c| match c.addr {
            IpAddr::V4(a) => Some((u32::from(a), c.prefix)),
            IpAddr::V6(_) => None,
        });
        let v6 = prefixes.iter().filter_map(|c| match c.addr {
            IpAddr::V6(a) => Some((u128::from(a), c.prefix)),
            IpAddr::V4(_) => None,
        });
        Self {
            v4: Ranges::from_prefixes(v4),
            v6: Ranges::from_prefixes(v6),
        }
    }

    #[inline]
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Who may use the service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AccessList {
    allow: List,
    deny: List,
}

impl AccessList {
    pub(crate) fn new(allow: &[Cidr], deny: &[Cidr]) -> Self {
        Self {
            allow: List::new(allow),
            deny: List::new(deny),
        }
    }

    /// Whether `ip` may be served: not denied, and allowed (an empty allow
    /// list allows everyone). IPv4-mapped IPv6 addresses count as IPv4.
    #[inline]
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        !self.deny.contains(ip) && (self.allow.is_empty() || self.allow.contains(ip))
    }

    /// Whether the list lets everyone in.
    #[cfg(test)]
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(allow: &[&str], deny: &[&str]) -> AccessList {
        let p = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<Cidr>>();
        AccessList::new(&p(allow), &p(deny))
    }

    fn ok(l: &AccessList, ip: &str) -> bool {
        l.permits(ip.parse().unwrap())
    }

    #[test]
    fn allow_deny_and_deny_wins() {
        let l = list(
            &["192.0.2.0/24", "2001:db8::/32"],
            &["192.0.2.128/25", "2001:db8:bad::/48"],
        );
        assert!(ok(&l, "192.0.2.1"));
        assert!(!ok(&l, "192.0.2.200"), "deny wins over allow");
        assert!(!ok(&l, "198.51.100.1"), "not in allow");
        assert!(ok(&l, "2001:db8::1"));
        assert!(!ok(&l, "2001:db8:bad::1"));
        assert!(!ok(&l, "2001:db9::1"));
        assert!(ok(&l, "::ffff:192.0.2.1"), "IPv4-mapped counts as IPv4");
        let open = list(&[], &["10.0.0.0/8"]);
        assert!(ok(&open, "192.0.2.1") && ok(&open, "::1") && !ok(&open, "10.1.2.3"));
        assert!(list(&[], &[]).is_open());
    }

    #[test]
    fn prefixes_parse_and_are_checked() {
        let c: Cidr = "192.0.2.77/24".parse().unwrap();
        assert_eq!(c.prefix, 24);
        assert_eq!("2001:db8::1".parse::<Cidr>().unwrap().prefix, 128);
        assert!("192.0.2.0/33".parse::<Cidr>().is_err());
        assert!("2001:db8::/129".parse::<Cidr>().is_err());
        assert!("example.net/24".parse::<Cidr>().is_err());
        let all = list(&["0.0.0.0/0", "::/0"], &[]);
        assert!(ok(&all, "255.255.255.255") && ok(&all, "ffff::1"));
    }

    #[test]
    fn merged_ranges_agree_with_a_linear_scan() {
        // Adjacent, nested and overlapping prefixes.
        let prefixes = [
            "10.0.0.0/24",
            "10.0.1.0/24",
            "10.0.0.128/25",
            "10.0.3.0/24",
            "10.0.2.0/23",
            "192.168.0.0/16",
            "192.168.7.7",
        ];
        let cidrs: Vec<Cidr> = prefixes.iter().map(|s| s.parse().unwrap()).collect();
        let l = AccessList::new(&cidrs, &[]);
        let linear = |ip: u32| {
            cidrs.iter().any(|c| match c.addr {
                IpAddr::V4(a) => {
                    let (lo, hi) = <u32 as num::Bits>::span(u32::from(a), c.prefix);
                    (lo..=hi).contains(&ip)
                }
                IpAddr::V6(_) => false,
            })
        };
        for ip in (0x0a00_0000u32..0x0a00_0600)
            .chain(0xc0a8_0000..0xc0a8_0100)
            .chain([0, u32::MAX])
        {
            assert_eq!(l.permits(IpAddr::V4(ip.into())), linear(ip), "{ip:#x}");
        }
        assert_eq!(l.allow.v4.ranges.len(), 2, "{:?}", l.allow.v4.ranges);
    }

    #[test]
    fn ten_thousand_prefixes() {
        let cidrs: Vec<Cidr> = (0..10_000u32)
            .map(|i| Cidr {
                addr: IpAddr::V4((0x0a00_0000 + i * 512).into()),
                prefix: 24,
            })
            .collect();
        let l = AccessList::new(&[], &cidrs);
        assert!(!l.permits("10.0.0.1".parse().unwrap()));
        assert!(
            l.permits("10.0.1.1".parse().unwrap()),
            "the odd /24s are not listed"
        );
        assert_eq!(l.deny.v4.ranges.len(), 10_000);
    }
}
