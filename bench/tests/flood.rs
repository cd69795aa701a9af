//! The generator against an in-process responder running the real protocol
//! core (every reply verifies, NAKs and silence are counted as such), and
//! the `ntsd-bench` binary against its own reflector and against ntsd
//! (`ntsd demo`, the workspace's binary), parsing the RESULT line. Every process a test starts is killed when the test ends, also
//! when it fails.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nts_proto::cookie::{seal_cookie, MasterKey, SingleKey};
use nts_proto::{
    Action, AeadAlgorithm, AeadKey, NtpTimestamp, Random, Server, SessionKeys, SystemInfo,
};
use ntsd_bench::{flood, FloodConfig, Session};

const BIN: &str = env!("CARGO_BIN_EXE_ntsd-bench");

struct Counter(u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

/// A responder on loopback sealing and opening cookies under `master`.
fn responder(stop: Arc<AtomicBool>, master: [u8; 32]) -> (u16, std::thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let ring = SingleKey::new(1, MasterKey::from_bytes(&master));
        let mut system = SystemInfo::unsynchronized();
        system.leap = nts_proto::Leap::NoWarning;
        system.stratum = 1;
        let server = Server {
            keys: &ring,
            system: &system,
        };
        let mut rng = Counter(0);
        let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Action::Reply { len, .. } =
                server.handle(NtpTimestamp(7), &buf[..n], &mut out, &mut rng)
            {
                sock.send_to(&out[..len], peer).unwrap();
            }
        }
    });
    (port, handle)
}

fn sessions(count: usize, master: [u8; 32]) -> Vec<Session> {
    let master = MasterKey::from_bytes(&master);
    (0..count)
        .map(|i| {
            let alg = AeadAlgorithm::AesSivCmac256;
            let keys = SessionKeys {
                c2s: AeadKey::new(alg, &[i as u8; 32]).unwrap(),
                s2c: AeadKey::new(alg, &[i as u8 ^ 0xff; 32]).unwrap(),
            };
            let cookies: Vec<Vec<u8>> = (0..8)
                .map(|j| {
                    let mut c = vec![0u8; 100];
                    seal_cookie(1, &master, &[j; 16], &keys, &mut c).unwrap();
                    c
                })
                .collect();
            Session::new(keys, &cookies).unwrap()
        })
        .collect()
}

fn run(master_server: [u8; 32], master_client: [u8; 32], nts: bool) -> ntsd_bench::FloodReport {
    let stop = Arc::new(AtomicBool::new(false));
    let (port, handle) = responder(stop.clone(), master_server);
    let mut cfg = FloodConfig::new(([127, 0, 0, 1], port).into(), 4, Duration::from_millis(500));
    cfg.threads = 2;
    cfg.sockets = 2;
    let s = if nts {
        sessions(4, master_client)
    } else {
        Vec::new()
    };
    let report = flood(&cfg, s);
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    report.unwrap()
}

#[test]
fn nts_flood_verifies_every_reply_and_reuses_new_cookies() {
    let r = run([5; 32], [5; 32], true);
    // Far more replies than the 32 initial cookies: new cookies were used.
    assert!(r.valid > 100, "{r:?}");
    assert_eq!(
        (r.invalid, r.naks, r.lost, r.late, r.errors),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(r.sent, r.valid);
    assert!(r.percentile_us(0.5) > 0);
}

#[test]
fn plain_flood_counts_valid_replies() {
    let r = run([5; 32], [5; 32], false);
    assert!(r.valid > 100, "{r:?}");
    assert_eq!((r.invalid, r.naks, r.lost), (0, 0, 0));
}

#[test]
fn cookies_under_an_unknown_key_are_counted_as_naks() {
    let r = run([5; 32], [6; 32], true);
    assert_eq!(r.valid, 0);
    assert_eq!(r.naks, 32, "{r:?}");
}

#[test]
fn silence_is_counted_lost_within_the_timeout() {
    // A bound socket that never answers.
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = FloodConfig::new(sink.local_addr().unwrap(), 3, Duration::from_millis(100));
    cfg.sockets = 1;
    let t0 = Instant::now();
    let r = flood(&cfg, Vec::new()).unwrap();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!((r.sent, r.lost, r.valid), (3, 3, 0), "{r:?}");
}

/// A child process killed (and reaped) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ntsd-bench args`, returns it and its stdout lines as they come.
fn start(args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    spawn(BIN.as_ref(), args)
}

/// `program` with `args`, its stdout read line by line on a thread.
fn spawn(program: &std::path::Path, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

/// Lines until one contains `marker` (panics after 10 s).
fn wait_for(rx: &mpsc::Receiver<String>, marker: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                let done = l.contains(marker);
                lines.push(l);
                if done {
                    return lines;
                }
            }
            Err(_) => panic!("no {marker:?} within 10 s; got {lines:?}"),
        }
    }
}

