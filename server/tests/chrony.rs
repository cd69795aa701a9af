//! chrony, the reference client, must synchronise to ntsd over NTS.
//! Runs as root (chronyd -u root); skipped only outside CI when chronyd or
//! root is missing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{require, Ntsd};

const CHRONYD: &str = "/usr/sbin/chronyd";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs `chronyd -Q` once against the server; returns its combined output.
fn chronyd_query(s: &Ntsd) -> (bool, String) {
    let server = format!(
        "server localhost port {} nts ntsport {} iburst maxsamples 1",
        s.ntp_port, s.ke_port
    );
    let certs = format!("ntstrustedcerts {}", s.ca().display());
    let start = Instant::now();
    let out = Command::new(CHRONYD)
        .args(["-Q", "-f", "/dev/null", "-u", "root", "-t", "5"])
        .arg(&server)
        .arg(&certs)
        .output()
        .expect("run chronyd");
    assert!(start.elapsed() < Duration::from_secs(30));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn chrony_obtains_an_authenticated_sample() {
    if !require("chronyd", std::path::Path::new(CHRONYD).exists()) || !require("root", is_root()) {
        return;
    }
    for backend in ["io-uring", "portable"] {
        let s = Ntsd::start(backend);
        let (ok, out) = chronyd_query(&s);
        // With `nts`, chrony discards unauthenticated replies, so a sample at
        // all means NTS-KE and NTS authentication both succeeded.
        assert!(
            ok && out.contains("System clock wrong by"),
            "{backend}: chronyd did not get a sample:\n{out}\nserver log:\n{}",
            s.log_text()
        );
        assert!(s.wait_metric("ntsd_ke_sessions_total", 1) >= 1);
        assert!(s.wait_metric("ntsd_ntp_responses_total{kind=\"nts\"}", 1) >= 1);
        assert_eq!(s.metric("ntsd_ntp_naks_total{reason=\"auth_failed\"}"), 0);
        assert!(s.terminate().success());
    }
}

/// A port free on loopback for both UDP and TCP right now (chronyd cannot
/// report an ephemeral port back, so one is chosen for it).
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// chronyd as an NTS server on loopback, killed on drop.
struct ChronyServer(std::process::Child);

impl Drop for ChronyServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ntsd_query_succeeds_against_a_chrony_nts_server() {
    if !require("chronyd", std::path::Path::new(CHRONYD).exists()) || !require("root", is_root()) {
        return;
    }
    let dir = common::pki_dir();
    let d = dir.path();
    let (ntp, ke) = (free_port(), free_port());
    let conf = format!(
        "port {ntp}\nntsport {ke}\nbindaddress 127.0.0.1\nlocal stratum 1\nallow 127.0.0.1\n\
         ntsserverkey {key}\nntsservercert {chain}\npidfile {pid}\ncmdport 0\nbindcmdaddress /\n",
        key = d.join("key.pem").display(),
        chain = d.join("chain.pem").display(),
        pid = d.join("chronyd.pid").display(),
    );
    std::fs::write(d.join("chrony.conf"), conf).unwrap();
    // -x: never touch the clock; -d: foreground, logs to stderr.
    let _server = ChronyServer(
        Command::new(CHRONYD)
            .args(["-d", "-x", "-u", "root", "-f"])
            .arg(d.join("chrony.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chronyd"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", ke)).is_err() {
        assert!(Instant::now() < deadline, "chronyd NTS-KE did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(common::BIN)
        .args(["query", &format!("localhost:{ke}"), "--ca"])
        .arg(d.join("ca.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "query failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("8 cookies of") && text.contains("authenticated"),
        "{text}"
    );
    assert!(
        text.contains(&format!("NTP server localhost:{ntp}")),
        "{text}"
    );
}
