//! `ntsd stats`: the counters of a running server as a table, in the shape
//! of `chronyc serverstats` (chrony's line names where they apply), then
//! ntsd's own lines. Reads the server's `/metrics` over HTTP (hyper).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(5);
/// How a failed connection's error begins (the next candidate is tried).
const CONNECT_FAILED: &str = "cannot connect to the metrics endpoint";

/// Where `--config FILE` says the metrics endpoint is: `[metrics] listen`,
/// with a wildcard address replaced by loopback. For `[::]`, `[::1]`
/// first and then `127.0.0.1`: a host or container without IPv6 (older
/// Docker) has no `::1`, while ntsd's `[::]` listener takes IPv4 too.
pub(crate) fn endpoints_from_config(path: &Path) -> Result<Vec<SocketAddr>, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let addr = config.metrics.listen.ok_or_else(|| {
        format!(
            "{}: [metrics] listen is not set; ntsd stats reads the metrics endpoint (e.g. listen = \"127.0.0.1:9460\")",
            path.display()
        )
    })?;
    let port = addr.port();
    Ok(match addr.ip() {
        IpAddr::V4(a) if a.is_unspecified() => vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))],
        IpAddr::V6(a) if a.is_unspecified() => vec![
            SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        ],
        _ => vec![addr],
    })
}

/// [`fetch`] from the first of `candidates` that accepts a connection.
pub(crate) fn fetch_any(candidates: &[String], path: &str) -> Result<String, String> {
    let mut last = String::from("no address to try");
    for authority in candidates {
        match fetch(authority, path) {
            Err(e) if e.starts_with(CONNECT_FAILED) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// `http://HOST:PORT[/PATH]` or `HOST:PORT` (path `/metrics`).
pub(crate) fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if url.starts_with("https://") {
        return Err(format!("{url}: only http:// is supported"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    Ok((authority.to_owned(), path.to_owned()))
}

/// Fetches the text exposition from `authority` (`HOST:PORT`) and `path`.
pub(crate) fn fetch(authority: &str, path: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, get(authority, path))
            .await
            .map_err(|_| format!("{authority}: no answer within {TIMEOUT:?}"))?
    })
}

async fn get(authority: &str, path: &str) -> Result<String, String> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| {
            format!("{CONNECT_FAILED} at {authority}: {e} (is ntsd running, with [metrics] listen set to this address?)")
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{authority}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let why = String::from_utf8_lossy(&body);
        return Err(format!("{authority}{path}: HTTP {status}: {}", why.trim()));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("{authority}{path}: not text"))
}

/// `name{labels}` → value, from the text exposition.
pub(crate) fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// Every label value of `family`'s series with label `label`, and the value.
fn by_label<'a>(m: &'a BTreeMap<String, f64>, family: &str, label: &str) -> Vec<(&'a str, f64)> {
    let prefix = format!("{family}{{{label}=\"");
    m.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(&prefix)?;
            Some((rest.split('"').next()?, *v))
        })
        .collect()
}

fn sum(m: &BTreeMap<String, f64>, family: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == family || k.strip_prefix(family).is_some_and(|r| r.starts_with('{')))
        .map(|(_, v)| v)
        .sum()
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60) {
        (0, 0, m, s) => format!("{m}m{s:02}s"),
        (0, h, m, s) => format!("{h}h{m:02}m{s:02}s"),
        (d, h, m, _) => format!("{d}d{h:02}h{m:02}m"),
    }
}

/// The table.
pub(crate) fn render(m: &BTreeMap<String, f64>) -> String {
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut line = |name: &str, value: String| lines.push((name.to_owned(), value));
    let n = |v: f64| format!("{}", v as u64);
    // chrony's `serverstats` lines first, under chrony's names.
    let interleaved = get("ntsd_ntp_interleaved_responses_total");
    let kernel_tx = get("ntsd_ntp_kernel_tx_timestamps_total");
    let counts: [(&str, f64); 15] = [
        (
            "NTP packets received",
            sum(m, "ntsd_worker_packets_received_total"),
        ),
        ("NTP packets dropped", sum(m, "ntsd_ntp_dropped_total")),
        (
            "Client log records dropped",
            get("ntsd_ntp_client_log_records_dropped_total"),
        ),
        (
            "NTS-KE connections accepted",
            get("ntsd_ke_connections_total"),
        ),
        (
            "NTS-KE connections dropped",
            [
                "busy",
                "access_denied",
                "rate_limited",
                "evicted",
                "no_certificate",
            ]
            .iter()
            .map(|r| get(&format!("ntsd_ke_errors_total{{reason=\"{r}\"}}")))
            .sum(),
        ),
        (
            "Authenticated NTP packets",
            get("ntsd_ntp_responses_total{kind=\"nts\"}"),
        ),
        ("Interleaved NTP packets", interleaved),
        ("NTP timestamps held", get("ntsd_ntp_timestamps_held")),
        ("NTP timestamp span", get("ntsd_ntp_timestamp_span_seconds")),
        (
            "NTP daemon RX timestamps",
            get("ntsd_ntp_daemon_timestamps_total"),
        ),
        (
            "NTP daemon TX timestamps",
            (interleaved - kernel_tx).max(0.0),
        ),
        (
            "NTP kernel RX timestamps",
            get("ntsd_ntp_kernel_timestamps_total"),
        ),
        ("NTP kernel TX timestamps", kernel_tx),
        (
            "Plain NTP responses",
            get("ntsd_ntp_responses_total{kind=\"plain\"}"),
        ),
        (
            "NTS NAKs sent",
            get("ntsd_ntp_responses_total{kind=\"nak\"}"),
        ),
    ];
    for (name, v) in counts {
        line(name, n(v));
    }
    line(
        "  TX timestamps lost",
        n(get("ntsd_ntp_tx_timestamps_lost_total")),
    );
    for (reason, v) in by_label(m, "ntsd_ntp_naks_total", "reason") {
        line(&format!("  NAK, {reason}"), n(v));
    }
    for (reason, v) in by_label(m, "ntsd_ntp_dropped_total", "reason") {
        line(&format!("  dropped, {reason}"), n(v));
    }
    for (aead, v) in by_label(m, "ntsd_ke_sessions_total", "aead") {
        line(&format!("NTS-KE sessions, AEAD {aead}"), n(v));
    }
    line(
        "NTS-KE cookies issued",
        n(get("ntsd_ke_cookies_issued_total")),
    );
    for (reason, v) in by_label(m, "ntsd_ke_errors_total", "reason") {
        line(&format!("  NTS-KE error, {reason}"), n(v));
    }
    line("Current key id", n(get("ntsd_keys_current_id")));
    line(
        "Current key age",
        duration(get("ntsd_keys_current_age_seconds")),
    );
    line("Keys accepted", n(get("ntsd_keys_accepted")));
    line("Stratum", n(get("ntsd_time_stratum")));
    let leap = get("ntsd_time_leap_indicator") as u8;
    let leap_name = match leap {
        0 => "no warning",
        1 => "insert second",
        2 => "delete second",
        _ => "unsynchronised",
    };
    line("Leap indicator", format!("{leap} ({leap_name})"));
    let synced = get("ntsd_time_synchronised") == 1.0;
    line("Synchronised", if synced { "yes" } else { "no" }.to_owned());
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{k:<width$}: {v}\n"))
        .collect()
}