/// Runs `ntsd-bench args` to completion (killed after 20 s); returns the
/// exit success and the RESULT line's pairs.
fn bench(args: &[&str]) -> (bool, HashMap<String, String>) {
    let (mut p, rx) = start(args);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ntsd-bench {args:?} ran over 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<String> = rx.iter().collect();
    let last = lines.last().cloned().unwrap_or_default();
    let kv = ntsd_bench::report::parse(&last)
        .unwrap_or_else(|| panic!("last line is no RESULT line: {lines:?}"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("RESULT ")).count(),
        1,
        "{lines:?}"
    );
    let kv = kv
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (status.success(), kv)
}

fn num(kv: &HashMap<String, String>, key: &str) -> f64 {
    kv.get(key)
        .unwrap_or_else(|| panic!("no {key} in {kv:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {kv:?}"))
}

/// `ntsd-bench echo` on an ephemeral loopback port, and its address.
fn reflector(extra: &[&str]) -> (Proc, String) {
    let (echo, rx) = start(&[&["echo", "--listen", "127.0.0.1:0"], extra].concat());
    let line = wait_for(&rx, "echo listening on").pop().unwrap();
    let addr = line.split_whitespace().nth(3).unwrap().to_owned();
    (echo, addr)
}

/// The workspace's `ntsd` binary, in the target directory and profile of
/// this test. Cargo gives a test the path only of its own package's
/// binaries, and `ntsd-bench` does not depend on the server (so that its
/// numbers never move with the server's internals), so the test asks cargo
/// to build it: a no-op under `cargo test --workspace`, which built it
/// already.
fn ntsd_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/flood-<hash>
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build", "--quiet", "--locked", "-p", "ntsd", "--bin", "ntsd",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name() == Some("release".as_ref()) {
        build.arg("--release");
    }
    let status = build.status().unwrap();
    assert!(status.success(), "cargo build -p ntsd failed: {status}");
    let bin = profile_dir.join("ntsd");
    assert!(
        bin.is_file(),
        "{} is missing after the build",
        bin.display()
    );
    bin
}

/// `ntsd demo`: returns it, the NTS-KE target and the CA path.
fn ntsd_demo() -> (Proc, String, String) {
    let (p, rx) = spawn(&ntsd_binary(), &["demo"]);
    let lines = wait_for(&rx, "Stop with");
    let query = lines
        .iter()
        .find(|l| l.contains(" query localhost:"))
        .unwrap();
    let words: Vec<&str> = query.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "query").unwrap();
    let ca = words.iter().position(|w| *w == "--ca").unwrap();
    (p, words[at + 1].to_owned(), words[ca + 1].to_owned())
}

