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
    for backend in ["io-uring", "portable"] {
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
