//! End-to-end tests against the real binary: good exchanges on both back
//! ends, every bad-input answer from RFC 8915, counters, memory, shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{exchange, key_exchange, udp_client, Ntsd, BIN};
use nts_proto::client::NtsClient;
use nts_proto::ke::{decode_message, Record};
use nts_proto::NtpTimestamp;

fn random48(seed: u64) -> [u8; 48] {
    let mut out = [0u8; 48];
    for (i, b) in out.iter_mut().enumerate() {
        *b = (seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64 * 31)
            >> 7) as u8;
    }
    out
}

/// Sends one NTS request from `client`; returns the raw request and reply.
fn nts_round(
    client: &mut NtsClient,
    sock: &std::net::UdpSocket,
    seed: u64,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut buf = [0u8; 2048];
    let (len, _) = client
        .build_request(NtpTimestamp(seed), &random48(seed), 8, &mut buf)
        .unwrap();
    let req = buf[..len].to_vec();
    let reply = exchange(sock, &req);
    (req, reply)
}

#[test]
fn query_and_nts_exchanges_on_both_backends() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let out = Command::new(BIN)
            .args(["query", &format!("localhost:{}", s.ke_port), "--ca"])
            .arg(s.ca())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{backend}: query failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("8 cookies of 100 bytes"), "{text}");
        assert!(
            text.contains("authenticated") && text.contains("stratum 1"),
            "{text}"
        );

        let ke = key_exchange(&s);
        assert_eq!(ke.result.port, Some(s.ntp_port));
        let mut client = NtsClient::new(ke.keys, ke.result.cookies);
        let sock = udp_client(s.ntp_port);
        // More exchanges than the 8 KE cookies: new cookies must work.
        for i in 0..20 {
            let mut buf = [0u8; 2048];
            let (len, pending) = client
                .build_request(NtpTimestamp(1000 + i), &random48(i), 8, &mut buf)
                .unwrap();
            let reply = exchange(&sock, &buf[..len]).expect("reply");
            assert!(reply.len() <= len, "reply longer than request");
            let v = client.verify_reply(&reply, &pending).unwrap();
            assert_eq!(v.header.stratum, 1);
            assert_eq!(v.header.reference_id, *b"TEST");
        }
        assert_eq!(
            s.wait_metric("ntsd_ntp_responses_total{kind=\"nts\"}", 21),
            21
        );
        assert!(s.terminate().success(), "{backend}: unclean exit");
    }
}

/// A TLS client that sends `request` verbatim and returns the raw response.
fn ke_raw(s: &Ntsd, request: &[u8], alpn: bool) -> Result<Vec<u8>, std::io::Error> {
    let mut cfg = (*nts_client::client_config(Some(&s.ca())).unwrap()).clone();
    if !alpn {
        cfg.alpn_protocols.clear();
    }
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", s.ke_port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request)?;
    let mut out = Vec::new();
    match tls.read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(out),
        Err(e) => Err(e),
    }
}

