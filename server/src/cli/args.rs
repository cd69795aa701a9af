//! The command line, as clap reads it: `main.rs` dispatches on it, and the
//! man page and shell completions are generated from it (`tests/man.rs`
//! holds the committed ones to it).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ntsd",
    version = env!("NTSD_VERSION"),
    about = "Stateless high-throughput Network Time Security server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve NTP and NTS-KE until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = super::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file; exit non-zero with the reason if invalid.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = super::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Inspect or rotate the master keys that seal cookies.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Serve NTS on loopback with a throwaway CA; prints commands to verify it.
    Demo,
    /// Run NTS-KE and one authenticated NTP exchange against a server.
    Query {
        /// NTS-KE server, HOST[:PORT] (default port 4460).
        target: String,
        /// PEM file with the CA certificate(s) to trust instead of the public roots.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Seconds to wait for each step.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
        /// AEAD id to offer (15, 17 or 30), repeated in order of
        /// preference; default 15, 17, 30. Offering 30 also sends chrony's
        /// record 1024, as chrony 4.6.1 and later do.
        #[arg(long = "aead", value_name = "ID")]
        aeads: Vec<u16>,
    },
    /// Exit 0 if a running server is ready to take traffic (GET /readyz on
    /// its metrics endpoint is 200), else 1 with the reason: a health check.
    Ready {
        /// The metrics endpoint, http://HOST:PORT.
        #[arg(long, conflicts_with = "config")]
        metrics: Option<String>,
        /// A config file whose `[metrics] listen` names the endpoint
        /// (default /etc/ntsd/config.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Check liveness (/healthz) instead of readiness.
        #[arg(long)]
        live: bool,
    },
    /// A running server's counters, like `chronyc serverstats`.
    Stats {
        /// The metrics endpoint, http://HOST:PORT[/metrics].
        #[arg(long, conflicts_with = "config")]
        metrics: Option<String>,
        /// A config file whose `[metrics] listen` names the endpoint
        /// (default /etc/ntsd/config.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// A running server's clients, like `chronyc clients`: NTP packets,
    /// drops, interval, last seen, interleaved and NTS replies, most
    /// packets first.
    Clients {
        /// The metrics endpoint, http://HOST:PORT (the path is /clients).
        #[arg(long, conflicts_with = "config")]
        metrics: Option<String>,
        /// A config file whose `[metrics] listen` names the endpoint
        /// (default /etc/ntsd/config.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only the N clients with the most packets.
        #[arg(long, value_name = "N")]
        top: Option<usize>,
        /// Numeric addresses, as `chronyc -n`: ntsd always prints numbers.
        #[arg(short = 'n')]
        numeric: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Key ids, start times and roles (never the key bytes).
    List {
        /// The configuration file.
        #[arg(long, short, default_value = super::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Make the running server seal with a new key now (SIGUSR1 to the pid in dump_dir).
    Rotate {
        /// The configuration file.
        #[arg(long, short, default_value = super::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}