/// `ntsd ready` (a container or load-balancer health check): `GET
/// /readyz` (or `/healthz` with `live`) on the endpoint of `--metrics URL`
/// or `--config FILE`; success only for 200, else the body says why.
pub fn probe(metrics: Option<&str>, config: Option<&Path>, live: bool) -> Result<String, String> {
    let path = if live { "/healthz" } else { "/readyz" };
    fetch_any(&authorities(metrics, config)?, path)
}

/// The `HOST:PORT`s to try for the endpoint: that of `--metrics URL`, else
/// those `--config FILE` names (default `/etc/ntsd/config.toml`).
pub(crate) fn authorities(
    metrics: Option<&str>,
    config: Option<&Path>,
) -> Result<Vec<String>, String> {
    Ok(match (metrics, config) {
        (Some(url), _) => vec![parse_url(url)?.0],
        (None, config) => endpoints_from_config(config.unwrap_or(Path::new(DEFAULT_CONFIG)))?
            .iter()
            .map(SocketAddr::to_string)
            .collect(),
    })
}

/// The config `ntsd ready` and `ntsd stats` read without `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/ntsd/config.toml";

/// `ntsd stats`: from `--metrics URL`, or `--config FILE` (default
/// `/etc/ntsd/config.toml`).
pub fn run(metrics: Option<&str>, config: Option<&Path>) -> Result<(), String> {
    let (candidates, path) = match (metrics, config) {
        (Some(url), _) => {
            let (authority, path) = parse_url(url)?;
            (vec![authority], path)
        }
        (None, config) => {
            let path = config.unwrap_or(Path::new(DEFAULT_CONFIG));
            let addrs = endpoints_from_config(path)?;
            (
                addrs.iter().map(SocketAddr::to_string).collect(),
                "/metrics".to_owned(),
            )
        }
    };
    let text = fetch_any(&candidates, &path)?;
    let m = parse(&text);
    if !m.keys().any(|k| k.starts_with("ntsd_")) {
        return Err(format!(
            "{}{path} does not look like ntsd's metrics",
            candidates.join(" or ")
        ));
    }
    print!("{}", render(&m));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:9460/metrics").unwrap(),
            ("127.0.0.1:9460".into(), "/metrics".into())
        );
        assert_eq!(
            parse_url("[::1]:9460").unwrap(),
            ("[::1]:9460".into(), "/metrics".into())
        );
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http:///metrics").is_err());
    }

    #[test]
    fn the_table_uses_chronys_names() {
        let m = parse(
            "ntsd_worker_packets_received_total{worker=\"0\"} 5\n\
             ntsd_worker_packets_received_total{worker=\"1\"} 7\n\
             ntsd_ntp_responses_total{kind=\"nts\"} 9\n\
             ntsd_ntp_naks_total{reason=\"cookie_invalid\"} 2\n\
             ntsd_time_leap_indicator 3\n\
             ntsd_keys_current_age_seconds 3725\n",
        );
        let t = render(&m);
        let line = |name: &str| {
            t.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing:\n{t}"))
                .split(": ")
                .nth(1)
                .unwrap()
                .to_owned()
        };
        assert_eq!(line("NTP packets received "), "12");
        assert_eq!(line("Authenticated NTP packets "), "9");
        assert_eq!(line("  NAK, cookie_invalid "), "2");
        assert_eq!(line("Leap indicator "), "3 (unsynchronised)");
        assert_eq!(line("Synchronised "), "no");
        assert_eq!(line("Current key age "), "1h02m05s");
        assert!(t.contains("NTS-KE connections accepted"));
        assert!(t.contains("NTP kernel RX timestamps"));
        for name in [
            "Client log records dropped",
            "Interleaved NTP packets",
            "NTP timestamps held",
            "NTP timestamp span",
            "NTP kernel TX timestamps",
        ] {
            assert!(t.contains(name), "{name} missing:\n{t}");
        }
    }
}
