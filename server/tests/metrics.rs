//! The metrics endpoint against a known load: every family moves by
//! exactly what was sent, every family has HELP text, and only `/metrics`,
//! `/healthz` and `/readyz` exist.

mod common;

use std::collections::HashMap;

use common::{client_of, exchange, key_exchange, try_cookie, udp_client, Ntsd, Outcome};
use nts_proto::client::NtsClient;
use nts_proto::{NtpHeader, NtpTimestamp};

fn snapshot(s: &Ntsd) -> HashMap<String, f64> {
    s.metrics_f64().into_iter().collect()
}

/// `after - before` of one series (absent = 0).
fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

/// The sum over every series of a family.
fn family_delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, family: &str) -> f64 {
    let sum = |m: &HashMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| k.strip_prefix(family).is_some_and(|r| r.starts_with('{')))
            .map(|(_, v)| v)
            .sum()
    };
    sum(after) - sum(before)
}

const PLAIN: usize = 7;
const NTS: usize = 5;
const CORRUPT: usize = 3;
const SHORT: usize = 4;
const NOT_CLIENT: usize = 2;
const KE: usize = 3;

#[test]
fn every_family_moves_by_exactly_the_load_sent() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        // NTS clients first: their KE sessions are part of the load too.
        let (mut good, _) = client_of(&s);
        let ke = key_exchange(&s);
        let mut cookies = ke.result.cookies.clone();
        for c in cookies.iter_mut() {
            let last = c.len() - 1;
            c[last] ^= 0x40; // inside the sealed part: the tag fails
        }
        let mut corrupt = NtsClient::new(ke.keys, cookies);
        let before = snapshot(&s);

        let sock = udp_client(s.ntp_port);
        for i in 0..PLAIN {
            let req = NtpHeader::client_request(NtpTimestamp(1 + i as u64)).to_bytes();
            assert!(
                exchange(&sock, &req).is_some(),
                "{backend}: plain {i} unanswered"
            );
        }
        for i in 0..NTS {
            assert_eq!(
                try_cookie(&mut good, s.ntp_port, i as u64),
                Outcome::Authenticated
            );
        }
        for i in 0..CORRUPT {
            assert_eq!(
                try_cookie(&mut corrupt, s.ntp_port, 100 + i as u64),
                Outcome::Nak
            );
        }
        for _ in 0..SHORT {
            sock.send(&[0x23; 10]).unwrap();
        }
        let mut server_mode = NtpHeader::client_request(NtpTimestamp(9)).to_bytes();
        server_mode[0] = 0x24; // version 4, mode 4 (server)
        for _ in 0..NOT_CLIENT {
            sock.send(&server_mode).unwrap();
        }
        for _ in 0..KE {
            assert_eq!(key_exchange(&s).result.cookies.len(), 8);
        }
        let garbage = (SHORT + NOT_CLIENT) as u64;
        let received = (PLAIN + NTS + CORRUPT) as u64 + garbage;
        s.wait_metric(
            "ntsd_ntp_dropped_total{reason=\"not_client\"}",
            NOT_CLIENT as u64,
        );
        let after = snapshot(&s);
        let d = |k: &str| delta(&before, &after, k);
        let expect = [
            ("ntsd_ntp_requests_total{kind=\"plain\"}", PLAIN),
            ("ntsd_ntp_requests_total{kind=\"nts\"}", NTS + CORRUPT),
            ("ntsd_ntp_responses_total{kind=\"plain\"}", PLAIN),
            ("ntsd_ntp_responses_total{kind=\"nts\"}", NTS),
            ("ntsd_ntp_responses_total{kind=\"nak\"}", CORRUPT),
            ("ntsd_ntp_responses_total{kind=\"kod\"}", 0),
            ("ntsd_ntp_naks_total{reason=\"cookie_invalid\"}", CORRUPT),
            ("ntsd_ntp_naks_total{reason=\"cookie_unknown_key\"}", 0),
            ("ntsd_ntp_naks_total{reason=\"auth_failed\"}", 0),
            ("ntsd_ntp_dropped_total{reason=\"too_short\"}", SHORT),
            ("ntsd_ntp_dropped_total{reason=\"not_client\"}", NOT_CLIENT),
            ("ntsd_ntp_dropped_total{reason=\"access_denied\"}", 0),
            ("ntsd_ntp_dropped_total{reason=\"rate_limited\"}", 0),
            ("ntsd_ntp_io_errors_total{op=\"receive\"}", 0),
            ("ntsd_ntp_io_errors_total{op=\"send\"}", 0),
            ("ntsd_ntp_kernel_timestamps_total", received as usize),
            ("ntsd_ntp_daemon_timestamps_total", 0),
            ("ntsd_ke_connections_total", KE),
            ("ntsd_ke_sessions_total{aead=\"15\"}", KE),
            ("ntsd_ke_sessions_total{aead=\"17\"}", 0),
            ("ntsd_ke_cookies_issued_total", 8 * KE),
            ("ntsd_ke_session_duration_seconds_count", KE),
        ];
        let mut wrong = Vec::new();
        for (key, n) in expect {
            if d(key) != n as f64 {
                wrong.push(format!("{key}: moved by {}, sent {n}", d(key)));
            }
        }
        let sum = |f: &str| family_delta(&before, &after, f);
        for (family, n) in [
            ("ntsd_worker_packets_received_total", received),
            (
                "ntsd_worker_packets_sent_total",
                (PLAIN + NTS + CORRUPT) as u64,
            ),
            ("ntsd_ke_errors_total", 0),
        ] {
            if sum(family) != n as f64 {
                wrong.push(format!("{family}: moved by {}, sent {n}", sum(family)));
            }
        }
        assert!(
            wrong.is_empty(),
            "{backend}:\n{}\n{}",
            wrong.join("\n"),
            s.metrics_text()
        );

        // Gauges and info.
        let g = |k: &str| after.get(k).copied();
        assert_eq!(g("ntsd_ntp_workers"), Some(2.0));
        let b = format!("ntsd_ntp_backend_info{{backend=\"{backend}\"}}");
        assert_eq!(g(&b), Some(1.0), "{backend}");
        assert_eq!(g("ntsd_ke_connections_open"), Some(0.0));
        assert_eq!(g("ntsd_ntp_worker_restarts_total"), Some(0.0));
        assert_eq!(
            g("ntsd_keys_accepted"),
            Some(9.0),
            "keep 7 + current + next"
        );
        assert!(g("ntsd_keys_current_id").unwrap() > 20_000.0);
        assert!(g("ntsd_keys_current_age_seconds").unwrap() < 86_400.0);
        assert_eq!(g("ntsd_time_stratum"), Some(1.0));
        assert_eq!(g("ntsd_time_leap_indicator"), Some(0.0));
        assert_eq!(g("ntsd_time_synchronised"), Some(1.0));
        assert_eq!(g("ntsd_time_root_delay_seconds"), Some(0.0));
        assert!(g("ntsd_time_root_dispersion_seconds").is_some());
        assert!(g("ntsd_keys_rotations_total{kind=\"scheduled\"}").is_some());
        assert!(g("ntsd_keys_rotation_failures_total").is_some());
        assert!(g("ntsd_keys_clock_steps_total").is_some());
        assert!(g("ntsd_time_unsynchronised_total").is_some());
        assert!(g("ntsd_time_upstream_polls_total{result=\"ok\"}").is_some());
        assert!(g("process_resident_memory_bytes").unwrap() > 1e6);
        assert!(g("process_cpu_seconds_total").is_some());
        assert!(g("process_open_fds").unwrap() > 3.0);
        let build = after
            .iter()
            .find(|(k, _)| k.starts_with("ntsd_build_info{"))
            .expect("ntsd_build_info");
        assert_eq!(*build.1, 1.0);
        assert!(build
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
        let workers_seen = after
            .keys()
            .filter(|k| k.starts_with("ntsd_worker_packets_received_total{worker="))
            .count();
        assert_eq!(workers_seen, 2);
    }
}

