//! `[access]` against the real binary: allow and deny lists for NTP and
//! NTS-KE (IPv4, IPv6, deny over allow, a KE-only override), and the NTP
//! rate limit under a flood from one address while an honest client polls.
//! Sources are loopback addresses of 127.0.0.0/8 (all local on Linux).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{client_of, try_cookie, Ntsd, Outcome};
use nts_proto::{NtpHeader, NtpTimestamp};

/// A server whose config gets `access` (an `[access]` table and more) and
/// `ke_extra` in `[nts_ke]`.
fn server(ke_extra: &str, access: &str) -> Ntsd {
    Ntsd::start_with("auto", "", ke_extra, access)
}

/// One plain request from `from` to the server's NTP port over `family`.
fn plain_from(s: &Ntsd, from: &str) -> bool {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let to: SocketAddr = match from.contains(':') {
        true => ("::1".parse::<std::net::IpAddr>().unwrap(), s.ntp_port).into(),
        false => ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), s.ntp_port).into(),
    };
    let req = NtpHeader::client_request(NtpTimestamp(77)).to_bytes();
    sock.send_to(&req, to).unwrap();
    let mut buf = [0u8; 512];
    sock.recv(&mut buf).is_ok()
}

/// Whether a TCP connection from `from` to the KE port is closed by the
/// server before any TLS byte (an access-denied connection).
fn ke_closed_before_tls(s: &Ntsd, from: &str) -> bool {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((from.parse::<std::net::Ipv4Addr>().unwrap(), 0)).into())
        .unwrap();
    socket
        .connect(&SocketAddr::from(([127, 0, 0, 1], s.ke_port)).into())
        .unwrap();
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    // A ClientHello would be answered; a refused connection just ends.
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
        && !matches!(stream.read(&mut buf), Ok(n) if n > 0)
}

#[test]
fn ntp_allow_deny_and_deny_wins() {
    let s = server(
        "",
        "[access]\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2/32\", \"127.0.9.0/24\"]\n",
    );
    assert!(plain_from(&s, "127.0.0.1"), "allowed");
    assert!(!plain_from(&s, "127.0.0.2"), "denied although allowed");
    assert!(!plain_from(&s, "127.0.9.200"), "denied prefix");
    if common::ipv6_loopback() {
        assert!(!plain_from(&s, "::1"), "IPv6 not in allow");
    }
    let denied = if common::ipv6_loopback() { 3 } else { 2 };
    assert_eq!(
        s.wait_metric("ntsd_ntp_dropped_total{reason=\"access_denied\"}", denied),
        denied
    );
    assert_eq!(s.metric("ntsd_ntp_responses_total{kind=\"plain\"}"), 1);
}

#[test]
fn ipv6_allow_list() {
    if !common::require("IPv6 on loopback", common::ipv6_loopback()) {
        return;
    }
    let s = server("", "[access]\nallow = [\"::1/128\"]\n");
    assert!(plain_from(&s, "::1"));
    assert!(
        !plain_from(&s, "127.0.0.1"),
        "IPv4 not in an IPv6-only allow list"
    );
}

#[test]
fn ke_is_refused_before_tls_and_can_be_overridden() {
    // NTP: everyone but 127.0.0.5. NTS-KE: its own list, only 127.0.0.1.
    let s = server(
        "allow = [\"127.0.0.1/32\"]\ndeny = []",
        "[access]\ndeny = [\"127.0.0.5\"]\n",
    );
    assert!(ke_closed_before_tls(&s, "127.0.0.3"));
    assert!(ke_closed_before_tls(&s, "127.0.0.5"));
    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"access_denied\"}", 2),
        2
    );
    // Allowed for KE: a full session.
    let (mut c, _) = client_of(&s);
    assert_eq!(try_cookie(&mut c, s.ntp_port, 1), Outcome::Authenticated);
    // The KE lists do not apply to NTP.
    assert!(plain_from(&s, "127.0.0.3"));
    assert!(!plain_from(&s, "127.0.0.5"));
}

