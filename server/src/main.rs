//! ntsd: a stateless, high-throughput NTS (RFC 8915) server.
//!
//! ```text
//! ntsd run [--config FILE]      serve until SIGTERM/SIGINT (default /etc/ntsd/config.toml)
//! ntsd check-config [--config F] validate a configuration
//! ntsd demo                     NTS on loopback with a throwaway CA
//! ntsd query HOST[:PORT]        NTS-KE + one authenticated exchange
//! ntsd stats [--config F]       a running server's counters (serverstats)
//! ntsd clients [--config F]     a running server's clients (chronyc clients)
//! ```

use ntsd::cli::{demo, query};
use ntsd::run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ntsd",
    version = env!("NTSD_VERSION"),
    about = "Stateless high-throughput Network Time Security server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve NTP and NTS-KE until SIGTERM or SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = ntsd::cli::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration file; exit non-zero with the reason if invalid.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short, default_value = ntsd::cli::stats::DEFAULT_CONFIG)]
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
enum KeysAction {
    /// Key ids, start times and roles (never the key bytes).
    List {
        /// The configuration file.
        #[arg(long, short, default_value = ntsd::cli::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Make the running server seal with a new key now (SIGUSR1 to the pid in dump_dir).
    Rotate {
        /// The configuration file.
        #[arg(long, short, default_value = ntsd::cli::stats::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    // First of all: a stop signal during start-up must wait for its
    // handler, not kill the process (handled once `run` registers it).
    let serving = matches!(
        std::env::args().nth(1).as_deref(),
        Some("run") | Some("demo")
    );
    if serving {
        ntsd::block_signals();
    } else {
        ntsd::default_sigpipe();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => {
            init_logging();
            run::run_file(&config, |_| {})
        }
        Command::CheckConfig { config } => ntsd::cli::check::run(&config),
        Command::Keys { action } => match action {
            KeysAction::List { config } => ntsd::cli::keys::list(&config),
            KeysAction::Rotate { config } => ntsd::cli::keys::rotate(&config),
        },
        Command::Demo => {
            init_logging();
            demo::run()
        }
        Command::Query {
            target,
            ca,
            timeout,
            aeads,
        } => query::run(&target, ca.as_deref(), &aeads, Duration::from_secs(timeout)),
        Command::Ready {
            metrics,
            config,
            live,
        } => ntsd::cli::stats::probe(metrics.as_deref(), config.as_deref(), live).map(|body| {
            print!("{body}");
        }),
        Command::Stats { metrics, config } => {
            ntsd::cli::stats::run(metrics.as_deref(), config.as_deref())
        }
        Command::Clients {
            metrics,
            config,
            top,
            numeric: _,
        } => ntsd::cli::clients::run(metrics.as_deref(), config.as_deref(), top),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntsd: {e}");
            ExitCode::FAILURE
        }
    }
}
