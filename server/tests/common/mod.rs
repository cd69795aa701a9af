//! Test harness: runs the real `ntsd` binary on loopback ephemeral ports,
//! reads the bound ports from its log, scrapes its metrics, and kills it on
//! drop so a failing test never leaves a process behind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ntsd");

pub struct Ntsd {
    child: Option<Child>,
    _dir_guard: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub ke_port: u16,
    pub ntp_port: u16,
    pub metrics_port: u16,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// A directory with `ca.pem`, `chain.pem` and `key.pem`, removed on drop.
pub fn pki_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("ntsd-test-")
        .tempdir()
        .unwrap();
    nts_client::write_test_pki(dir.path()).unwrap();
    dir
}

pub fn ipv6_loopback() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

/// A config listening on loopback ephemeral ports; `extra` is appended to
/// the given sections (a map of section name to lines).
pub fn config_text(
    dir: &Path,
    backend: &str,
    ntp_extra: &str,
    ke_extra: &str,
    tail: &str,
) -> String {
    let listen = if ipv6_loopback() {
        r#"["127.0.0.1:0", "[::1]:0"]"#
    } else {
        r#"["127.0.0.1:0"]"#
    };
    format!(
        r#"[ntp]
listen = {listen}
workers = 2
backend = "{backend}"
{ntp_extra}

[nts_ke]
listen = {listen}
certificate_chain = "{chain}"
private_key = "{key}"
threads = 1
{ke_extra}

[time]
source = "local"
stratum = 1
refid = "TEST"

[metrics]
listen = "127.0.0.1:0"
{keys}
{tail}
"#,
        chain = dir.join("chain.pem").display(),
        key = dir.join("key.pem").display(),
        // Never the default /var/lib/ntsd of the host running the tests.
        keys = match tail.contains("[keys]") {
            true => String::new(),
            false => format!("[keys]\ndump_dir = \"{}\"\n", dir.join("state").display()),
        },
    )
}

/// Writes `dir/name` with the test config plus `tail`; returns its path.
pub fn write_config(dir: &Path, name: &str, backend: &str, tail: &str) -> PathBuf {
    let cfg = dir.join(name);
    std::fs::write(&cfg, config_text(dir, backend, "", "", tail)).unwrap();
    cfg
}

fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// The port of the first address in the list that follows `marker` in a
/// log line (`ntp=[127.0.0.1:4000, [::1]:4000]`).
fn first_port(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.char_indices()
        .filter(|&(_, c)| c == ',' || c == ']')
        .find_map(|(i, _)| rest[..i].parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port())
}

impl Ntsd {
    pub fn start(backend: &str) -> Ntsd {
        Self::start_with(backend, "", "", "")
    }

    pub fn start_with(backend: &str, ntp_extra: &str, ke_extra: &str, tail: &str) -> Ntsd {
        let guard = pki_dir();
        let dir = guard.path().to_owned();
        let cfg = dir.join("ntsd.toml");
        std::fs::write(&cfg, config_text(&dir, backend, ntp_extra, ke_extra, tail)).unwrap();
        let mut s = Self::spawn(dir, &cfg);
        s._dir_guard = Some(guard);
        s
    }

    /// Runs `ntsd run --config cfg`; `dir` holds the PKI and outlives the
    /// process (the caller owns it, so a test can restart the server).
    pub fn spawn(dir: PathBuf, cfg: &Path) -> Ntsd {
        Self::try_spawn(dir, cfg).unwrap_or_else(|log| panic!("ntsd exited early:\n{log}"))
    }

    /// Like [`Ntsd::spawn`], but returns the log if the process exits before
    /// it is ready (for tests of startup errors).
    pub fn try_spawn(dir: PathBuf, cfg: &Path) -> Result<Ntsd, String> {
        Self::try_spawn_env(dir, cfg, &[])
    }