#[test]
fn ke_error_answers() {
    let s = Ntsd::start("auto");
    let eom = [0x80u8, 0, 0, 0];
    let next_protocol = [0x80u8, 1, 0, 2, 0, 0];
    let aead15 = [0u8, 4, 0, 2, 0, 15];

    // Unrecognised critical record: Error 0.
    let req = [&[0x80u8, 0x63, 0, 0][..], &next_protocol, &aead15, &eom].concat();
    let resp = decode_message(&ke_raw(&s, &req, true).unwrap()).unwrap();
    assert_eq!(resp, vec![Record::Error(0), Record::EndOfMessage]);

    // No Next Protocol record: Error 1.
    let req = [&aead15[..], &eom].concat();
    let resp = decode_message(&ke_raw(&s, &req, true).unwrap()).unwrap();
    assert_eq!(resp, vec![Record::Error(1), Record::EndOfMessage]);

    // A Next Protocol record with no protocol id: Error 1, as chrony answers.
    let req = [&[0x80u8, 1, 0, 0][..], &aead15, &eom].concat();
    let resp = decode_message(&ke_raw(&s, &req, true).unwrap()).unwrap();
    assert_eq!(resp, vec![Record::Error(1), Record::EndOfMessage]);

    // Malformed record body: Error 1.
    let req = [&[0x80u8, 1, 0, 1, 0][..], &aead15, &eom].concat();
    let resp = decode_message(&ke_raw(&s, &req, true).unwrap()).unwrap();
    assert_eq!(resp, vec![Record::Error(1), Record::EndOfMessage]);

    // No AEAD in common (31 and 1 are not supported): an empty AEAD record, no cookies.
    let req = [&next_protocol[..], &[0, 4, 0, 4, 0, 31, 0, 1], &eom].concat();
    let resp = decode_message(&ke_raw(&s, &req, true).unwrap()).unwrap();
    assert_eq!(
        resp,
        vec![
            Record::NextProtocol(vec![0]),
            Record::Aead(vec![]),
            Record::EndOfMessage
        ]
    );

    // ntpd-rs's offer [17, 15]: the client's order is honoured.
    let req = [&next_protocol[..], &[0, 4, 0, 4, 0, 17, 0, 15], &eom].concat();
    let resp = decode_message(&ke_raw(&s, &req, true).unwrap()).unwrap();
    assert!(resp.contains(&Record::Aead(vec![17])), "{resp:?}");
    let cookies: Vec<_> = resp
        .iter()
        .filter(|r| matches!(r, Record::NewCookie(c) if c.len() == 164))
        .collect();
    assert_eq!(cookies.len(), 8);
    assert!(resp.contains(&Record::Port(s.ntp_port)));

    // Without ALPN the server closes without answering.
    let resp = ke_raw(&s, &[&next_protocol[..], &aead15, &eom].concat(), false).unwrap_or_default();
    assert!(resp.is_empty());

    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"unrecognized_critical\"}", 1),
        1
    );
    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"bad_request\"}", 3),
        3
    );
    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"no_common_aead\"}", 1),
        1
    );
    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"no_alpn\"}", 1),
        1
    );
    assert_eq!(s.wait_metric("ntsd_ke_sessions_total{aead=\"17\"}", 1), 1);
    assert_eq!(s.metric_sum("ntsd_ke_sessions_total"), 1);
    // Still serving.
    assert_eq!(key_exchange(&s).result.cookies.len(), 8);
}

