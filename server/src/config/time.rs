//! `[time]`: what the server says about its clock.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::HumanDuration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeSource {
    /// The kernel's synchronisation state from adjtimex.
    #[default]
    Kernel,
    /// Always synchronised at the configured stratum (isolated networks, tests).
    Local,
    /// Follow an NTP server (normally the local chronyd) and report its
    /// quality one stratum further away.
    Upstream,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    pub source: TimeSource,
    /// Stratum while synchronised; default 1 for `local`, 2 for `kernel`.
    pub stratum: Option<u8>,
    /// Up to four ASCII characters, or an IPv4 address.
    pub refid: Option<String>,
    /// The NTP server followed by `source = "upstream"`: HOST or HOST:PORT.
    pub upstream: Option<String>,
    /// How long the last good upstream sample is served after the upstream
    /// goes silent or unsynchronised, before leap indicator 3 (alarm).
    pub hold_time: HumanDuration,
}

impl Default for TimeConfig {
    fn default() -> Self {
        Self {
            source: TimeSource::Kernel,
            stratum: None,
            refid: None,
            upstream: None,
            hold_time: HumanDuration(Duration::from_secs(60)),
        }
    }
}

impl TimeConfig {
    /// The stratum served while synchronised. A local clock is the reference
    /// itself (stratum 1, like a reference clock); a kernel clock disciplined
    /// by another daemon is at least one step further away.
    pub fn stratum(&self) -> u8 {
        self.stratum.unwrap_or(match self.source {
            TimeSource::Local => 1,
            TimeSource::Kernel | TimeSource::Upstream => 2,
        })
    }

    /// The reference id bytes: configured, or `LOCL` / `KERN` by source.
    pub fn refid_bytes(&self) -> Result<[u8; 4], String> {
        let Some(s) = &self.refid else {
            return Ok(match self.source {
                TimeSource::Local => *b"LOCL",
                TimeSource::Kernel => *b"KERN",
                // Replaced by the upstream's address once it answers.
                TimeSource::Upstream => *b"INIT",
            });
        };
        if let Ok(IpAddr::V4(a)) = s.parse::<IpAddr>() {
            return Ok(a.octets());
        }
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "refid {s:?} must be 1-4 printable ASCII characters or an IPv4 address"
            ));
        }
        let mut out = [0u8; 4];
        for (o, b) in out.iter_mut().zip(s.bytes()) {
            *o = b;
        }
        Ok(out)
    }
}

impl TimeConfig {
    /// Stratum, refid and the upstream fit the source.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=15).contains(&self.stratum()) {
            return Err(format!(
                "[time] stratum: {} is outside 1..=15",
                self.stratum()
            ));
        }
        self.refid_bytes().map_err(|e| format!("[time] {e}"))?;
        match (self.source, &self.upstream) {
            (TimeSource::Upstream, None) => {
                return Err(
                    "[time] upstream: required with source = \"upstream\" (e.g. \"127.0.0.1:123\")"
                        .into(),
                )
            }
            (TimeSource::Upstream, Some(u)) => {
                nts_client::split_host_port(u, 123).map_err(|e| format!("[time] upstream: {e}"))?;
                for (key, set) in [
                    ("stratum", self.stratum.is_some()),
                    ("refid", self.refid.is_some()),
                ] {
                    if set {
                        return Err(format!(
                            "[time] {key}: not used with source = \"upstream\" (the upstream's stratum + 1 and its address are served)"
                        ));
                    }
                }
            }
            (_, Some(_)) => {
                return Err("[time] upstream: only used with source = \"upstream\"".into())
            }
            _ => {}
        }
        if self.hold_time.0 < Duration::from_secs(1) {
            return Err("[time] hold_time: must be at least 1s".into());
        }
        Ok(())
    }
}
