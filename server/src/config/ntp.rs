//! `[ntp]`: the data path's addresses, workers and back end.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The back end measured faster and available everywhere: `portable`
    /// (see README, Performance). `io-uring` is chosen only by name.
    #[default]
    Auto,
    IoUring,
    Portable,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NtpConfig {
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    pub backend: Backend,
}

/// Every IPv4 and every IPv6 address on `port` (the IPv6 socket is
/// IPv6-only, so the two never collide).
pub(super) fn dual_stack(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
    ]
}

impl Default for NtpConfig {
    fn default() -> Self {
        Self {
            listen: dual_stack(123),
            workers: 0,
            backend: Backend::Auto,
        }
    }
}

impl NtpConfig {
    /// At least one address; a bounded number of workers.
    pub fn validate(&self) -> Result<(), String> {
        super::check_threads("[ntp] workers", self.workers)?;
        if self.listen.is_empty() {
            return Err("[ntp] listen: at least one address is required".into());
        }
        Ok(())
    }
}