#[test]
fn garbage_tls_and_silent_clients_are_cut_off() {
    let s = Ntsd::start_with("auto", "", "timeout = \"1s\"", "");
    // Garbage instead of a ClientHello.
    let mut tcp = TcpStream::connect(("127.0.0.1", s.ke_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(&[0x42; 300]).unwrap();
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink);
    assert_eq!(s.wait_metric("ntsd_ke_errors_total{reason=\"tls\"}", 1), 1);

    // A client that sends nothing is disconnected by the timeout.
    let mut idle = TcpStream::connect(("127.0.0.1", s.ke_port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let n = idle.read(&mut [0u8; 16]).unwrap_or(0);
    let waited = start.elapsed();
    assert_eq!(n, 0, "expected the server to close the connection");
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(
        s.wait_metric("ntsd_ke_errors_total{reason=\"timeout\"}", 1),
        1
    );
    assert_eq!(key_exchange(&s).result.cookies.len(), 8);
}

#[test]
fn ke_connection_cap_refuses_the_excess() {
    let s = Ntsd::start_with("auto", "", "max_connections = 2\ntimeout = \"3s\"", "");
    let held: Vec<_> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", s.ke_port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(("127.0.0.1", s.ke_port)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    assert_eq!(third.read(&mut [0u8; 8]).unwrap_or(0), 0);
    assert_eq!(s.wait_metric("ntsd_ke_errors_total{reason=\"busy\"}", 1), 1);
    drop(held);
}

#[test]
fn bad_ntp_input_is_dropped_or_nakked_and_service_continues() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let sock = udp_client(s.ntp_port);
        let ke = key_exchange(&s);
        let good_cookie = ke.result.cookies[0].clone();

        // Malformed: truncated header, oversized datagram, bad EF length.
        let plain = {
            let mut p = [0u8; 48];
            p[0] = 0x23;
            p
        };
        assert!(exchange(&sock, &plain[..47]).is_none());
        let mut big = vec![0u8; 3000];
        big[0] = 0x23;
        assert!(exchange(&sock, &big).is_none());
        let bad_ef = [
            &plain[..],
            &[0x01, 0x04, 0x00, 0x0d, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert!(exchange(&sock, &bad_ef).is_none());
        // Not a client packet.
        let mut server_mode = plain;
        server_mode[0] = 0x24;
        assert!(exchange(&sock, &server_mode).is_none());

        // A cookie under an unknown key id: NTS NAK.
        let mut unknown = good_cookie.clone();
        unknown[0] ^= 0xff;
        let mut c = NtsClient::new(ke.keys.clone(), vec![unknown]);
        let (req, reply) = nts_round(&mut c, &sock, 1);
        let reply = reply.expect("NAK");
        assert!(reply.len() <= req.len());
        assert_eq!(&reply[12..16], b"NTSN");
        assert_eq!(reply[1], 0, "kiss-o'-death has stratum 0");

        // A tampered cookie and a request that fails authentication: NAK.
        let mut tampered = good_cookie.clone();
        tampered[50] ^= 1;
        let mut c = NtsClient::new(ke.keys.clone(), vec![tampered]);
        assert_eq!(
            &nts_round(&mut c, &sock, 2).1.expect("NAK")[12..16],
            b"NTSN"
        );
        let (mut req, _) = {
            let mut c = NtsClient::new(ke.keys.clone(), vec![good_cookie.clone()]);
            let mut buf = [0u8; 2048];
            let (len, _) = c
                .build_request(NtpTimestamp(3), &random48(3), 1, &mut buf)
                .unwrap();
            (buf[..len].to_vec(), ())
        };
        let last = req.len() - 1;
        req[last] ^= 1;
        assert_eq!(&exchange(&sock, &req).expect("NAK")[12..16], b"NTSN");

        // Plain NTPv4 still answered, and a valid NTS request too.
        assert_eq!(exchange(&sock, &plain).expect("plain reply").len(), 48);
        let mut c = NtsClient::new(ke.keys.clone(), ke.result.cookies[1..].to_vec());
        let (_, reply) = nts_round(&mut c, &sock, 4);
        assert!(reply.is_some());

        for (key, want) in [
            ("ntsd_ntp_dropped_total{reason=\"too_short\"}", 1),
            ("ntsd_ntp_dropped_total{reason=\"malformed\"}", 2),
            ("ntsd_ntp_dropped_total{reason=\"not_client\"}", 1),
            ("ntsd_ntp_naks_total{reason=\"cookie_unknown_key\"}", 1),
            ("ntsd_ntp_naks_total{reason=\"cookie_invalid\"}", 1),
            ("ntsd_ntp_naks_total{reason=\"auth_failed\"}", 1),
            ("ntsd_ntp_responses_total{kind=\"plain\"}", 1),
            ("ntsd_ntp_responses_total{kind=\"nts\"}", 1),
        ] {
            assert_eq!(s.wait_metric(key, want), want, "{key}");
        }
        assert!(s.terminate().success());
    }
}

/// Bursts of datagrams, more in all than the io_uring back end has receive
/// buffers (256 per worker) and than fit one send batch. Round 0 sends all
/// 1,200 back to back (the server may drop some at its socket buffer);
/// round 1 pauses between sockets so that nearly all get in. In both, every
/// datagram the server took in is answered once with its own origin
/// timestamp and nothing fails; after round 1 the buffers have gone round
/// the ring; service goes on. (With the sizes forced down to 4 buffers and
/// batches of 2, this also passed: ENOBUFS re-arms the receive.)
#[test]
fn bursts_beyond_the_receive_buffers_are_all_answered() {
    const SOCKETS: u64 = 12;
    const PER_SOCKET: u64 = 100;
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let socks: Vec<_> = (0..SOCKETS).map(|_| udp_client(s.ntp_port)).collect();
        let mut received_before = 0;
        for round in 0..2u64 {
            let origin_of = |i: usize, j: u64| (round * 100 + i as u64) * 1000 + j + 1;
            for (i, sock) in socks.iter().enumerate() {
                for j in 0..PER_SOCKET {
                    let mut req = [0u8; 48];
                    req[0] = 0x23;
                    req[40..48].copy_from_slice(&origin_of(i, j).to_be_bytes());
                    sock.send(&req).unwrap();
                }
                if round == 1 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            // Replies come within microseconds each; let the last ones land.
            std::thread::sleep(Duration::from_millis(300));
            let mut answered = 0u64;
            for (i, sock) in socks.iter().enumerate() {
                sock.set_read_timeout(Some(Duration::from_millis(50)))
                    .unwrap();
                let mut seen = std::collections::HashSet::new();
                let mut buf = [0u8; 128];
                while let Ok(n) = sock.recv(&mut buf) {
                    assert_eq!(n, 48, "{backend}: reply length");
                    let origin = u64::from_be_bytes(buf[24..32].try_into().unwrap());
                    let j = origin.wrapping_sub(origin_of(i, 0));
                    assert!(
                        j < PER_SOCKET,
                        "{backend} round {round}: reply to another request"
                    );
                    assert!(
                        seen.insert(j),
                        "{backend} round {round}: request {j} answered twice"
                    );
                }
                answered += seen.len() as u64;
            }
            let received = s.metric_sum("ntsd_worker_packets_received_total");
            eprintln!(
                "{backend} round {round}: {answered} of {} answered",
                SOCKETS * PER_SOCKET
            );
            assert_eq!(
                answered,
                received - received_before,
                "{backend} round {round}: every request the server took in is answered"
            );
            received_before = received;
            if round == 1 {
                assert!(
                    answered > 256,
                    "{backend}: only {answered} of {} answered",
                    SOCKETS * PER_SOCKET
                );
            }
        }
        assert_eq!(s.metric("ntsd_ntp_io_errors_total{op=\"receive\"}"), 0);
        assert_eq!(s.metric("ntsd_ntp_io_errors_total{op=\"send\"}"), 0);
        let mut req = [0u8; 48];
        req[0] = 0x23;
        socks[0]
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        assert!(
            exchange(&socks[0], &req).is_some(),
            "{backend}: no answer after the bursts"
        );
    }
}

/// Within one receive batch, datagrams that get no reply (server-mode
/// packets, garbage) sit between ones that do: every answered request gets
/// its own reply, on each back end.
#[test]
fn batches_with_dropped_datagrams_answer_the_rest() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let sock = udp_client(s.ntp_port);
        const N: u64 = 200;
        for j in 0..N {
            let mut req = [0u8; 48];
            // Every third one is a server-mode packet, which is dropped.
            req[0] = if j % 3 == 1 { 0x24 } else { 0x23 };
            req[40..48].copy_from_slice(&(j + 1).to_be_bytes());
            sock.send(&req).unwrap();
            if j % 3 == 2 {
                sock.send(&[0xffu8; 7]).unwrap();
            }
            if j % 50 == 49 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 128];
        while let Ok(n) = sock.recv(&mut buf) {
            assert_eq!(n, 48, "{backend}");
            let origin = u64::from_be_bytes(buf[24..32].try_into().unwrap());
            assert!((1..=N).contains(&origin), "{backend}: origin {origin}");
            assert_ne!(
                (origin - 1) % 3,
                1,
                "{backend}: a dropped request was answered"
            );
            assert!(seen.insert(origin), "{backend}: {origin} answered twice");
        }
        // The kernel may drop some of a burst at the socket buffer; every
        // reply the server made arrived, each to its own request.
        let expected = (0..N).filter(|j| j % 3 != 1).count();
        let replies = s.metric("ntsd_ntp_responses_total{kind=\"plain\"}");
        assert_eq!(seen.len() as u64, replies, "{backend}");
        assert!(
            seen.len() * 10 >= expected * 8,
            "{backend}: {} of {expected}",
            seen.len()
        );
        assert!(s.terminate().success());
    }
}

/// The server keeps no per-client state: serving many distinct clients
/// (source ports, cookies) does not grow its memory.
#[test]
fn memory_does_not_grow_with_distinct_clients() {
    let s = Ntsd::start("auto");
    let ke = key_exchange(&s);
    let mut client = NtsClient::new(ke.keys, ke.result.cookies);
    let run = |client: &mut NtsClient, sockets: usize, per_socket: u64, base: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..sockets {
            let sock = udp_client(s.ntp_port);
            for j in 0..per_socket {
                let seed = base + i as u64 * 100 + j;
                let mut buf = [0u8; 2048];
                let (len, pending) = client
                    .build_request(NtpTimestamp(seed), &random48(seed), 8, &mut buf)
                    .unwrap();
                let reply = exchange(&sock, &buf[..len]).expect("reply");
                client.verify_reply(&reply, &pending).unwrap();
            }
            assert!(Instant::now() < deadline, "load loop ran too long");
        }
    };
    run(&mut client, 200, 5, 0);
    let before = s.rss_kib();
    run(&mut client, 2000, 2, 1_000_000);
    let after = s.rss_kib();
    eprintln!(
        "RSS after 1000 requests: {before} KiB; after 4000 more from 2000 new sockets: {after} KiB"
    );
    assert!(
        after <= before + 1024,
        "RSS grew from {before} KiB to {after} KiB over 2000 new clients"
    );
}

