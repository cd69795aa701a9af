//! The client log and interleaved mode seen from outside: a known load from
//! known loopback addresses (127.0.0.2, 127.0.0.3), then `ntsd clients` and
//! the `ntsd stats` lines that chrony's `serverstats` has for them; and an
//! interleaved exchange built by hand, checked field by field against RFC
//! 9769 and the kernel's transmit time.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::Ntsd;
use nts_proto::reader::Reader;
use nts_proto::{NtpHeader, NtpTimestamp};

fn client_from(source: &str, port: u16) -> UdpSocket {
    let s = UdpSocket::bind((source, 0)).unwrap();
    s.connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    s
}

fn request(origin: NtpTimestamp, receive: NtpTimestamp, transmit: NtpTimestamp) -> Vec<u8> {
    let mut h = NtpHeader::client_request(transmit);
    h.origin = origin;
    h.receive = receive;
    h.to_bytes().to_vec()
}

fn ask(s: &UdpSocket, req: &[u8]) -> (NtpHeader, NtpTimestamp) {
    s.send(req).unwrap();
    let mut buf = [0u8; 256];
    let n = s.recv(&mut buf).expect("a reply");
    let t4 = common::now_ntp();
    (NtpHeader::decode(&mut Reader::new(&buf[..n])).unwrap(), t4)
}

fn ntsd(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ntsd"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Requests in interleaved form, as chrony's `xleave` sends them: the
/// third reply is interleaved, carries the request's receive field as its
/// origin and, as transmit timestamp, the kernel's time of the second
/// reply, which lies between that reply's receive timestamp and the moment
/// the client read it. A pair goes out once: asking again is basic.
#[test]
fn a_hand_built_interleaved_exchange() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let c = client_from("127.0.0.2", s.ntp_port);
        let t1 = NtpTimestamp(0x1111_2222_3333_4444);
        let (r1, _) = ask(&c, &request(NtpTimestamp(0), NtpTimestamp(0), t1));
        assert_eq!(r1.origin, t1);
        assert_eq!(r1.receive.0 & 1, 1, "receive timestamps are odd");
        assert_eq!(r1.transmit.0 & 1, 0, "transmit timestamps are even");
        let t1b = NtpTimestamp(0x5555_6666_7777_8888);
        let (r2, t4) = ask(&c, &request(r1.receive, NtpTimestamp(9), t1b));
        assert_eq!(r2.origin, t1b, "{backend}: nothing saved yet: basic");
        let t1c = NtpTimestamp(0x9999_aaaa_bbbb_cccc);
        let client_rx = NtpTimestamp(0x0123_4567_89ab_cdef);
        let third = request(r2.receive, client_rx, t1c);
        let (r3, _) = ask(&c, &third);
        assert_eq!(r3.origin, client_rx, "{backend}: interleaved origin");
        let previous_tx = r3.transmit;
        assert!(
            previous_tx.0 > r2.receive.0 && previous_tx.0 <= t4.0,
            "{backend}: {previous_tx:?} is not the time reply 2 left ({:?}..{t4:?})",
            r2.receive
        );
        assert!(r3.receive.0 > r2.receive.0);
        let (again, _) = ask(&c, &third);
        assert_eq!(again.origin, t1c, "{backend}: a pair is used once");
        assert_eq!(s.metric("ntsd_ntp_interleaved_responses_total"), 1);
        assert_eq!(s.metric("ntsd_ntp_kernel_tx_timestamps_total"), 1);
        assert!(s.terminate().success());
    }
}

/// `ntsd clients` lists each address with its packets, drops and kinds,
/// most packets first; `--top` cuts the list; `/clients` is not part of
/// `/metrics`; `ntsd stats` has chrony's lines for the client log and
/// interleaved mode.
#[test]
fn clients_and_stats_show_a_known_load() {
    let s = Ntsd::start_with(
        "portable",
        "",
        "",
        "[access.rate_limit]\ninterval = \"10s\"\nburst = 8\nleak = 16\n",
    );
    let a = client_from("127.0.0.2", s.ntp_port);
    for i in 0..3u64 {
        let (r, _) = ask(
            &a,
            &request(NtpTimestamp(0), NtpTimestamp(0), NtpTimestamp(i + 1)),
        );
        assert_eq!(r.origin, NtpTimestamp(i + 1));
    }
    // Interleaved form: the second of these is interleaved.
    let (r, _) = ask(
        &a,
        &request(NtpTimestamp(0), NtpTimestamp(0), NtpTimestamp(77)),
    );
    let (r, _) = ask(&a, &request(r.receive, NtpTimestamp(5), NtpTimestamp(78)));
    let (r, _) = ask(&a, &request(r.receive, NtpTimestamp(6), NtpTimestamp(79)));
    assert_eq!(r.origin, NtpTimestamp(6), "interleaved");
    // 127.0.0.3: ten requests, a burst of eight answered, two dropped.
    let b = client_from("127.0.0.3", s.ntp_port);
    b.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut answered = 0;
    for i in 0..10u64 {
        b.send(&request(
            NtpTimestamp(0),
            NtpTimestamp(0),
            NtpTimestamp(i + 100),
        ))
        .unwrap();
        let mut buf = [0u8; 64];
        answered += usize::from(b.recv(&mut buf).is_ok());
    }
    assert_eq!(answered, 8);

    let url = format!("http://127.0.0.1:{}", s.metrics_port);
    let table = ntsd(&["clients", "--metrics", &url]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Address, NTP, Drop, Int, Last, Interleaved, NTS.
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(&rows[0][..3], ["127.0.0.3", "10", "2"], "{table}");
    assert_eq!((rows[0][5], rows[0][6]), ("0", "0"), "{table}");
    assert_eq!(&rows[1][..3], ["127.0.0.2", "6", "0"], "{table}");
    assert_eq!((rows[1][5], rows[1][6]), ("1", "0"), "{table}");
    assert_eq!(rows[0][4], "0", "last seen just now: {table}");
    let top = ntsd(&["clients", "-n", "--metrics", &url, "--top", "1"]);
    assert_eq!(top.lines().count(), 3, "{top}");
    assert!(
        !s.metrics_text().contains("127.0.0.2"),
        "addresses in /metrics"
    );

    let stats = ntsd(&["stats", "--metrics", &url]);
    let line = |name: &str| {
        stats
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(": ").nth(1))
            .unwrap_or_else(|| panic!("{name} missing:\n{stats}"))
            .trim()
            .to_owned()
    };
    assert_eq!(line("Interleaved NTP packets"), "1", "{stats}");
    assert_eq!(line("NTP kernel TX timestamps"), "1", "{stats}");
    assert_eq!(line("NTP daemon TX timestamps"), "0", "{stats}");
    assert_eq!(line("NTP timestamps held"), "2", "{stats}");
    assert_eq!(line("NTP timestamp span"), "0", "{stats}");
    assert_eq!(line("Client log records dropped"), "0", "{stats}");
    assert!(s.terminate().success());
}
