//! The monitoring files in `deploy/` against the real binary: every metric
//! name the Grafana dashboard and the alert rules use is one `/metrics`
//! exports; promtool accepts the rules and their unit tests pass; and a real
//! Prometheus server scrapes a running ntsd and reports the value sent.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{exchange, require, udp_client, Ntsd};
use nts_proto::{NtpHeader, NtpTimestamp};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

/// Every metric name in a PromQL expression: identifiers that start with
/// `ntsd_` or `process_` (ntsd's and the process collector's families).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("ntsd_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("grafana/ntsd.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("ntsd.json is JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    exprs
}

/// The `expr:` of every rule in alerts.yml (block scalars included).
fn alert_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some((indent, rest)) = line.split_once("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest != "|" && rest != ">" {
            exprs.push(rest.to_owned());
            continue;
        }
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            let deeper = next.len() > indent.len() && next[..=indent.len()].trim().is_empty();
            if !deeper && !next.trim().is_empty() {
                break;
            }
            block.push_str(next.trim());
            block.push('\n');
            lines.next();
        }
        exprs.push(block);
    }
    exprs
}

/// Names used but not exported.
fn unknown(used: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    used.iter()
        .filter(|n| !exported.contains(*n))
        .cloned()
        .collect()
}

/// A server that exports every family, the upstream age included (its
/// upstream is a closed loopback port).
fn full_server() -> (tempfile::TempDir, Ntsd) {
    let dir = common::pki_dir();
    let cfg = common::write_config(dir.path(), "ntsd.toml", "auto", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[time]\nsource = \"local\"\nstratum = 1\nrefid = \"TEST\"",
        "[time]\nsource = \"upstream\"\nupstream = \"127.0.0.1:9\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    (dir, s)
}

#[test]
fn every_name_in_the_dashboard_and_the_alerts_is_exported() {
    let (_dir, s) = full_server();
    let exported: BTreeSet<String> = s
        .metrics_f64()
        .into_iter()
        .map(|(k, _)| k.split('{').next().unwrap().to_owned())
        .collect();
    let dashboard = dashboard_exprs();
    let alerts = alert_exprs();
    assert!(dashboard.len() >= 20, "{dashboard:?}");
    assert_eq!(alerts.len(), 12, "{alerts:?}");
    for (file, exprs) in [
        ("grafana/ntsd.json", &dashboard),
        ("prometheus/alerts.yml", &alerts),
    ] {
        let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(used.len() >= 8, "{file}: {used:?}");
        let missing = unknown(&used, &exported);
        assert!(
            missing.is_empty(),
            "{file} uses names /metrics does not export: {missing:?}"
        );
    }
    // The check catches a made-up name, and one a rename left behind.
    let made_up = metric_names("sum(rate(ntsd_ntp_made_up_total[5m])) / ntsd_key_current_id");
    assert_eq!(
        unknown(&made_up, &exported),
        vec![
            "ntsd_key_current_id".to_owned(),
            "ntsd_ntp_made_up_total".to_owned()
        ]
    );
}

fn promtool() -> bool {
    require(
        "promtool (Debian package prometheus)",
        Path::new("/usr/bin/promtool").exists(),
    )
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    if !promtool() {
        return;
    }
    let dir = deploy("prometheus");
    let (ok, out) = common::output(
        Command::new("promtool")
            .args(["check", "rules", "alerts.yml"])
            .current_dir(&dir),
    );
    assert!(ok && out.contains("SUCCESS"), "{out}");
    let (ok, out) = common::output(
        Command::new("promtool")
            .args(["test", "rules", "alerts.test.yml"])
            .current_dir(&dir),
    );
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

/// Kills the Prometheus server when the test ends, also on failure.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_real_prometheus_scrapes_ntsd_and_sees_the_requests_sent() {
    if !require(
        "prometheus (Debian package prometheus)",
        Path::new("/usr/bin/prometheus").exists(),
    ) {
        return;
    }
    let s = Ntsd::start("auto");
    const SENT: u64 = 6;
    let sock = udp_client(s.ntp_port);
    for i in 0..SENT {
        let req = NtpHeader::client_request(NtpTimestamp(i + 1)).to_bytes();
        assert!(exchange(&sock, &req).is_some());
    }
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: ntsd\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            deploy("prometheus/alerts.yml").display(),
            s.metrics_port
        ),
    )
    .unwrap();
    let web = free_port();
    let log = std::fs::File::create(work.path().join("prometheus.log")).unwrap();
    let _server = Server(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let query = "/api/v1/query?query=ntsd_ntp_requests_total%7Bkind%3D%22plain%22%7D";
    let deadline = Instant::now() + Duration::from_secs(40);
    let value = loop {
        // Prometheus may accept and then reset connections while it starts.
        let answer = common::try_http_get(web, query).ok();
        if let Some((200, body)) = answer {
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            let result = &json["data"]["result"];
            if let Some(v) = result.get(0).and_then(|r| r["value"][1].as_str()) {
                break v.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never reported ntsd_ntp_requests_total:\n{}",
            std::fs::read_to_string(work.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(value, SENT.to_string());
    // The target is up and the rules loaded without errors.
    let (_, targets) = common::http_get(web, "/api/v1/targets");
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    let (_, rules) = common::http_get(web, "/api/v1/rules");
    assert!(
        rules.contains("NtsdNoResponses") && !rules.contains("\"health\":\"err\""),
        "{rules}"
    );
}