/// Runs `ntsd SUBCOMMAND --config FILE`; returns success and stderr.
fn with_config(subcommand: &str, config: &std::path::Path) -> (bool, String) {
    common::output(Command::new(BIN).args([subcommand, "--config"]).arg(config))
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config.toml.example"
    ));
    let (ok, err) = with_config("check-config", example);
    assert!(ok, "{err}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let base = "[nts_ke]\ncertificate_chain = \"a\"\nprivate_key = \"b\"\n";
    std::fs::write(&bad, format!("{base}max_conections = 5\n")).unwrap();
    let (ok, err) = with_config("check-config", &bad);
    assert!(
        !ok && err.contains("bad.toml") && err.contains("max_conections"),
        "{err}"
    );

    std::fs::write(&bad, format!("{base}[keys]\nkeep = 0\n")).unwrap();
    let (ok, err) = with_config("check-config", &bad);
    assert!(!ok && err.contains("[keys] keep"), "{err}");
    let (ok, err) = with_config("run", &bad);
    assert!(!ok && err.contains("[keys] keep"), "{err}");
}

/// A missing certificate takes NTS-KE down, not the server: NTP is
/// answered, NTS-KE connections are closed before TLS, and the log, the
/// health endpoints and the metrics say why.
#[test]
fn a_missing_certificate_takes_only_nts_ke_down() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    // config_text names dir/chain.pem and dir/key.pem, which do not exist.
    std::fs::write(&cfg, common::config_text(dir.path(), "auto", "", "", "")).unwrap();
    let s = Ntsd::spawn(dir.path().to_owned(), &cfg);
    let chain = dir.path().join("chain.pem").display().to_string();
    assert!(
        s.log_text().contains(&chain) && s.log_text().contains("NTS-KE is down"),
        "{}",
        s.log_text()
    );
    let sock = udp_client(s.ntp_port);
    let req = nts_proto::NtpHeader::client_request(NtpTimestamp(1)).to_bytes();
    assert!(exchange(&sock, &req).is_some(), "plain NTP unanswered");
    let mut t = TcpStream::connect(("127.0.0.1", s.ke_port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(t.read(&mut buf).unwrap_or(0), 0, "NTS-KE was not closed");
    assert!(s.wait_metric("ntsd_ke_errors_total{reason=\"no_certificate\"}", 1) >= 1);
    assert!(s.metrics().contains(&("ntsd_ke_up".to_owned(), 0)));
    for path in ["/healthz", "/readyz"] {
        let (status, body) = s.http_get(path);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(
            body.contains("degraded: NTS-KE") && body.contains(&chain),
            "{path}: {body}"
        );
    }
    let (status, body) = s.http_get("/readyz/nts-ke");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no usable certificate"), "{body}");
}

#[test]
fn sigint_stops_the_server_cleanly() {
    let s = Ntsd::start("auto");
    common::unsafe_free_kill(s.pid(), "INT");
    let start = Instant::now();
    assert!(s.wait_exit().success());
    assert!(start.elapsed() < Duration::from_secs(5));
}

fn now_ntp() -> NtpTimestamp {
    common::now_ntp()
}

/// Receive timestamps are the kernel's (SO_TIMESTAMPING), not a clock read
/// while processing: a request that waits in the socket while the server is
/// stopped keeps its arrival time as T2, while T3 shows the wait.
#[test]
fn receive_timestamps_come_from_the_kernel() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let sock = udp_client(s.ntp_port);
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let plain = |t1: NtpTimestamp| nts_proto::NtpHeader::client_request(t1).to_bytes();
        let decode = |b: &[u8]| {
            nts_proto::NtpHeader::decode(&mut nts_proto::reader::Reader::new(b)).unwrap()
        };

        // Baseline: t1 <= T2 <= T3 <= t4 on every exchange.
        let mut rx_after_send = Vec::new();
        for _ in 0..100 {
            let t1 = now_ntp();
            let reply = exchange(&sock, &plain(t1)).expect("reply");
            let t4 = now_ntp();
            let h = decode(&reply);
            let (rx, tx) = (h.receive.seconds_since(t1), h.transmit.seconds_since(t1));
            let rtt = t4.seconds_since(t1);
            assert!(
                rx >= -1e-6 && rx <= tx && tx <= rtt + 1e-6,
                "{backend}: rx {rx} tx {tx} rtt {rtt}"
            );
            rx_after_send.push(rx);
        }
        rx_after_send.sort_by(f64::total_cmp);

        // The server is stopped while the request arrives.
        common::unsafe_free_kill(s.pid(), "STOP");
        std::thread::sleep(Duration::from_millis(50));
        let t1 = now_ntp();
        sock.send(&plain(t1)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        common::unsafe_free_kill(s.pid(), "CONT");
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("reply after SIGCONT");
        let h = decode(&buf[..n]);
        let (rx, tx) = (h.receive.seconds_since(t1), h.transmit.seconds_since(t1));
        eprintln!(
            "{backend}: T2 - t1 median {:.1} us, max {:.1} us over 100 exchanges; stopped server: T2 - t1 = {:.1} us, T3 - t1 = {:.1} ms",
            rx_after_send[50] * 1e6,
            rx_after_send[99] * 1e6,
            rx * 1e6,
            tx * 1e3
        );
        assert!(tx >= 0.25, "{backend}: the server was not stopped ({tx} s)");
        assert!(
            rx < 0.05,
            "{backend}: T2 is {rx} s after sending: not a kernel timestamp"
        );
        assert_eq!(s.metric("ntsd_ntp_daemon_timestamps_total"), 0);
    }
}

