//! The TOML configuration: names as in DESIGN.md, unknown keys refused,
//! every semantic check in [`Config::validate`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::ntp::access::Cidr;

/// A configuration error that names the file, the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub ntp: NtpConfig,
    pub nts_ke: NtsKeConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub time: TimeConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub access: AccessConfig,
    #[serde(default)]
    pub server: ServerConfig,
}

/// `[server]`: the user and group ntsd drops to once every socket is bound
/// and every file opened (unset: it keeps the user it was started as).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub user: Option<String>,
    /// Default: the user's primary group.
    pub group: Option<String>,
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

impl RateLimitConfig {
    pub fn limits(&self) -> crate::ntp::ratelimit::Limits {
        crate::ntp::ratelimit::Limits {
            interval_ns: u64::try_from(self.interval.0.as_nanos()).unwrap_or(u64::MAX),
            burst: self.burst,
            leak: self.leak,
            ipv4_prefix: self.ipv4_prefix,
            ipv6_prefix: self.ipv6_prefix,
            table_entries: self.table_entries,
        }
    }
}

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
fn dual_stack(port: u16) -> Vec<SocketAddr> {
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtsKeConfig {
    #[serde(default = "default_ke_listen")]
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

impl KeRateLimitConfig {
    pub fn limits(&self) -> crate::ntp::ratelimit::Limits {
        crate::ntp::ratelimit::Limits {
            interval_ns: u64::try_from(self.interval.0.as_nanos()).unwrap_or(u64::MAX),
            burst: self.burst,
            leak: 0,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            table_entries: 16_384,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    pub rotate_interval: HumanDuration,
    pub keep: u32,
    /// Where random master keys are persisted (standalone mode), as
    /// written; [`KeysConfig::state_dir`] says what it means. Unset:
    /// [`DEFAULT_DUMP_DIR`]; `""`: keys live in memory only.
    pub dump_dir: Option<PathBuf>,
    /// Fleet mode: derive keys from this shared secret instead.
    pub fleet_secret_file: Option<PathBuf>,
    /// Fleet secrets whose keys still open cookies but never seal (rolling
    /// the fleet secret).
    pub fleet_accept_secret_files: Vec<PathBuf>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            rotate_interval: HumanDuration(Duration::from_secs(86_400)),
            keep: 7,
            dump_dir: None,
            fleet_secret_file: None,
            fleet_accept_secret_files: Vec::new(),
        }
    }
}

/// Largest `[ntp] workers` and `[nts_ke] threads`: more threads than any
/// host has cores only cost memory and descriptors (each NTP worker holds
/// a socket per listen address and, with io_uring, a ring and its buffers).
pub const MAX_THREADS: usize = 1024;

/// Where standalone keys live when `dump_dir` is not set.
pub const DEFAULT_DUMP_DIR: &str = "/var/lib/ntsd";

impl KeysConfig {
    /// The directory holding the key file and the pid file: `dump_dir`, or
    /// [`DEFAULT_DUMP_DIR`] when it is not set. `None` in fleet mode
    /// (nothing secret is written) and for `dump_dir = ""` (keys in memory
    /// only, asked for explicitly).
    pub fn state_dir(&self) -> Option<&Path> {
        if self.fleet_secret_file.is_some() {
            return None;
        }
        match &self.dump_dir {
            None => Some(Path::new(DEFAULT_DUMP_DIR)),
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p),
        }
    }
}

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

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Prometheus endpoint; none when unset.
    pub listen: Option<SocketAddr>,
}

