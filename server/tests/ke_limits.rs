//! NTS-KE under abuse, against the real binary: slow clients holding
//! connections (slowloris), the per-address session rate, and a process
//! short of file descriptors.

mod common;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{exchange, udp_client, Ntsd, BIN};
use nts_proto::{NtpHeader, NtpTimestamp};

/// A TCP connection to the KE port from `from`, non-blocking.
fn connect_from(from: std::net::Ipv4Addr, port: u16) -> Option<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    s.bind(&SocketAddr::from((from, 0)).into()).ok()?;
    s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .ok()?;
    let t: TcpStream = s.into();
    t.set_nonblocking(true).ok()?;
    Some(t)
}

/// `ntsd query` against the server; returns success, output and duration.
fn query(s: &Ntsd) -> (bool, String, Duration) {
    let start = Instant::now();
    let (ok, out) = common::output(
        Command::new(BIN)
            .args([
                "query",
                &format!("localhost:{}", s.ke_port),
                "--timeout",
                "3",
                "--ca",
            ])
            .arg(s.ca()),
    );
    (ok, out, start.elapsed())
}

/// 200 plain requests in a row; how many were answered.
fn plain_burst(s: &Ntsd) -> usize {
    let sock = udp_client(s.ntp_port);
    (0..200u64)
        .filter(|i| {
            exchange(
                &sock,
                &NtpHeader::client_request(NtpTimestamp(i + 1)).to_bytes(),
            )
            .is_some()
        })
        .count()
}

/// 1,000 connections that each send one byte a second and are reopened
/// when the server closes them, from `sources` (round robin), for `secs`;
/// meanwhile `during` runs once a second. Bounded in count and time.
fn slowloris(s: &Ntsd, sources: &[std::net::Ipv4Addr], secs: u64, mut during: impl FnMut()) -> u64 {
    const CONNS: usize = 1000;
    let open = |i: usize| connect_from(sources[i % sources.len()], s.ke_port);
    let mut conns: Vec<Option<TcpStream>> = (0..CONNS).map(open).collect();
    let mut reopened = 0u64;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        let round = Instant::now();
        for (i, c) in conns.iter_mut().enumerate() {
            let alive = match c {
                Some(t) => match t.write(&[0x16]) {
                    Ok(_) => true,
                    Err(e) => e.kind() == ErrorKind::WouldBlock,
                },
                None => false,
            };
            if !alive {
                *c = open(i);
                reopened += 1;
            }
        }
        during();
        let spent = round.elapsed();
        if spent < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_secs(1) - spent);
        }
    }
    reopened
}

fn check_under_attack(sources: &[std::net::Ipv4Addr]) {
    let s = Ntsd::start("auto");
    let baseline = plain_burst(&s);
    let mut honest = Vec::new();
    let mut ntp = Vec::new();
    let reopened = slowloris(&s, sources, 6, || {
        honest.push(query(&s));
        ntp.push(plain_burst(&s));
    });
    eprintln!(
        "slowloris from {} address(es): {reopened} reopened; queries {:?}; NTP {ntp:?} of 200 (baseline {baseline})",
        sources.len(),
        honest.iter().map(|h| h.2).collect::<Vec<_>>()
    );
    for (ok, out, took) in &honest {
        assert!(*ok, "an honest query failed under attack:\n{out}");
        assert!(
            *took < Duration::from_secs(3),
            "an honest query took {took:?}"
        );
    }
    assert!(
        ntp.iter().all(|&n| n == 200),
        "NTP replies lost under attack: {ntp:?}"
    );
    // Remote input never floods the log.
    let lines = s.log_text().lines().count();
    assert!(lines < 40, "{lines} log lines:\n{}", s.log_text());
    assert!(s.metric("ntsd_ke_connections_open") <= 1024);
    // Connections closed for a newer one of their address are counted as
    // evictions, not as the (unset) session rate limit.
    assert!(
        s.metric("ntsd_ke_errors_total{reason=\"evicted\"}") > 0,
        "{}",
        s.metrics_text()
    );
    assert_eq!(s.metric("ntsd_ke_errors_total{reason=\"rate_limited\"}"), 0);
}

/// The attacker shares the honest client's address: an address at its cap
/// loses its oldest connection, so the honest session still gets in.
#[test]
fn slowloris_from_the_honest_clients_own_address() {
    check_under_attack(&[std::net::Ipv4Addr::LOCALHOST]);
}

#[test]
fn slowloris_from_several_addresses() {
    let sources: Vec<_> = (1..=8)
        .map(|i| std::net::Ipv4Addr::new(127, 0, 3, i))
        .collect();
    check_under_attack(&sources);
}

#[test]
fn the_per_address_session_rate_is_enforced_before_tls() {
    let s = Ntsd::start_with(
        "auto",
        "",
        "[nts_ke.rate_limit]\ninterval = \"1h\"\nburst = 3",
        "",
    );
    for i in 0..3 {
        let (ok, out, _) = query(&s);
        assert!(ok, "session {i}: {out}");
    }
    let (ok, _, _) = query(&s);
    assert!(!ok, "a 4th session within the hour was served");
    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"rate_limited\"}", 1),
        1
    );
    // Another address has its own budget.
    let mut t = connect_from(std::net::Ipv4Addr::new(127, 0, 0, 9), s.ke_port).unwrap();
    t.set_nonblocking(false).unwrap();
    t.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 8];
    // Not closed at once: it waits for a ClientHello until the KE timeout.
    let r = std::io::Read::read(&mut t, &mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut),
        "{r:?}"
    );
}

/// A process with few file descriptors lowers its connection cap to fit,
/// keeps serving while connections hold every slot, logs little, and
/// serves KE again once they go.
#[test]
fn a_low_descriptor_limit_lowers_the_cap_and_keeps_serving() {
    let dir = common::pki_dir();
    let cfg = common::write_config(dir.path(), "ntsd.toml", "auto", "");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 128 && exec "$0" run --config "$1""#)
        .arg(BIN)
        .arg(&cfg);
    let s = Ntsd::try_spawn_command(dir.path().to_owned(), cmd).unwrap();
    assert!(s.log_text().contains("lowered"), "{}", s.log_text());
    let cap = {
        let log = s.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("lowered"))
            .unwrap()
            .to_owned();
        line.split("used=")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(cap < 128, "cap {cap}");
    // More connections than the cap, from addresses below their own caps.
    let held: Vec<TcpStream> = (0..300usize)
        .filter_map(|i| {
            connect_from(
                std::net::Ipv4Addr::new(127, 0, 4, (i % 30) as u8 + 1),
                s.ke_port,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(s.metric("ntsd_ke_connections_open") <= cap);
    assert!(s.metric("ntsd_ke_errors_total{reason=\"busy\"}") > 0);
    assert_eq!(plain_burst(&s), 200, "NTP stopped while KE was full");
    drop(held);
    // The held connections are cut at the KE timeout (5 s) or now closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, _) = query(&s);
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KE did not recover:\n{out}\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let lines = s.log_text().lines().count();
    assert!(lines < 40, "{lines} log lines:\n{}", s.log_text());
}
