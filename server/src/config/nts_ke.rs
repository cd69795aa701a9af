//! `[nts_ke]`, `[[nts_ke.certificate]]` and `[nts_ke.rate_limit]`: the
//! key-exchange front end.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ntp::dual_stack;
use super::HumanDuration;
use super::{check_rate, Cidr};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtsKeConfig {
    #[serde(default = "default_ke_listen", deserialize_with = "super::addr::list")]
    pub listen: Vec<SocketAddr>,
    /// The default certificate (clients without SNI, or with a name no
    /// other certificate covers).
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
    /// More certificates, chosen by the SNI name clients send
    /// (`[[nts_ke.certificate]]`).
    #[serde(default)]
    pub certificate: Vec<CertPair>,
    /// Sent in a Server record; must be an address or a fully qualified name.
    #[serde(default)]
    pub ntp_server: Option<String>,
    /// Sent in a Port record; defaults to the NTP listen port.
    #[serde(default)]
    pub ntp_port: Option<u16>,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_ke_timeout")]
    pub timeout: HumanDuration,
    /// Threads of the KE runtime (TLS handshakes); 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Slots one address (IPv4 /32, IPv6 /64) may hold; a new connection
    /// beyond closes the address's oldest.
    #[serde(default = "default_per_address")]
    pub max_connections_per_address: usize,
    /// Sessions per address and time (`[nts_ke.rate_limit]`); off unless set.
    #[serde(default)]
    pub rate_limit: Option<KeRateLimitConfig>,
    /// Override `[access] allow` for NTS-KE only.
    #[serde(default)]
    pub allow: Option<Vec<Cidr>>,
    /// Override `[access] deny` for NTS-KE only.
    #[serde(default)]
    pub deny: Option<Vec<Cidr>>,
}

impl Default for NtsKeConfig {
    fn default() -> Self {
        Self {
            listen: default_ke_listen(),
            certificate_chain: PathBuf::new(),
            private_key: PathBuf::new(),
            certificate: Vec::new(),
            ntp_server: None,
            ntp_port: None,
            max_connections: default_max_connections(),
            timeout: default_ke_timeout(),
            threads: 0,
            max_connections_per_address: default_per_address(),
            rate_limit: None,
            allow: None,
            deny: None,
        }
    }
}

fn default_per_address() -> usize {
    32
}

/// `[nts_ke.rate_limit]`: NTS-KE sessions an address (IPv4 /32, IPv6 /64)
/// may start back to back, then one per `interval`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeRateLimitConfig {
    pub interval: HumanDuration,
    pub burst: u32,
}

impl Default for KeRateLimitConfig {
    fn default() -> Self {
        Self {
            interval: HumanDuration(Duration::from_secs(1)),
            burst: 16,
        }
    }
}

/// A certificate chain (PEM, leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
}

impl NtsKeConfig {
    /// Every certificate, the default first.
    pub fn certificates(&self) -> Vec<CertPair> {
        let default = CertPair {
            certificate_chain: self.certificate_chain.clone(),
            private_key: self.private_key.clone(),
        };
        std::iter::once(default)
            .chain(self.certificate.iter().cloned())
            .collect()
    }
}

fn default_ke_listen() -> Vec<SocketAddr> {
    dual_stack(4460)
}

fn default_max_connections() -> usize {
    1024
}

fn default_ke_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl NtsKeConfig {
    /// Addresses, names, caps and timeouts in range.
    pub fn validate(&self) -> Result<(), String> {
        super::check_threads("[nts_ke] threads", self.threads)?;
        if self.listen.is_empty() {
            return Err("[nts_ke] listen: at least one address is required".into());
        }
        if let Some(name) = &self.ntp_server {
            // chrony appends a dot to a name from the Server record, so a
            // relative name would be resolved wrongly: require an address or a
            // fully qualified name.
            let is_addr = name.parse::<IpAddr>().is_ok();
            if !is_addr && !name.contains('.') {
                return Err(format!(
                    "[nts_ke] ntp_server: {name:?} must be an IP address or a fully qualified domain name"
                ));
            }
            if name.is_empty() || name.len() > 255 || !name.is_ascii() {
                return Err(format!(
                    "[nts_ke] ntp_server: {name:?} is not a valid host name"
                ));
            }
        }
        if self.ntp_port == Some(0) {
            return Err("[nts_ke] ntp_port: must be between 1 and 65535".into());
        }
        if self.max_connections == 0 {
            return Err("[nts_ke] max_connections: must be at least 1".into());
        }
        if self.max_connections_per_address == 0 {
            return Err("[nts_ke] max_connections_per_address: must be at least 1".into());
        }
        if let Some(r) = &self.rate_limit {
            check_rate("[nts_ke.rate_limit]", r.interval.0, r.burst)?;
        }
        if self.timeout.0 < Duration::from_millis(100) {
            return Err("[nts_ke] timeout: must be at least 100ms".into());
        }
        Ok(())
    }
}