/// Floods `request` from `flood_from` for `secs`, while an honest client
/// polls with `honest` once a second; returns (sent, answered, honest
/// answered, honest sent).
fn flood(
    s: &Ntsd,
    flood_from: &str,
    request: &[u8],
    secs: u64,
    mut honest: impl FnMut(u64) -> bool,
) -> (u64, u64, u64, u64) {
    let sock = UdpSocket::bind((flood_from, 0)).unwrap();
    sock.connect(("127.0.0.1", s.ntp_port)).unwrap();
    sock.set_nonblocking(true).unwrap();
    let (mut sent, mut answered) = (0u64, 0u64);
    let (mut honest_ok, mut honest_sent) = (0u64, 0u64);
    let start = Instant::now();
    let mut next_poll = start;
    let mut buf = [0u8; 2048];
    // About 2,000 requests a second, bounded in count and time.
    while start.elapsed() < Duration::from_secs(secs) && sent < 20_000 {
        if Instant::now() >= next_poll {
            honest_sent += 1;
            if honest(honest_sent) {
                honest_ok += 1;
            }
            next_poll += Duration::from_secs(1);
        }
        for _ in 0..10 {
            if sock.send(request).is_ok() {
                sent += 1;
            }
        }
        while sock.recv(&mut buf).is_ok() {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let drain = Instant::now();
    while drain.elapsed() < Duration::from_millis(300) {
        match sock.recv(&mut buf) {
            Ok(_) => answered += 1,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    (sent, answered, honest_ok, honest_sent)
}

const LIMIT: &str = "[access.rate_limit]\ninterval = \"1s\"\nburst = 4\nleak = 3\n";

#[test]
fn a_plain_flood_is_capped_and_an_honest_client_loses_nothing() {
    let s = server("", LIMIT);
    let req = NtpHeader::client_request(NtpTimestamp(5)).to_bytes();
    let (sent, answered, ok, polls) =
        flood(&s, "127.0.0.1", &req, 3, |_| plain_from(&s, "127.0.0.2"));
    eprintln!("plain flood: {sent} sent, {answered} answered; honest {ok}/{polls}");
    assert_eq!(ok, polls, "the honest client lost replies");
    // Allowed: the burst and one a second; leaked: 1 in 8 of the rest.
    let expected = 4.0 + 3.0 + (sent as f64 - 7.0) / 8.0;
    assert!(
        (answered as f64) < expected * 1.3 + 10.0 && (answered as f64) > expected * 0.7,
        "{answered} answered of {sent}, expected about {expected:.0}"
    );
    let dropped = s.wait_metric(
        "ntsd_ntp_dropped_total{reason=\"rate_limited\"}",
        sent - answered,
    );
    assert_eq!(dropped, sent - answered);
    assert_eq!(s.metric("ntsd_ntp_responses_total{kind=\"kod\"}"), 0);
}

#[test]
fn over_the_limit_plain_clients_get_a_rate_kiss_of_death_when_asked() {
    let s = server("", &format!("{LIMIT}kod = true\n"));
    let sock = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    sock.connect(("127.0.0.1", s.ntp_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req = NtpHeader::client_request(NtpTimestamp(99)).to_bytes();
    let mut kods = 0;
    for _ in 0..40 {
        sock.send(&req).unwrap();
        let mut buf = [0u8; 512];
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let h = NtpHeader::decode(&mut nts_proto::reader::Reader::new(&buf[..n])).unwrap();
        if h.stratum == 0 {
            assert_eq!(&h.reference_id, b"RATE");
            assert_eq!(n, 48);
            assert_eq!(h.origin, NtpTimestamp(99));
            kods += 1;
        }
    }
    assert!(
        kods >= 25,
        "{kods} KoDs of 40 (4 in the burst, 1 in 8 leaked)"
    );
    assert_eq!(
        s.wait_metric("ntsd_ntp_responses_total{kind=\"kod\"}", kods),
        kods
    );
}

#[test]
fn an_nts_flood_is_dropped_never_nakked_and_an_honest_nts_client_is_served() {
    let s = server("", LIMIT);
    // One valid NTS request, replayed: every copy verifies.
    let ke = common::key_exchange(&s);
    let mut flood_client = nts_proto::client::NtsClient::new(ke.keys, ke.result.cookies);
    let mut req = [0u8; 2048];
    let (len, _) = flood_client
        .build_request(NtpTimestamp(1), &[7u8; 48], 0, &mut req)
        .unwrap();
    let (mut honest, _) = client_of(&s);
    let (sent, answered, ok, polls) = flood(&s, "127.0.0.1", &req[..len], 3, |i| {
        // The honest client comes from another address.
        let sock = UdpSocket::bind(("127.0.0.2", 0)).unwrap();
        drop(sock);
        try_cookie_from(&mut honest, s.ntp_port, "127.0.0.2", i) == Outcome::Authenticated
    });
    eprintln!("NTS flood: {sent} sent, {answered} answered; honest {ok}/{polls}");
    assert_eq!(ok, polls, "the honest NTS client lost replies");
    assert!(
        (answered as f64) < 7.0 + sent as f64 / 8.0 * 1.3 + 10.0,
        "{answered} of {sent}"
    );
    assert_eq!(
        s.metric("ntsd_ntp_responses_total{kind=\"nak\"}"),
        0,
        "a NAK was sent"
    );
    assert_eq!(s.metric("ntsd_ntp_responses_total{kind=\"kod\"}"), 0);
    assert!(s.metric("ntsd_ntp_dropped_total{reason=\"rate_limited\"}") > 0);
}

/// `try_cookie` from a chosen source address.
fn try_cookie_from(
    client: &mut nts_proto::client::NtsClient,
    port: u16,
    from: &str,
    seed: u64,
) -> Outcome {
    let sock = UdpSocket::bind((from, 0)).unwrap();
    sock.connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut random = [0u8; 48];
    random[0] = seed as u8;
    let mut buf = [0u8; 2048];
    let (len, pending) = client
        .build_request(NtpTimestamp(seed), &random, 1, &mut buf)
        .unwrap();
    sock.send(&buf[..len]).unwrap();
    let mut reply = [0u8; 2048];
    match sock.recv(&mut reply) {
        Err(_) => Outcome::Other("no reply".into()),
        Ok(n) => match client.verify_reply(&reply[..n], &pending) {
            Ok(_) => Outcome::Authenticated,
            Err(nts_proto::client::ClientError::Nak) => Outcome::Nak,
            Err(e) => Outcome::Other(e.to_string()),
        },
    }
}

/// 100,000 distinct source addresses: the rate-limit tables (fixed size)
/// bound the memory, whatever the number of clients.
#[test]
fn a_hundred_thousand_clients_keep_memory_bounded() {
    const ENTRIES: u64 = 16_384;
    let s = server(
        "",
        &format!("[access.rate_limit]\ninterval = \"1s\"\nburst = 4\ntable_entries = {ENTRIES}\n"),
    );
    let before = s.rss_kib();
    let req = NtpHeader::client_request(NtpTimestamp(3)).to_bytes();
    let start = Instant::now();
    let mut sent = 0u64;
    'outer: for b in 1..=2u8 {
        for c in 0..=255u8 {
            for d in 1..=254u8 {
                if sent >= 100_000 {
                    break 'outer;
                }
                let sock = UdpSocket::bind((std::net::Ipv4Addr::new(127, b, c, d), 0)).unwrap();
                let _ = sock.send_to(&req, ("127.0.0.1", s.ntp_port));
                sent += 1;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120));
    }
    let received = s.wait_metric("ntsd_ntp_kernel_timestamps_total", sent * 9 / 10);
    let after = s.rss_kib();
    // Two workers, each with a table of ENTRIES slots of 32 bytes.
    let tables_kib = 2 * ENTRIES * 32 / 1024;
    eprintln!("{sent} clients ({received} received): RSS {before} -> {after} KiB, tables {tables_kib} KiB");
    assert!(
        after <= before + tables_kib + 2048,
        "RSS grew from {before} to {after} KiB (tables: {tables_kib} KiB)"
    );
}
