//! `ntsd-bench`: a test PKI, NTS-KE and NTP/NTS load against a server, and
//! a bare UDP reflector. Every load command ends with one `RESULT` line.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use nts_client::{split_host_port, DEFAULT_KE_PORT};
use nts_proto::AeadAlgorithm;
use ntsd_bench::ke::KeTarget;
use ntsd_bench::keflood::without_resumption;
use ntsd_bench::procstat::{self_cpu_seconds, ServerProbe};
use ntsd_bench::report::ResultLine;
use ntsd_bench::{echo, flood, keflood, FloodConfig, KeFloodConfig, Session};

#[derive(Debug, Parser)]
#[command(name = "ntsd-bench", about = "Load generator for NTS servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a throwaway CA and a P-256 leaf for "localhost" into DIR
    /// (ca.pem, chain.pem, key.pem) and prints their paths.
    Pki {
        /// Directory to write into (created if missing; the files must not exist).
        dir: PathBuf,
    },
    /// One NTS-KE session; prints what was negotiated.
    Ke {
        /// NTS-KE server, HOST[:PORT].
        target: String,
        #[arg(long)]
        ca: Option<PathBuf>,
        #[command(flatten)]
        aead: AeadArg,
    },
    /// NTS-KE sessions, then verified NTS (or plain) requests, closed loop
    /// or paced.
    Flood(FloodArgs),
    /// Full NTS-KE sessions (new TCP and TLS each, no resumption) at a
    /// fixed concurrency.
    Keflood {
        /// NTS-KE server, HOST[:PORT].
        target: String,
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Sessions at once (one thread each).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Limit of one session.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        #[arg(long = "server-pid", value_name = "PID")]
        server_pid: Vec<u32>,
        /// Offer the post-quantum hybrid X25519MLKEM768 first (and X25519),
        /// as ntpd-rs 1.9 and other rustls clients on aws-lc-rs do; default:
        /// X25519 first, as chrony (GnuTLS) does.
        #[arg(long)]
        post_quantum: bool,
    },
    /// A server's response path on one clock: paced requests, one at a
    /// time, and for each verified reply its kernel receive timestamp T4
    /// minus the server's transmit timestamp T3 (meaningful for a server
    /// on this machine, over loopback).
    Path {
        /// NTS-KE server, HOST[:PORT] (with --plain: the NTP server HOST:PORT).
        target: String,
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Plain NTPv4 instead of NTS.
        #[arg(long)]
        plain: bool,
        /// Requests to send.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Seconds between requests (fractions allowed).
        #[arg(long, default_value_t = 0.02)]
        interval: f64,
        #[command(flatten)]
        aead: AeadArg,
    },
    /// A bare UDP reflector answering NTP requests with minimal server
    /// replies (until killed); the ceiling of the harness.
    Echo {
        /// ADDR:PORT to listen on (port 0: an ephemeral one, printed).
        #[arg(long)]
        listen: SocketAddr,
        /// Threads, each with its own SO_REUSEPORT socket.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

#[derive(Debug, clap::Args)]
struct FloodArgs {
    /// NTS-KE server, HOST[:PORT] (with --plain: the NTP server HOST:PORT).
    target: String,
    /// CA certificate (PEM) the server's must chain to; default: public roots.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Plain NTPv4 instead of NTS.
    #[arg(long)]
    plain: bool,
    #[command(flatten)]
    aead: AeadArg,
    /// Distinct NTS-KE sessions (client identities), dealt out to the
    /// threads; raised to --threads if lower.
    #[arg(long, default_value_t = 16)]
    sessions: usize,
    /// Outstanding requests, all threads together.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Sending time (fractions allowed).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Source sockets (ports) per thread.
    #[arg(long, default_value_t = 16)]
    sockets: usize,
    /// Send at most R requests/s (all threads together), still bounded
    /// by --window; default: closed loop, as fast as replies come.
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Never sleep: poll the sockets in a loop (each generator thread keeps
    /// its core busy). Round trips then leave out the generator's own
    /// wake-up, which on a VM can dominate latency at a paced rate.
    #[arg(long)]
    spin: bool,
    /// Spread the source sockets over N addresses, 127.0.0.1 and up (IPv4
    /// loopback targets): ntsd steers each client address to one worker,
    /// so a flood from one address loads one worker.
    #[arg(long = "source-addresses", value_name = "N", default_value_t = 1)]
    source_addresses: usize,
    /// Every request in interleaved form (RFC 9769, chrony's xleave): its
    /// origin names the receive timestamp of an earlier reply, so a server
    /// with interleaved mode saves each reply's transmit timestamp and
    /// answers with one. Interleaved replies are counted (interleaved=).
    #[arg(long)]
    xleave: bool,
    /// Server process whose CPU (with all its descendants) and peak RSS
    /// are reported; may be repeated.
    #[arg(long = "server-pid", value_name = "PID")]
    server_pid: Vec<u32>,
}

/// The AEADs a client offers in NTS-KE.
#[derive(Debug, Clone, clap::Args)]
struct AeadArg {
    /// AEAD id to offer (15, 17 or 30), repeated in order of preference;
    /// default: 15, 17, 30. Offering 30 also sends chrony's record 1024.
    #[arg(long = "aead", value_name = "ID")]
    ids: Vec<u16>,
}

impl AeadArg {
    fn algorithms(&self) -> Result<Vec<AeadAlgorithm>, String> {
        if self.ids.is_empty() {
            return Ok(AeadAlgorithm::ALL.to_vec());
        }
        self.ids
            .iter()
            .map(|&id| AeadAlgorithm::from_id(id).ok_or_else(|| format!("unsupported AEAD {id}")))
            .collect()
    }
}

fn secs(s: f64, what: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{what} must be a positive number of seconds"))
}

fn pct(cpu: f64, wall: Duration) -> f64 {
    cpu / wall.as_secs_f64().max(1e-9) * 100.0
}

fn print_result(r: &ResultLine) {
    println!("{r}");
    let _ = std::io::stdout().flush();
}

/// NTS-KE `sessions` times; returns the sessions and the NTP server.
fn nts_sessions(
    host: &str,
    port: u16,
    ca: Option<&std::path::Path>,
    aeads: &AeadArg,
    sessions: usize,
) -> Result<(Vec<Session>, (String, u16)), String> {
    let tls = nts_client::client_config(ca)?;
    let mut target = KeTarget::new(host, port, tls, Duration::from_secs(5))?;
    target.aeads = aeads.algorithms()?;
    let mut out = Vec::with_capacity(sessions);
    let mut ntp = (host.to_owned(), 123);
    for _ in 0..sessions {
        let ke = target.session().map_err(|e| e.to_string())?;
        ntp = (
            ke.result.server.clone().unwrap_or_else(|| host.to_owned()),
            ke.result.port.unwrap_or(123),
        );
        out.push(Session::new(ke.keys, &ke.result.cookies).map_err(|e| e.to_string())?);
    }
    Ok((out, ntp))
}

fn run_path(
    target: &str,
    ca: Option<&std::path::Path>,
    plain: bool,
    aead: &AeadArg,
    count: usize,
    interval: f64,
) -> Result<(), String> {
    let interval = Duration::try_from_secs_f64(interval)
        .map_err(|_| "--interval must be a number of seconds, 0 or more")?;
    let (host, port) = split_host_port(target, if plain { 123 } else { DEFAULT_KE_PORT })?;
    let (session, ntp) = if plain {
        (None, (host, port))
    } else {
        let (mut s, ntp) = nts_sessions(&host, port, ca, aead, 1)?;
        (s.pop(), ntp)
    };
    let target = (ntp.0.trim_end_matches('.'), ntp.1)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", ntp.0))?
        .next()
        .ok_or("NTP server has no address")?;
    let cfg = ntsd_bench::path::PathConfig {
        target,
        count,
        interval,
    };
    let r = ntsd_bench::path::measure(&cfg, session).map_err(|e| e.to_string())?;
    let [p5, p25, p50, p75, p95] = [0.05, 0.25, 0.5, 0.75, 0.95].map(|p| r.quantile_us(p));
    let iqr = p75 - p25;
    let mode = if plain { "plain" } else { "nts" };
    println!(
        "mode {mode} target {target} replies {} lost {} invalid {} no_timestamp {} | T4-T3 median {p50:.2} us, IQR {iqr:.2}, p5..p95 {p5:.2}..{p95:.2}",
        r.samples_ns.len(),
        r.lost,
        r.invalid,
        r.no_timestamp,
    );
    let mut line = ResultLine::new("path");
    line.push("mode", mode)
        .push("replies", r.samples_ns.len())
        .push("lost", r.lost)
        .push("invalid", r.invalid)
        .push("no_timestamp", r.no_timestamp)
        .push("t4_t3_p50_us", format!("{p50:.3}"))
        .push("t4_t3_iqr_us", format!("{iqr:.3}"))
        .push("t4_t3_p5_us", format!("{p5:.3}"))
        .push("t4_t3_p95_us", format!("{p95:.3}"));
    print_result(&line);
    if r.samples_ns.is_empty() {
        return Err("no verified reply with a kernel timestamp".into());
    }
    Ok(())
}

fn run_flood(a: FloodArgs) -> Result<(), String> {
    let FloodArgs {
        target,
        ca,
        plain,
        aead,
        sessions,
        window,
        seconds,
        threads,
        sockets,
        rate,
        spin,
        source_addresses,
        xleave,
        server_pid,
    } = a;
    let server_pid = server_pid.as_slice();
    let duration = secs(seconds, "--seconds")?;
    let (host, port) = split_host_port(&target, if plain { 123 } else { DEFAULT_KE_PORT })?;
    let (clients, ntp) = if plain {
        (Vec::new(), (host, port))
    } else {
        let n = sessions.max(threads).max(1);
        if n != sessions {
            eprintln!("ntsd-bench: --sessions raised to {n} (one per thread at least)");
        }
        nts_sessions(&host, port, ca.as_deref(), &aead, n)?
    };
    let target = (ntp.0.trim_end_matches('.'), ntp.1)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", ntp.0))?
        .next()
        .ok_or("NTP server has no address")?;
    let cfg = FloodConfig {
        target,
        window,
        duration,
        threads,
        sockets,
        rate,
        spin,
        source_addresses,
        xleave,
    };
    let gen0 = self_cpu_seconds();
    let probe = ServerProbe::start(server_pid);
    let t0 = Instant::now();
    let r = flood(&cfg, clients).map_err(|e| e.to_string())?;
    // CPU shares are over the whole measurement, the 1 s tail included.
    let wall = t0.elapsed();
    let gen_cpu = gen0.zip(self_cpu_seconds()).map(|(a, b)| pct(b - a, wall));
    let server = probe.finish();
    let mode = if plain { "plain" } else { "nts" };
    let (p50, p99, p999) = (
        r.percentile_us(0.5),
        r.percentile_us(0.99),
        r.percentile_us(0.999),
    );
    println!(
        "mode {mode} target {target} threads {threads} sockets {sockets} window {window} sent {} valid {} rate {:.0}/s lost {} late {} naks {} invalid {} errors {} p50_us {p50} p99_us {p99} p999_us {p999}",
        r.sent, r.valid, r.rate(), r.lost, r.late, r.naks, r.invalid, r.errors
    );
    if let Some(g) = gen_cpu {
        println!("generator_cpu {g:.0}%");
    }
    if let Some(s) = &server {
        println!(
            "server_cpu {:.0}% server_cpu_us_per_reply {:.2} server_rss_peak_kb {}",
            pct(s.cpu_s, wall),
            s.cpu_s * 1e6 / r.valid.max(1) as f64,
            s.rss_peak_kb.map_or("?".into(), |k| k.to_string())
        );
    } else if !server_pid.is_empty() {
        eprintln!("ntsd-bench: server pid(s) {server_pid:?} not found at both samples");
    }
    let mut line = ResultLine::new("flood");
    line.push("mode", mode)
        .push("threads", threads)
        .push("sockets", sockets)
        .push("source_addresses", ntsd_bench::flood::source_spread(&cfg))
        .push("window", window)
        .push("spin", spin)
        .push("sessions", if plain { 0 } else { sessions.max(threads) })
        .push("xleave", xleave);
    if let Some(rate) = rate {
        line.num("target_rate", rate, 0);
    }
    line.num("seconds", duration.as_secs_f64(), 3)
        .push("sent", r.sent)
        .push("valid", r.valid)
        .push("interleaved", r.interleaved)
        .num("rate", r.rate(), 0)
        .push("lost", r.lost)
        .push("late", r.late)
        .push("naks", r.naks)
        .push("invalid", r.invalid)
        .push("errors", r.errors)
        .push("p50_us", p50)
        .push("p99_us", p99)
        .push("p999_us", p999)
        .opt("gen_cpu_pct", gen_cpu, 1);
    if let Some(s) = &server {
        line.num("server_cpu_pct", pct(s.cpu_s, wall), 1).num(
            "server_cpu_us_per_reply",
            s.cpu_s * 1e6 / r.valid.max(1) as f64,
            3,
        );
        if let Some(kb) = s.rss_peak_kb {
            line.push("server_rss_peak_kb", kb);
        }
    }
    print_result(&line);
    if r.valid == 0 {
        return Err("no valid replies".into());
    }
    Ok(())
}

fn run_keflood(
    target: &str,
    ca: Option<PathBuf>,
    concurrency: usize,
    seconds: f64,
    timeout: f64,
    server_pid: &[u32],
    post_quantum: bool,
) -> Result<(), String> {
    let (host, port) = split_host_port(target, DEFAULT_KE_PORT)?;
    let base = if post_quantum {
        use rustls::crypto::aws_lc_rs::kx_group;
        nts_client::client_config_offering(
            ca.as_deref(),
            vec![kx_group::X25519MLKEM768, kx_group::X25519],
        )?
    } else {
        nts_client::client_config(ca.as_deref())?
    };
    let tls = without_resumption(&base);
    let cfg = KeFloodConfig {
        target: KeTarget::new(&host, port, tls, secs(timeout, "--timeout")?)?,
        concurrency: concurrency.max(1),
        duration: secs(seconds, "--seconds")?,
    };
    let gen0 = self_cpu_seconds();
    let probe = ServerProbe::start(server_pid);
    let r = keflood(&cfg);
    let gen_cpu = gen0
        .zip(self_cpu_seconds())
        .map(|(a, b)| pct(b - a, r.elapsed));
    let server = probe.finish();
    let (p50, p99) = (r.latency.percentile(0.5), r.latency.percentile(0.99));
    println!(
        "keflood concurrency {} ok {} failed {} rate {:.1}/s p50_us {p50} p99_us {p99}",
        cfg.concurrency,
        r.ok,
        r.failed,
        r.rate()
    );
    if !r.failures.is_empty() {
        let list: Vec<String> = r.failures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("failures: {}", list.join(", "));
    }
    if let Some(g) = gen_cpu {
        println!("generator_cpu {g:.0}%");
    }
    let per_cpu_s = server.map(|s| r.ok as f64 / s.cpu_s.max(1e-6));
    if let (Some(s), Some(h)) = (&server, per_cpu_s) {
        println!(
            "server_cpu {:.0}% server_handshakes_per_cpu_s {h:.0} server_rss_peak_kb {}",
            pct(s.cpu_s, r.elapsed),
            s.rss_peak_kb.map_or("?".into(), |k| k.to_string())
        );
    } else if !server_pid.is_empty() {
        eprintln!("ntsd-bench: server pid(s) {server_pid:?} not found at both samples");
    }
    let mut line = ResultLine::new("keflood");
    line.push("concurrency", cfg.concurrency)
        .num("seconds", cfg.duration.as_secs_f64(), 3)
        .push("ok", r.ok)
        .push("failed", r.failed)
        .num("rate", r.rate(), 1)
        .push("p50_us", p50)
        .push("p99_us", p99)
        .opt("gen_cpu_pct", gen_cpu, 1);
    if let Some(s) = &server {
        line.num("server_cpu_pct", pct(s.cpu_s, r.elapsed), 1).opt(
            "server_handshakes_per_cpu_s",
            per_cpu_s,
            1,
        );
        if let Some(kb) = s.rss_peak_kb {
            line.push("server_rss_peak_kb", kb);
        }
    }
    for (reason, n) in &r.failures {
        line.push(&format!("fail_{reason}"), n);
    }
    print_result(&line);
    if r.ok == 0 {
        return Err("no successful NTS-KE session".into());
    }
    Ok(())
}

fn run_echo(listen: SocketAddr, threads: usize) -> Result<(), String> {
    let sockets = echo::bind(listen, threads).map_err(|e| format!("cannot bind {listen}: {e}"))?;
    let addr = sockets
        .first()
        .and_then(|s| s.local_addr().ok())
        .ok_or("no socket")?;
    println!("echo listening on {addr}");
    let _ = std::io::stdout().flush();
    // Never set: the reflector runs until a signal ends the process.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for sock in &sockets {
            s.spawn(|| echo::serve(sock, &stop));
        }
    });
    Ok(())
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Pki { dir } => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            nts_client::write_test_pki(&dir)?;
            for name in ["ca.pem", "chain.pem", "key.pem"] {
                println!("{}", dir.join(name).display());
            }
            Ok(())
        }
        Command::Ke { target, ca, aead } => {
            let (host, port) = split_host_port(&target, DEFAULT_KE_PORT)?;
            let tls = nts_client::client_config(ca.as_deref())?;
            let mut target = KeTarget::new(&host, port, tls, Duration::from_secs(5))?;
            target.aeads = aead.algorithms()?;
            let start = Instant::now();
            let ke = target.session().map_err(|e| e.to_string())?;
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
        Command::Flood(a) => run_flood(a),
        Command::Path {
            target,
            ca,
            plain,
            count,
            interval,
            aead,
        } => run_path(&target, ca.as_deref(), plain, &aead, count, interval),
        Command::Keflood {
            target,
            ca,
            concurrency,
            seconds,
            timeout,
            server_pid,
            post_quantum,
        } => run_keflood(
            &target,
            ca,
            concurrency,
            seconds,
            timeout,
            &server_pid,
            post_quantum,
        ),
        Command::Echo { listen, threads } => run_echo(listen, threads),
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
