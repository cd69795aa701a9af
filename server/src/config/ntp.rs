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
    #[serde(deserialize_with = "super::addr::list")]
    pub listen: Vec<SocketAddr>,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    pub backend: Backend,
    /// Interleaved mode (RFC 9769) for clients that ask for it (chrony's
    /// `xleave`).
    pub interleaved: bool,
    /// Bytes for the client log and the saved timestamps of interleaved
    /// mode, all workers together (chrony's `clientloglimit`).
    pub client_log_limit: usize,
}

/// The default `[ntp] client_log_limit`: 4 MiB.
pub const DEFAULT_CLIENT_LOG_LIMIT: usize = 4 << 20;
/// The most `[ntp] client_log_limit` takes: 1 GiB.
const MAX_CLIENT_LOG_LIMIT: usize = 1 << 30;

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
            interleaved: true,
            client_log_limit: DEFAULT_CLIENT_LOG_LIMIT,
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
        if self.client_log_limit > MAX_CLIENT_LOG_LIMIT {
            return Err(format!(
                "[ntp] client_log_limit: {} bytes is more than the most, {MAX_CLIENT_LOG_LIMIT}",
                self.client_log_limit
            ));
        }
        Ok(())
    }
}