#[test]
fn plain_flood_against_the_reflector_with_two_threads() {
    let (echo, addr) = reflector(&["--threads", "2"]);
    let pid = echo.0.id().to_string();
    let (ok, kv) = bench(&[
        "flood",
        &addr,
        "--plain",
        "--threads",
        "2",
        "--sockets",
        "4",
        "--seconds",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert!(ok, "{kv:?}");
    assert_eq!(kv["kind"], "flood");
    assert_eq!(kv["mode"], "plain");
    assert_eq!(kv["threads"], "2");
    assert!(num(&kv, "valid") > 100.0, "{kv:?}");
    assert_eq!(
        (num(&kv, "invalid"), num(&kv, "naks")),
        (0.0, 0.0),
        "{kv:?}"
    );
    assert!(num(&kv, "server_rss_peak_kb") > 0.0, "{kv:?}");
    assert!(num(&kv, "server_cpu_us_per_reply") >= 0.0, "{kv:?}");
    assert!(num(&kv, "p99_us") >= num(&kv, "p50_us"), "{kv:?}");
    drop(echo);
}

/// A plain flood paced at 2,000 requests/s for 1 s, checked to keep to the
/// rate with every reply valid; its RESULT keys.
fn paced_plain(addr: &str, extra: &[&str]) -> HashMap<String, String> {
    let paced = ["flood", addr, "--plain", "--rate", "2000", "--seconds", "1"];
    let (ok, kv) = bench(&[&paced[..], extra].concat());
    assert!(ok, "{kv:?}");
    let sent = num(&kv, "sent");
    assert!((1500.0..=2200.0).contains(&sent), "{kv:?}");
    assert_eq!(num(&kv, "invalid"), 0.0, "{kv:?}");
    kv
}

#[test]
fn paced_plain_flood_keeps_to_the_rate() {
    let (echo, addr) = reflector(&[]);
    paced_plain(&addr, &["--threads", "2"]);
    drop(echo);
}

#[test]
fn spinning_flood_keeps_to_the_rate_without_sleeping() {
    let (echo, addr) = reflector(&[]);
    let sleeping = paced_plain(&addr, &[]);
    assert_eq!(sleeping.get("spin").map(String::as_str), Some("false"));
    let spinning = paced_plain(&addr, &["--spin"]);
    assert_eq!(spinning.get("spin").map(String::as_str), Some("true"));
    // The same paced load costs a spinning generator its whole core; a
    // sleeping one, what its wake-ups cost (about a third of a core on a VM).
    let (busy, idle) = (num(&spinning, "gen_cpu_pct"), num(&sleeping, "gen_cpu_pct"));
    assert!(busy > 1.5 * idle, "spinning {busy} % vs sleeping {idle} %");
    drop(echo);
}

#[test]
fn nts_flood_against_ntsd_with_two_threads() {
    let (server, target, ca) = ntsd_demo();
    let pid = server.0.id().to_string();
    let (ok, kv) = bench(&[
        "flood",
        &target,
        "--ca",
        &ca,
        "--threads",
        "2",
        "--sessions",
        "4",
        "--window",
        "16",
        "--seconds",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert!(ok, "{kv:?}");
    assert_eq!(kv["mode"], "nts");
    // More replies than the 32 cookies from NTS-KE: new cookies were used.
    assert!(num(&kv, "valid") > 32.0, "{kv:?}");
    for k in ["invalid", "naks", "lost", "errors"] {
        assert_eq!(num(&kv, k), 0.0, "{k} in {kv:?}");
    }
    assert!(num(&kv, "server_cpu_pct") > 0.0, "{kv:?}");
    assert!(num(&kv, "server_rss_peak_kb") > 0.0, "{kv:?}");
    drop(server);
}

#[test]
fn path_against_ntsd_measures_every_reply() {
    let (server, target, ca) = ntsd_demo();
    let (ok, kv) = bench(&[
        "path",
        &target,
        "--ca",
        &ca,
        "--count",
        "40",
        "--interval",
        "0.001",
    ]);
    assert!(ok, "{kv:?}");
    assert_eq!(kv["mode"], "nts");
    // 40 requests from one NTS-KE session of 8 cookies: new cookies were used.
    assert_eq!(num(&kv, "replies"), 40.0, "{kv:?}");
    for k in ["lost", "invalid", "no_timestamp"] {
        assert_eq!(num(&kv, k), 0.0, "{k} in {kv:?}");
    }
    // The reply reaches the kernel after the server read T3 (less any seal
    // compensation, well under a microsecond), and within 10 ms on loopback.
    let p50 = num(&kv, "t4_t3_p50_us");
    assert!(p50 > 0.0 && p50 < 10_000.0, "{kv:?}");
    assert!(num(&kv, "t4_t3_p5_us") <= p50, "{kv:?}");
    drop(server);
}

#[test]
fn keflood_against_ntsd() {
    let (server, target, ca) = ntsd_demo();
    let pid = server.0.id().to_string();
    let (ok, kv) = bench(&[
        "keflood",
        &target,
        "--ca",
        &ca,
        "--concurrency",
        "2",
        "--seconds",
        "1",
        "--server-pid",
        &pid,
    ]);
    assert!(ok, "{kv:?}");
    assert_eq!(kv["kind"], "keflood");
    assert!(num(&kv, "ok") > 0.0, "{kv:?}");
    assert_eq!(num(&kv, "failed"), 0.0, "{kv:?}");
    assert!(num(&kv, "server_handshakes_per_cpu_s") > 0.0, "{kv:?}");
    assert!(num(&kv, "rate") > 0.0, "{kv:?}");
    drop(server);
}

#[test]
fn keflood_counts_refused_connections_by_reason() {
    // A port nobody listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = format!("127.0.0.1:{port}");
    let (ok, kv) = bench(&["keflood", &target, "--concurrency", "1", "--seconds", "0.2"]);
    assert!(!ok);
    assert_eq!(num(&kv, "ok"), 0.0);
    assert!(num(&kv, "fail_refused") > 0.0, "{kv:?}");
}
