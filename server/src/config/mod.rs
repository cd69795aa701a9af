//! The TOML configuration: the names operators and tests rely on
//! (config.toml.example shows each with its default), unknown keys
//! refused, one file per section, each with its own `validate`, and
//! [`Config::validate`] running them all. Imports no plane: the planes read
//! these types, never the other way round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod access;
mod addr;
mod duration;
mod keys;
mod metrics;
mod ntp;
mod nts_ke;
mod server;
mod time;

pub use access::{AccessConfig, Cidr, RateLimitConfig};
pub use duration::{parse_duration, HumanDuration};
pub use keys::{KeysConfig, DEFAULT_DUMP_DIR};
pub use metrics::MetricsConfig;
pub use ntp::{Backend, NtpConfig};
pub use nts_ke::{CertPair, KeRateLimitConfig, NtsKeConfig};
pub use server::ServerConfig;
pub use time::{TimeConfig, TimeSource};

/// Largest `[ntp] workers` and `[nts_ke] threads`: more threads than any
/// host has cores only cost memory and descriptors (each NTP worker holds
/// a socket per listen address and, with io_uring, a ring and its buffers).
pub const MAX_THREADS: usize = 1024;

/// A configuration error that names the file, the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

/// A whole configuration file, one field per `[section]`.
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

/// `[ntp] workers` and `[nts_ke] threads` (`key`) are at most
/// [`MAX_THREADS`].
pub(crate) fn check_threads(key: &str, n: usize) -> Result<(), String> {
    if n > MAX_THREADS {
        return Err(format!(
            "{key}: {n} is above the maximum of {MAX_THREADS} (0 means one per core)"
        ));
    }
    Ok(())
}

/// The checks every rate limit shares: `key` names its table.
pub(crate) fn check_rate(key: &str, interval: Duration, burst: u32) -> Result<(), String> {
    if interval < Duration::from_millis(1) {
        return Err(format!("{key} interval: must be at least 1ms"));
    }
    if !(1..=65_535).contains(&burst) {
        return Err(format!("{key} burst: must be 1..=65535"));
    }
    Ok(())
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
        self.ntp.validate()?;
        self.nts_ke.validate()?;
        self.keys.validate()?;
        self.time.validate()?;
        self.server.validate()?;
        self.access.validate()
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