    /// Like [`Ntsd::try_spawn`], with extra environment variables.
    pub fn try_spawn_env(dir: PathBuf, cfg: &Path, env: &[(&str, &str)]) -> Result<Ntsd, String> {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config"])
            .arg(cfg)
            .envs(env.iter().copied());
        Self::try_spawn_command(dir, cmd)
    }

    /// Runs `cmd`, which must end up as `ntsd run` in the same process (a
    /// wrapper that execs it, such as `unshare`), and waits until it is
    /// ready.
    pub fn try_spawn_command(dir: PathBuf, mut cmd: Command) -> Result<Ntsd, String> {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ntsd");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let mut s = Ntsd {
            child: Some(child),
            _dir_guard: None,
            dir,
            ke_port: 0,
            ntp_port: 0,
            metrics_port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            {
                let lines = s.log.lock().unwrap();
                for l in lines.iter() {
                    if l.contains("metrics endpoint listening") {
                        s.metrics_port = port_after(l, "127.0.0.1:").unwrap_or(0);
                    }
                    if l.contains("ntsd ready") {
                        s.ntp_port = first_port(l, "ntp=[").unwrap_or(0);
                        s.ke_port = first_port(l, "nts_ke=[").unwrap_or(0);
                    }
                }
            }
            if s.ke_port != 0 && s.ntp_port != 0 {
                return Ok(s);
            }
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!("exit {status}:\n{}", s.log_text()));
            }
            assert!(
                Instant::now() < deadline,
                "ntsd did not become ready:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (up to 5 s) until the log has a line containing `needle`:
    /// the log is read by another thread, a moment behind the server.
    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on the metrics listener: the status code and the body.
    pub fn http_get(&self, path: &str) -> (u16, String) {
        assert_ne!(self.metrics_port, 0, "metrics endpoint not configured");
        http_get(self.metrics_port, path)
    }

    /// The text exposition from `/metrics`.
    pub fn metrics_text(&self) -> String {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "{body}");
        body
    }

    /// All metrics as (name-with-labels, value), values as floats.
    pub fn metrics_f64(&self) -> Vec<(String, f64)> {
        parse_metrics(&self.metrics_text())
    }

    /// All integer-valued metrics as (name-with-labels, value).
    pub fn metrics(&self) -> Vec<(String, u64)> {
        self.metrics_f64()
            .into_iter()
            .filter(|(_, v)| *v >= 0.0 && v.fract() == 0.0)
            .map(|(k, v)| (k, v as u64))
            .collect()
    }

    /// The sum of every series of `family` (all label values).
    pub fn metric_sum(&self, family: &str) -> u64 {
        self.metrics()
            .into_iter()
            .filter(|(k, _)| {
                k == family || k.strip_prefix(family).is_some_and(|r| r.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    pub fn metric(&self, key: &str) -> u64 {
        self.metrics()
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, v)| v)
    }

    /// Waits until `key` reaches at least `min` (counters are updated by
    /// other threads), returning its final value.
    pub fn wait_metric(&self, key: &str, min: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric(key);
            if v >= min || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(self) -> ExitStatus {
        unsafe_free_kill(self.pid(), "TERM");
        self.wait_exit()
    }

    /// Waits up to 10 s for the process to exit; kills it and fails if not.
    pub fn wait_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ntsd did not stop within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Rewrites the key file at `path` as a release writing format version
/// `v` would: the version field set and the trailing SHA-256 made good.
/// Returns the new bytes.
pub fn set_key_file_version(path: &Path, v: u16) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let mut body = bytes[..bytes.len() - 32].to_vec();
    body[8..10].copy_from_slice(&v.to_be_bytes());
    let sum = ring::digest::digest(&ring::digest::SHA256, &body);
    body.extend_from_slice(sum.as_ref());
    std::fs::write(path, &body).unwrap();
    body
}

/// Sends a signal with kill(1), keeping the tests free of unsafe code.
pub fn unsafe_free_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Ntsd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// NTS-KE against the test server, trusting its CA.
pub fn key_exchange(s: &Ntsd) -> nts_client::KeOutcome {
    try_key_exchange(s).unwrap()
}

/// [`key_exchange`], with the error instead of a panic.
pub fn try_key_exchange(s: &Ntsd) -> Result<nts_client::KeOutcome, String> {
    let cfg = nts_client::client_config(Some(&s.ca())).unwrap();
    nts_client::key_exchange(
        "localhost",
        s.ke_port,
        cfg,
        &nts_proto::AeadAlgorithm::ALL,
        Duration::from_secs(5),
    )
}

pub fn udp_client(port: u16) -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s
}

/// Sends `req` and returns the reply, or `None` on timeout.
pub fn exchange(sock: &std::net::UdpSocket, req: &[u8]) -> Option<Vec<u8>> {
    sock.send(req).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Runs a command to completion; returns its success and stdout + stderr.
pub fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("run command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[allow(unused_imports)]
pub use testkit::{have, is_root, require};

/// The NTP back ends to test: both, or only `portable` (with a skip that
/// says why) where io_uring is blocked (Docker's default seccomp profile,
/// `kernel.io_uring_disabled`) or the kernel is older than 6.0.
pub fn backends() -> Vec<&'static str> {
    let uring = ntsd::io_uring_probe();
    let why = match &uring {
        Ok(()) => String::new(),
        Err(e) => format!("io_uring ({e})"),
    };
    match require(&why, uring.is_ok()) {
        true => vec!["io-uring", "portable"],
        false => vec!["portable"],
    }
}

/// What one NTS exchange with a cookie came to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Authenticated,
    Nak,
    Other(String),
}

/// One NTS exchange with the next cookie of `client` against `port`.
pub fn try_cookie(client: &mut nts_proto::client::NtsClient, port: u16, seed: u64) -> Outcome {
    use nts_proto::client::ClientError;
    let sock = udp_client(port);
    let mut random = [0u8; 48];
    for (i, b) in random.iter_mut().enumerate() {
        *b = (seed as u8).wrapping_mul(31).wrapping_add(i as u8);
    }
    let mut buf = [0u8; 2048];
    let (len, pending) = client
        .build_request(nts_proto::NtpTimestamp(seed), &random, 1, &mut buf)
        .unwrap();
    match exchange(&sock, &buf[..len]) {
        None => Outcome::Other("no reply".into()),
        Some(reply) => match client.verify_reply(&reply, &pending) {
            Ok(_) => Outcome::Authenticated,
            Err(ClientError::Nak) => Outcome::Nak,
            Err(e) => Outcome::Other(e.to_string()),
        },
    }
}

/// An NTS client holding the cookies of one KE session with `s`, and the
/// key id (epoch) of its first cookie.
pub fn client_of(s: &Ntsd) -> (nts_proto::client::NtsClient, u32) {
    let ke = key_exchange(s);
    let id = u32::from_be_bytes(ke.result.cookies[0][..4].try_into().unwrap());
    (
        nts_proto::client::NtsClient::new(ke.keys, ke.result.cookies),
        id,
    )
}

/// `GET path` over HTTP/1.0 on 127.0.0.1:`port`: the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    try_http_get(port, path).unwrap()
}

/// [`http_get`], with the I/O error instead of a panic: for polling a
/// server that may still be starting (and reset connections meanwhile).
pub fn try_http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

/// Parses the Prometheus text format into (name-with-labels, value).
pub fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// `sh -ec script ARGS...` in a new network and mount namespace (private
/// mounts): the script sets the namespaces up and execs what runs there,
/// so the spawned process is the one the harness watches and kills.
pub fn in_namespaces(script: &str) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-ec",
        script,
    ]);
    cmd
}

/// The wall clock as an NTP timestamp.
pub fn now_ntp() -> nts_proto::NtpTimestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    nts_proto::NtpTimestamp::from_unix(now.as_secs(), now.subsec_nanos())
}