#[test]
fn every_family_has_help_and_a_type() {
    let s = Ntsd::start("auto");
    let text = s.metrics_text();
    let names: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| n.starts_with("ntsd_") || n.starts_with("process_"))
        .collect();
    assert!(names.len() > 30, "{names:?}");
    for n in names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            .unwrap_or(n);
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no TYPE for {family}"
        );
    }
}

/// `process_cpu_seconds_total` has sub-second resolution (the prometheus
/// crate's own counts whole seconds) and grows with the work done.
#[test]
fn process_cpu_is_counted_below_the_second() {
    let s = Ntsd::start("portable");
    let cpu = |s: &Ntsd| {
        s.metrics_f64()
            .into_iter()
            .find(|(k, _)| k == "process_cpu_seconds_total")
            .map(|(_, v)| v)
            .expect("process_cpu_seconds_total")
    };
    let before = cpu(&s);
    assert!(before > 0.0 && before.fract() != 0.0, "{before}");
    for _ in 0..3 {
        key_exchange(&s);
    }
    let after = cpu(&s);
    assert!(after > before, "{before} -> {after}");
    assert!(s.terminate().success());
}

#[test]
fn only_the_three_paths_exist_and_the_probes_answer() {
    let s = Ntsd::start("auto");
    assert_eq!(s.http_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(s.http_get("/readyz"), (200, "ready\n".to_owned()));
    for path in ["/", "/metrics/", "/healthz/x", "/admin", "/favicon.ico"] {
        assert_eq!(s.http_get(path).0, 404, "{path}");
    }
    let (status, body) = s.http_get("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("# HELP ntsd_ntp_requests_total"));
}

fn stats(args: &[&str]) -> (bool, String) {
    common::output(
        std::process::Command::new(common::BIN)
            .arg("stats")
            .args(args),
    )
}

/// The value on the `ntsd stats` line that starts with `name`.
fn stats_line<'a>(table: &'a str, name: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].trim_start().starts_with(':'))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap_or_else(|| panic!("no line {name:?} in:\n{table}"))
}