/// On a wildcard socket, a reply leaves from the address the request was
/// sent to (anycast, or a second address of the host): a client whose
/// socket is connected to that address accepts nothing else.
#[test]
fn wildcard_sockets_answer_from_the_address_asked() {
    for backend in common::backends() {
        let dir = common::pki_dir();
        let text = common::config_text(dir.path(), backend, "", "", "").replacen(
            "listen = [\"127.0.0.1:0\", \"[::1]:0\"]",
            "listen = [\"0.0.0.0:0\"]",
            1,
        );
        let text = text.replacen(
            "listen = [\"127.0.0.1:0\"]\nworkers",
            "listen = [\"0.0.0.0:0\"]\nworkers",
            1,
        );
        assert!(text.contains("listen = [\"0.0.0.0:0\"]"), "{text}");
        let cfg = dir.path().join("wild.toml");
        std::fs::write(&cfg, text).unwrap();
        let w = Ntsd::spawn(dir.path().to_owned(), &cfg);
        for to in ["127.0.0.1", "127.0.0.2", "127.0.1.77"] {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.connect((to, w.ntp_port)).unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
                .unwrap();
            let req = nts_proto::NtpHeader::client_request(NtpTimestamp(1)).to_bytes();
            assert!(
                exchange(&sock, &req).is_some(),
                "{backend}: no reply from {to} (answered from another address?)"
            );
        }
    }
}

