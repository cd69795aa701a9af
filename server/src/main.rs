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

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ntsd::cli::args::{Cli, Command, KeysAction};

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
