//! `ntsd-bench`: NTS-KE and closed-loop NTP/NTS load against a server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nts_proto::client::NtsClient;
use nts_proto::AeadAlgorithm;
use ntsd::query::{key_exchange, split_host_port, DEFAULT_KE_PORT};
use ntsd_bench::{cpu_seconds, flood, FloodConfig};

#[derive(Debug, Parser)]
#[command(name = "ntsd-bench", about = "Load generator for NTS servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One NTS-KE session; prints what was negotiated.
    Ke {
        /// NTS-KE server, HOST[:PORT].
        target: String,
        #[arg(long)]
        ca: Option<PathBuf>,
    },
    /// NTS-KE sessions, then a closed loop of verified NTS (or plain) requests.
    Flood {
        /// NTS-KE server, HOST[:PORT] (with --plain: the NTP server HOST:PORT).
        target: String,
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Plain NTPv4 instead of NTS.
        #[arg(long)]
        plain: bool,
        /// Distinct NTS-KE sessions (client identities).
        #[arg(long, default_value_t = 16)]
        sessions: usize,
        /// Outstanding requests (one per source socket).
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Report the server's CPU time per reply for this pid.
        #[arg(long)]
        server_pid: Option<u32>,
    },
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Ke { target, ca } => {
            let (host, port) = split_host_port(&target, DEFAULT_KE_PORT)?;
            let cfg = ntsd::tls::client_config(ca.as_deref())?;
            let start = Instant::now();
            let ke = key_exchange(
                &host,
                port,
                cfg,
                &AeadAlgorithm::ALL,
                Duration::from_secs(5),
            )?;
            let r = ke.result;
            println!(
                "aead {} cookies {} cookie_len {} server {} port {} time_ms {:.2}",
                r.aead.id(),
                r.cookies.len(),
                r.cookies.first().map_or(0, Vec::len),
                r.server.as_deref().unwrap_or("-"),
                r.port.map_or("-".into(), |p| p.to_string()),
                start.elapsed().as_secs_f64() * 1e3
            );
            Ok(())
        }
        Command::Flood {
            target,
            ca,
            plain,
            sessions,
            window,
            seconds,
            server_pid,
        } => {
            let (host, port) = split_host_port(&target, if plain { 123 } else { DEFAULT_KE_PORT })?;
            let mut clients = Vec::new();
            let mut ntp = (host.clone(), port);
            if !plain {
                let cfg = ntsd::tls::client_config(ca.as_deref())?;
                for _ in 0..sessions.max(1) {
                    let ke = key_exchange(
                        &host,
                        port,
                        cfg.clone(),
                        &AeadAlgorithm::ALL,
                        Duration::from_secs(5),
                    )?;
                    ntp = (
                        ke.result.server.clone().unwrap_or_else(|| host.clone()),
                        ke.result.port.unwrap_or(123),
                    );
                    clients.push(NtsClient::new(ke.keys, ke.result.cookies));
                }
            }
            let target =
                std::net::ToSocketAddrs::to_socket_addrs(&(ntp.0.trim_end_matches('.'), ntp.1))
                    .map_err(|e| e.to_string())?
                    .next()
                    .ok_or("NTP server has no address")?;
            let cfg = FloodConfig {
                target,
                window,
                duration: Duration::from_secs(seconds),
            };
            let (gen0, srv0) = (
                cpu_seconds(std::process::id()),
                server_pid.and_then(cpu_seconds),
            );
            let r = flood(&cfg, &mut clients).map_err(|e| e.to_string())?;
            let (gen1, srv1) = (
                cpu_seconds(std::process::id()),
                server_pid.and_then(cpu_seconds),
            );
            let secs = r.elapsed.as_secs_f64();
            println!(
                "mode {} sent {} valid {} rate {:.0}/s lost {} naks {} invalid {} p50_us {} p99_us {} p999_us {}",
                if plain { "plain" } else { "nts" },
                r.sent,
                r.valid,
                r.rate(),
                r.lost,
                r.naks,
                r.invalid,
                r.percentile_us(0.5),
                r.percentile_us(0.99),
                r.percentile_us(0.999)
            );
            if let (Some(a), Some(b)) = (gen0, gen1) {
                println!("generator_cpu {:.0}%", (b - a) / secs * 100.0);
            }
            if let (Some(a), Some(b)) = (srv0, srv1) {
                println!(
                    "server_cpu {:.0}% server_cpu_us_per_reply {:.2}",
                    (b - a) / secs * 100.0,
                    (b - a) * 1e6 / r.valid.max(1) as f64
                );
            }
            if r.valid == 0 {
                return Err("no valid replies".into());
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ntsd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
