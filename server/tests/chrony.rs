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