#[test]
fn ntsd_stats_shows_serverstats_lines_from_metrics_or_config() {
    // A fixed port, so that --config can name it; another test may take
    // it between the probe and the start, so a bind failure tries another.
    let dir = common::pki_dir();
    let cfg = dir.path().join("stats.toml");
    let mut attempt = 0;
    let (mut s, port) = loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = common::config_text(dir.path(), "auto", "", "", "").replace(
            "[metrics]\nlisten = \"127.0.0.1:0\"",
            &format!("[metrics]\nlisten = \"0.0.0.0:{port}\""),
        );
        assert!(text.contains(&format!("0.0.0.0:{port}")), "{text}");
        std::fs::write(&cfg, text).unwrap();
        match Ntsd::try_spawn(dir.path().to_owned(), &cfg) {
            Ok(s) => break (s, port),
            Err(log) if attempt < 5 && log.contains("cannot bind") => attempt += 1,
            Err(log) => panic!("ntsd did not start:\n{log}"),
        }
    };
    s.metrics_port = port;
    let (mut client, _) = client_of(&s);
    for i in 0..3 {
        assert_eq!(
            try_cookie(&mut client, s.ntp_port, i),
            Outcome::Authenticated
        );
    }
    let sock = udp_client(s.ntp_port);
    sock.send(&[0u8; 5]).unwrap();
    s.wait_metric("ntsd_ntp_dropped_total{reason=\"too_short\"}", 1);

    let (ok, by_config) = stats(&["--config", cfg.to_str().unwrap()]);
    assert!(ok, "{by_config}");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let (ok, by_url) = stats(&["--metrics", &url]);
    assert!(ok, "{by_url}");
    eprintln!("ntsd stats:\n{by_url}");
    for table in [&by_config, &by_url] {
        assert_eq!(stats_line(table, "NTP packets received"), "4");
        assert_eq!(stats_line(table, "NTP packets dropped"), "1");
        assert_eq!(stats_line(table, "NTS-KE connections accepted"), "1");
        assert_eq!(stats_line(table, "NTS-KE connections dropped"), "0");
        assert_eq!(stats_line(table, "Authenticated NTP packets"), "3");
        assert_eq!(stats_line(table, "NTP kernel RX timestamps"), "4");
        assert_eq!(stats_line(table, "NTP daemon RX timestamps"), "0");
        assert_eq!(stats_line(table, "  dropped, too_short"), "1");
        assert_eq!(stats_line(table, "Stratum"), "1");
        assert_eq!(stats_line(table, "Synchronised"), "yes");
    }
}

#[test]
fn ntsd_stats_fails_clearly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (ok, out) = stats(&["--metrics", &format!("http://127.0.0.1:{port}/metrics")]);
    assert!(!ok);
    assert!(
        out.contains("cannot connect") && out.contains(&port.to_string()),
        "{out}"
    );
    assert!(!out.contains("panicked"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[nts_ke]\ncertificate_chain = \"a\"\nprivate_key = \"b\"\n",
    )
    .unwrap();
    let (ok, out) = stats(&["--config", cfg.to_str().unwrap()]);
    assert!(!ok && out.contains("[metrics] listen is not set"), "{out}");
}

/// With NOTIFY_SOCKET (systemd Type=notify), READY=1 and a STATUS= line
/// arrive once the server serves, and STOPPING=1 on SIGTERM.
#[test]
fn systemd_is_told_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = common::pki_dir();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let cfg = common::write_config(dir.path(), "ntsd.toml", "auto", "");
    let s = Ntsd::try_spawn_env(
        dir.path().to_owned(),
        &cfg,
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=serving")),
        "{ready}"
    );
    // Ready means serving: NTS-KE answers now.
    assert_eq!(key_exchange(&s).result.cookies.len(), 8);
    assert!(s.terminate().success());
    let n = sock.recv(&mut buf).unwrap();
    let stopping = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
}
