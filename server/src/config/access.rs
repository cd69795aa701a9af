//! `[access]`: who may use NTP and NTS-KE (prefixes), and `[access.rate_limit]`.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::check_rate;
use super::HumanDuration;

/// An address prefix such as `192.0.2.0/24` or `2001:db8::/32`; a bare
/// address is a /32 or /128. Host bits are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| {
            format!("{s:?} is not an address prefix such as \"192.0.2.0/24\" or \"2001:db8::/32\"")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[access]`: who may use NTP and NTS-KE, and the NTP rate limit.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Prefixes served; empty: everyone.
    pub allow: Vec<Cidr>,
    /// Prefixes refused; wins over `allow`.
    pub deny: Vec<Cidr>,
    /// Off unless the table is present.
    pub rate_limit: Option<RateLimitConfig>,
}

/// `[access.rate_limit]`, in the shape of chrony's `ratelimit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Average time between answered requests per client prefix.
    pub interval: HumanDuration,
    /// Requests a client may send back to back.
    pub burst: u32,
    /// 1 in 2^leak of the requests over the limit is still answered.
    pub leak: u8,
    /// Answer plain NTP over the limit with a RATE kiss-o'-death.
    pub kod: bool,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Clients tracked per worker (fixed memory, oldest evicted).
    pub table_entries: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration(Duration::from_secs(2)),
            burst: 8,
            leak: 2,
            kod: false,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_entries: 65_536,
        }
    }
}

impl AccessConfig {
    /// The rate limit's values are in range.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(r) = &self.rate_limit {
            let key = "[access.rate_limit]";
            check_rate(key, r.interval.0, r.burst)?;
            if !(1..=16).contains(&r.leak) {
                return Err(format!(
                    "{key} leak: must be 1..=16 (1 in 2^leak over-limit requests is answered)"
                ));
            }
            if r.ipv4_prefix > 32 {
                return Err(format!("{key} ipv4_prefix: must be 0..=32"));
            }
            if r.ipv6_prefix > 128 {
                return Err(format!("{key} ipv6_prefix: must be 0..=128"));
            }
            if !(16..=1 << 24).contains(&r.table_entries) {
                return Err(format!("{key} table_entries: must be 16..=16777216"));
            }
        }
        Ok(())
    }
}
