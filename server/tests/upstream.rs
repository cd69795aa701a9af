//! `source = "upstream"` against a fake upstream NTP server in the test:
//! synchronised -> stratum + 1; unsynchronised or silent -> leap 3 after
//! the hold time; recovery.

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{exchange, udp_client, Ntsd};
use nts_proto::packet::Mode;
use nts_proto::reader::Reader;
use nts_proto::{Leap, NtpHeader, NtpShort};

const SYNCED: u8 = 0;
const UNSYNCED: u8 = 1;
const SILENT: u8 = 2;

/// A stratum-1 NTP responder whose state the test switches.
struct FakeUpstream {
    port: u16,
    state: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    fn start_on(addr: &str) -> Self {
        let sock = UdpSocket::bind(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let port = sock.local_addr().unwrap().port();
        let state = Arc::new(AtomicU8::new(SYNCED));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !sp.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Some(req) = NtpHeader::decode(&mut Reader::new(&buf[..n])) else {
                    continue;
                };
                let now = common::now_ntp();
                let state = st.load(Ordering::Relaxed);
                if state == SILENT {
                    continue;
                }
                let reply = NtpHeader {
                    leap: if state == UNSYNCED {
                        Leap::Unsynchronized
                    } else {
                        Leap::NoWarning
                    },
                    version: 4,
                    mode: Mode::Server,
                    stratum: 1,
                    poll: req.poll,
                    precision: -20,
                    root_delay: NtpShort::from_seconds(0.010),
                    root_dispersion: NtpShort::from_seconds(0.002),
                    reference_id: *b"GPS\0",
                    reference_time: now,
                    origin: req.transmit,
                    receive: now,
                    transmit: now,
                };
                let _ = sock.send_to(&reply.to_bytes(), peer);
            }
        });
        Self {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn query(s: &Ntsd) -> NtpHeader {
    let sock = udp_client(s.ntp_port);
    let req = NtpHeader::client_request(common::now_ntp()).to_bytes();
    let reply = exchange(&sock, &req).expect("reply");
    NtpHeader::decode(&mut Reader::new(&reply)).unwrap()
}

/// Polls the server until `pred` holds; returns the header and the wait.
fn wait_for(s: &Ntsd, what: &str, pred: impl Fn(&NtpHeader) -> bool) -> (NtpHeader, Duration) {
    let start = Instant::now();
    loop {
        let h = query(s);
        if pred(&h) {
            return (h, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server following the fake upstream, with `hold_time = "2s"`.
fn following(up: &FakeUpstream) -> (tempfile::TempDir, Ntsd) {
    // The common config uses source = "local"; this replaces the [time] table.
    let dir = common::pki_dir();
    let cfg = common::write_config(dir.path(), "ntsd.toml", "auto", "")
        .to_str()
        .unwrap()
        .to_owned();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[time]\nsource = \"local\"\nstratum = 1\nrefid = \"TEST\"",
        &format!(
            "[time]\nsource = \"upstream\"\nupstream = \"127.0.0.1:{}\"\nhold_time = \"2s\"",
            up.port
        ),
    );
    assert!(text.contains("upstream = "));
    std::fs::write(&cfg, text).unwrap();
    let s = Ntsd::spawn(dir.path().to_owned(), std::path::Path::new(&cfg));
    (dir, s)
}

#[test]
fn upstream_transitions() {
    let up = FakeUpstream::start();
    let (_dir, s) = following(&up);

    // Synchronised: stratum + 1, refid = the upstream's address, its root
    // delay and dispersion plus ours.
    let (h, _) = wait_for(&s, "synchronised", |h| h.leap == Leap::NoWarning);
    assert_eq!(h.stratum, 2);
    assert_eq!(h.reference_id, [127, 0, 0, 1]);
    assert!(
        h.root_delay.seconds() >= 0.010 && h.root_delay.seconds() < 0.02,
        "{h:?}"
    );
    assert!(h.root_dispersion.seconds() >= 0.002, "{h:?}");

    // Unsynchronised upstream: held for hold_time, then leap 3.
    up.set(UNSYNCED);
    let (h, waited) = wait_for(&s, "alarm after unsynchronised upstream", |h| {
        h.leap == Leap::Unsynchronized
    });
    assert!(
        waited >= Duration::from_millis(800),
        "alarm after only {waited:?}"
    );
    assert_eq!(h.stratum, 16);
    assert_eq!(s.wait_metric("ntsd_time_unsynchronised_total", 1), 1);
    assert!(s.metric("ntsd_time_upstream_polls_total{result=\"unsynchronised\"}") >= 1);

    // Recovery.
    up.set(SYNCED);
    let (h, _) = wait_for(&s, "recovery", |h| h.leap == Leap::NoWarning);
    assert_eq!(h.stratum, 2);

    // Silent upstream: the same after the hold time.
    up.set(SILENT);
    let (_, waited) = wait_for(&s, "alarm after silent upstream", |h| {
        h.leap == Leap::Unsynchronized
    });
    assert!(
        waited >= Duration::from_millis(800),
        "alarm after only {waited:?}"
    );
    assert_eq!(s.wait_metric("ntsd_time_unsynchronised_total", 2), 2);
    assert!(s.metric("ntsd_time_upstream_polls_total{result=\"silent\"}") >= 1);
    up.set(SYNCED);
    wait_for(&s, "second recovery", |h| {
        h.leap == Leap::NoWarning && h.stratum == 2
    });
    assert!(s.terminate().success());
}

/// Waits until `/readyz` answers `status`; returns the body and the wait.
fn wait_ready(s: &Ntsd, status: u16) -> (String, Duration) {
    let start = Instant::now();
    loop {
        let (code, body) = s.http_get("/readyz");
        if code == status {
            return (body, start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "/readyz stayed {code}: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An anycast route announcer or a Kubernetes readiness probe must see a
/// node whose upstream went silent drop out, and come back; liveness is not
/// affected.
#[test]
fn readyz_follows_the_upstream_and_healthz_stays_up() {
    let up = FakeUpstream::start();
    let (_dir, s) = following(&up);
    wait_ready(&s, 200);
    assert_eq!(s.http_get("/healthz").0, 200);
    let age = |s: &Ntsd| {
        s.metrics_f64()
            .into_iter()
            .find(|(k, _)| k == "ntsd_time_upstream_last_success_age_seconds")
            .map(|(_, v)| v)
            .expect("upstream age exported with source = upstream")
    };
    assert!(age(&s) < 2.0);

    up.set(SILENT);
    let (body, waited) = wait_ready(&s, 503);
    assert!(body.contains("not synchronised"), "{body}");
    assert!(
        waited >= Duration::from_millis(800),
        "not ready after only {waited:?} (hold_time 2s)"
    );
    assert_eq!(s.http_get("/healthz"), (200, "ok\n".to_owned()));
    assert!(age(&s) >= 2.0);
    assert_eq!(s.metric("ntsd_time_synchronised"), 0);

    up.set(SYNCED);
    let (body, _) = wait_ready(&s, 200);
    assert_eq!(body, "ready\n");
    assert_eq!(s.metric("ntsd_time_synchronised"), 1);
    assert_eq!(s.http_get("/healthz").0, 200);
}

/// `[time] upstream` given as a name: a name that does not resolve at boot
/// does not stop the start (the server serves leap indicator 3 and is not
/// ready) and is tried again until it resolves; when polls keep failing
/// the name is resolved again, so an upstream that moved is followed.
/// Runs ntsd in a mount namespace whose /etc/hosts the test rewrites (and
/// whose name service reads only that file).
#[test]
fn a_named_upstream_is_resolved_when_it_can_be_and_again_when_it_moves() {
    if !common::require("root (mount namespace)", common::is_root())
        || !common::require(
            "/etc/nsswitch.conf",
            std::path::Path::new("/etc/nsswitch.conf").exists(),
        )
    {
        return;
    }
    let a = FakeUpstream::start();
    let b = FakeUpstream::start_on(&format!("127.0.0.2:{}", a.port));
    b.set(SILENT);
    let dir = common::pki_dir();
    let hosts = dir.path().join("hosts");
    let nss = dir.path().join("nsswitch.conf");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    std::fs::write(&nss, "hosts: files\n").unwrap();
    let cfg = common::write_config(dir.path(), "ntsd.toml", "auto", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[time]\nsource = \"local\"\nstratum = 1\nrefid = \"TEST\"",
        &format!(
            "[time]\nsource = \"upstream\"\nupstream = \"upstream.ntsd.test:{}\"\nhold_time = \"60s\"",
            a.port
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-ec"])
        .arg("mount --bind \"$1\" /etc/hosts; mount --bind \"$2\" /etc/nsswitch.conf; exec \"$3\" run --config \"$4\"")
        .arg("sh")
        .arg(&hosts)
        .arg(&nss)
        .arg(common::BIN)
        .arg(&cfg);
    let s = Ntsd::try_spawn_command(dir.path().to_owned(), cmd)
        .unwrap_or_else(|log| panic!("a name that does not resolve stopped the start:\n{log}"));
    let h = query(&s);
    assert_eq!(h.leap, Leap::Unsynchronized);
    assert_eq!(s.http_get("/readyz").0, 503);

    // The name appears: followed within the retry interval.
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.1 upstream.ntsd.test\n",
    )
    .unwrap();
    let (h, took) = wait_for(&s, "the name resolving", |h| h.leap == Leap::NoWarning);
    eprintln!("synchronised {took:?} after the name appeared");
    assert_eq!(h.reference_id, [127, 0, 0, 1]);
    assert!(s.log_text().contains("cannot resolve"), "{}", s.log_text());

    // The upstream moves: the old address goes silent, the name points
    // to the new one, and failing polls make ntsd look it up again.
    a.set(SILENT);
    b.set(SYNCED);
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 upstream.ntsd.test\n",
    )
    .unwrap();
    let (h, took) = wait_for(&s, "the new address", |h| {
        h.reference_id == [127, 0, 0, 2] && h.leap == Leap::NoWarning
    });
    eprintln!("following the new address {took:?} after the move");
    assert_eq!(h.stratum, 2);
    assert!(s.terminate().success());
}