/// A duration written as `90`, `"90s"`, `"500ms"`, `"15m"`, `"12h"` or `"1d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Self(Duration::from_secs(s))),
            Raw::Text(t) => parse_duration(&t)
                .map(Self)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!(
            "invalid duration {text:?}: expected a number with a unit such as 30s, 15m, 12h or 1d"
        )
    })?;
    let ms = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration {text:?} is too large"))
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let err = |message: String| ConfigError {
            file: file.clone(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: Config =
            toml::from_str(&text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// The files the server reads at start, by config key.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files = vec![
            (
                "[nts_ke] certificate_chain".to_owned(),
                self.nts_ke.certificate_chain.clone(),
            ),
            (
                "[nts_ke] private_key".to_owned(),
                self.nts_ke.private_key.clone(),
            ),
        ];
        for (i, c) in self.nts_ke.certificate.iter().enumerate() {
            files.push((
                format!("[[nts_ke.certificate]] #{} certificate_chain", i + 1),
                c.certificate_chain.clone(),
            ));
            files.push((
                format!("[[nts_ke.certificate]] #{} private_key", i + 1),
                c.private_key.clone(),
            ));
        }
        files
    }

    /// Semantic checks that types alone cannot express. Touches no files:
    /// `check-config` and `run` check those separately.
    pub fn validate(&self) -> Result<(), String> {
        for (key, n) in [
            ("[ntp] workers", self.ntp.workers),
            ("[nts_ke] threads", self.nts_ke.threads),
        ] {
            if n > MAX_THREADS {
                return Err(format!(
                    "{key}: {n} is above the maximum of {MAX_THREADS} (0 means one per core)"
                ));
            }
        }
        if self.ntp.listen.is_empty() {
            return Err("[ntp] listen: at least one address is required".into());
        }
        if self.nts_ke.listen.is_empty() {
            return Err("[nts_ke] listen: at least one address is required".into());
        }
        if let Some(name) = &self.nts_ke.ntp_server {
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
        if self.nts_ke.ntp_port == Some(0) {
            return Err("[nts_ke] ntp_port: must be between 1 and 65535".into());
        }
        if self.nts_ke.max_connections == 0 {
            return Err("[nts_ke] max_connections: must be at least 1".into());
        }
        if self.nts_ke.max_connections_per_address == 0 {
            return Err("[nts_ke] max_connections_per_address: must be at least 1".into());
        }
        if let Some(r) = &self.nts_ke.rate_limit {
            if r.interval.0 < Duration::from_millis(1) {
                return Err("[nts_ke.rate_limit] interval: must be at least 1ms".into());
            }
            if !(1..=65_535).contains(&r.burst) {
                return Err("[nts_ke.rate_limit] burst: must be 1..=65535".into());
            }
        }
        if self.nts_ke.timeout.0 < Duration::from_millis(100) {
            return Err("[nts_ke] timeout: must be at least 100ms".into());
        }
        if self.keys.rotate_interval.0 < Duration::from_secs(1) {
            return Err("[keys] rotate_interval: must be at least 1s".into());
        }
        if self.keys.keep == 0 {
            return Err(
                "[keys] keep: must be at least 1 (clients need the previous key after a rotation)"
                    .into(),
            );
        }
        if self.keys.keep > keyrotate::MAX_KEEP {
            return Err(format!(
                "[keys] keep: {} is above the maximum of {} (cookies stay valid for keep x rotate_interval; raise rotate_interval instead)",
                self.keys.keep,
                keyrotate::MAX_KEEP
            ));
        }
        let explicit_dump_dir = self
            .keys
            .dump_dir
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty());
        if self.keys.fleet_secret_file.is_some() && explicit_dump_dir {
            return Err("[keys] dump_dir: not used with fleet_secret_file (fleet keys are derived from the secret and never written to disk); remove one of them".into());
        }
        if self.keys.fleet_secret_file.is_none() && !self.keys.fleet_accept_secret_files.is_empty()
        {
            return Err("[keys] fleet_accept_secret_files: requires fleet_secret_file".into());
        }
        if !(1..=15).contains(&self.time.stratum()) {
            return Err(format!(
                "[time] stratum: {} is outside 1..=15",
                self.time.stratum()
            ));
        }
        self.time.refid_bytes().map_err(|e| format!("[time] {e}"))?;
        let t = &self.time;
        match (t.source, &t.upstream) {
            (TimeSource::Upstream, None) => {
                return Err(
                    "[time] upstream: required with source = \"upstream\" (e.g. \"127.0.0.1:123\")"
                        .into(),
                )
            }
            (TimeSource::Upstream, Some(u)) => {
                crate::query::split_host_port(u, 123)
                    .map_err(|e| format!("[time] upstream: {e}"))?;
                for (key, set) in [
                    ("stratum", t.stratum.is_some()),
                    ("refid", t.refid.is_some()),
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
        if t.hold_time.0 < Duration::from_secs(1) {
            return Err("[time] hold_time: must be at least 1s".into());
        }
        if self.server.group.is_some() && self.server.user.is_none() {
            return Err("[server] group: requires user".into());
        }
        for (key, v) in [("user", &self.server.user), ("group", &self.server.group)] {
            if v.as_ref().is_some_and(|n| n.is_empty() || n.contains('\0')) {
                return Err(format!("[server] {key}: must be a name"));
            }
        }
        if let Some(r) = &self.access.rate_limit {
            let key = "[access.rate_limit]";
            if r.interval.0 < Duration::from_millis(1) {
                return Err(format!("{key} interval: must be at least 1ms"));
            }
            if !(1..=65_535).contains(&r.burst) {
                return Err(format!("{key} burst: must be 1..=65535"));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, String> {
        let text = format!(
            "[nts_ke]\ncertificate_chain = \"/dev/null\"\nprivate_key = \"/dev/null\"\n{extra}"
        );
        let c: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml.example");
        let text = std::fs::read_to_string(path).expect("example config");
        let c: Config = toml::from_str(&text).expect("example parses");
        // The example names certificate paths that exist only on a deployed
        // host: validate() touches no file.
        c.validate().expect("the example passes validate()");
        assert_eq!(c.ntp.backend, Backend::Auto);
    }

    /// The example promises every option at its default: its active lines
    /// must parse to exactly what a config naming only the certificate
    /// files gives.
    #[test]
    fn the_example_shows_the_code_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml.example");
        let text = std::fs::read_to_string(path).expect("example config");
        let example: Config = toml::from_str(&text).expect("example parses");
        let minimal: Config = toml::from_str(&format!(
            "[nts_ke]\ncertificate_chain = {:?}\nprivate_key = {:?}\n",
            example.nts_ke.certificate_chain, example.nts_ke.private_key
        ))
        .unwrap();
        // dump_dir's default is resolved by state_dir (unset, "" and a
        // fleet secret mean different things), not by serde.
        assert_eq!(example.keys.state_dir(), minimal.keys.state_dir());
        assert_eq!(example.keys.state_dir(), Some(Path::new("/var/lib/ntsd")));
        let (mut example, mut minimal) = (example, minimal);
        example.keys.dump_dir = None;
        minimal.keys.dump_dir = None;
        assert_eq!(example, minimal);
    }

    /// The commented-out `[access.rate_limit]` of the example, uncommented,
    /// is exactly the code's defaults for that table.
    #[test]
    fn the_example_rate_limit_block_shows_its_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.toml.example");
        let text = std::fs::read_to_string(path).expect("example config");
        let block: String = text
            .lines()
            .skip_while(|l| *l != "# [access.rate_limit]")
            .take_while(|l| l.starts_with("# "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        assert!(block.contains("table_entries"), "{block}");
        let c = parse(&block).unwrap();
        assert_eq!(c.access.rate_limit, Some(RateLimitConfig::default()));
        let ke_block: String = text
            .lines()
            .skip_while(|l| *l != "# [nts_ke.rate_limit]")
            .take_while(|l| l.starts_with("# ") && !l.starts_with("# More"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let ke = format!(
            "[nts_ke]\ncertificate_chain = \"/dev/null\"\nprivate_key = \"/dev/null\"\n{ke_block}"
        );
        let c: Config = toml::from_str(&ke).unwrap();
        assert_eq!(c.nts_ke.rate_limit, Some(KeRateLimitConfig::default()));
        let bad = [
            ("leak = 0", "leak"),
            ("burst = 0", "burst"),
            ("ipv4_prefix = 33", "ipv4_prefix"),
            ("table_entries = 1", "table_entries"),
        ];
        for (line, key) in bad {
            let e = parse(&format!("[access.rate_limit]\n{line}")).unwrap_err();
            assert!(e.contains(key), "{line}: {e}");
        }
        let e = parse("[access]\nallow = [\"192.0.2.0/33\"]").unwrap_err();
        assert!(e.contains("192.0.2.0/33"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(
            c.ntp.listen,
            vec!["0.0.0.0:123".parse().unwrap(), "[::]:123".parse().unwrap()]
        );
        assert_eq!(
            c.nts_ke.listen,
            vec![
                "0.0.0.0:4460".parse().unwrap(),
                "[::]:4460".parse().unwrap()
            ]
        );
        assert_eq!(c.keys.state_dir(), Some(Path::new(DEFAULT_DUMP_DIR)));
        assert_eq!(c.keys.rotate_interval.0, Duration::from_secs(86_400));
        assert_eq!(c.keys.keep, 7);
        assert_eq!(c.time.source, TimeSource::Kernel);
        assert_eq!(c.nts_ke.timeout.0, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse("colour = 1").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse("[ntp]\nworkerz = 2").unwrap_err();
        assert!(e.contains("workerz"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let cases = [
            ("[nts_ke.x]", ""),
            ("[keys]\nrotate_interval = \"500ms\"", "rotate_interval"),
            ("[keys]\nkeep = 0", "keep"),
            ("[time]\nstratum = 16", "stratum"),
            ("[time]\nrefid = \"TOOLONG\"", "refid"),
            ("[ntp]\nbackend = \"epoll\"", "epoll"),
            ("[ntp]\nlisten = []", "listen"),
            (
                "[keys]\ndump_dir = \"/x\"\nfleet_secret_file = \"/y\"",
                "dump_dir",
            ),
            (
                "[keys]\nfleet_accept_secret_files = [\"/y\"]",
                "requires fleet_secret_file",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = parse("").and_then(|mut c| {
            c.nts_ke.ntp_server = Some("ntp".into());
            c.validate().map(|_| c)
        });
        assert!(e.unwrap_err().contains("fully qualified"));
    }

    #[test]
    fn the_key_directory_by_mode() {
        let c = parse("[keys]\ndump_dir = \"\"").unwrap();
        assert_eq!(c.keys.state_dir(), None, "memory only, asked for");
        let c = parse("[keys]\ndump_dir = \"/srv/ntsd\"").unwrap();
        assert_eq!(c.keys.state_dir(), Some(Path::new("/srv/ntsd")));
        let c = parse("[keys]\nfleet_secret_file = \"/etc/ntsd/fleet\"").unwrap();
        assert_eq!(c.keys.state_dir(), None, "fleet keys are never written");
        let c = parse("[keys]\nfleet_secret_file = \"/etc/f\"\ndump_dir = \"\"").unwrap();
        assert_eq!(c.keys.state_dir(), None);
    }

    #[test]
    fn workers_and_threads_are_bounded() {
        let ok = "[nts_ke]\ncertificate_chain = \"/dev/null\"\nprivate_key = \"/dev/null\"\nthreads = 1024\n[ntp]\nworkers = 1024\n";
        let c: Config = toml::from_str(ok).unwrap();
        assert!(c.validate().is_ok());
        for (text, key) in [
            ("[ntp]\nworkers = 1025", "[ntp] workers"),
            ("[ntp]\nworkers = 1000000", "[ntp] workers"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key) && e.contains("1024"), "{e}");
        }
        let mut c = parse("").unwrap();
        c.nts_ke.threads = 100_000;
        let e = c.validate().unwrap_err();
        assert!(e.contains("[nts_ke] threads") && e.contains("1024"), "{e}");
    }

    #[test]
    fn keep_is_bounded() {
        assert!(parse("[keys]\nkeep = 1000").is_ok());
        for keep in ["1001", "65535", "4294967295"] {
            let e = parse(&format!("[keys]\nkeep = {keep}")).unwrap_err();
            assert!(e.contains("[keys] keep") && e.contains("1000"), "{e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn refids() {
        let mut t = TimeConfig::default();
        assert_eq!(t.refid_bytes(), Ok(*b"KERN"));
        t.refid = Some("GPS".into());
        assert_eq!(t.refid_bytes(), Ok(*b"GPS\0"));
        t.refid = Some("192.0.2.1".into());
        assert_eq!(t.refid_bytes(), Ok([192, 0, 2, 1]));
    }
}