/// Datagrams received so far by each NTP worker, in worker order.
fn received_per_worker(s: &Ntsd) -> Vec<u64> {
    let mut per: Vec<(String, u64)> = s
        .metrics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("ntsd_worker_packets_received_total{"))
        .collect();
    per.sort();
    per.into_iter().map(|(_, v)| v).collect()
}

/// One worker per client: a client that opens a new source port for every
/// request, as chrony does, reaches the same worker every time, over IPv4
/// and IPv6 and on both back ends (the test server runs two workers).
#[test]
fn a_client_changing_its_source_port_reaches_one_worker() {
    for backend in common::backends() {
        let s = Ntsd::start(backend);
        let mut sources: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into()];
        if common::ipv6_loopback() {
            sources.push(std::net::Ipv6Addr::LOCALHOST.into());
        }
        for source in sources {
            let before = received_per_worker(&s);
            assert_eq!(before.len(), 2, "{backend}: {before:?}");
            for _ in 0..12 {
                let sock = std::net::UdpSocket::bind((source, 0)).unwrap();
                sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let req = nts_proto::NtpHeader::client_request(common::now_ntp()).to_bytes();
                sock.send_to(&req, (source, s.ntp_port)).unwrap();
                let mut buf = [0u8; 128];
                let n = sock.recv(&mut buf).expect("no reply");
                assert_eq!(n, 48);
            }
            let after = received_per_worker(&s);
            let grew: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            assert_eq!(grew.iter().sum::<u64>(), 12, "{backend} {source}: {grew:?}");
            assert_eq!(
                grew.iter().filter(|&&d| d > 0).count(),
                1,
                "{backend} {source}: the requests reached more than one worker: {grew:?}"
            );
        }
    }
}
