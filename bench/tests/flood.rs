//! The generator against an in-process responder running the real protocol
//! core: every reply verifies, NAKs and silence are counted as such.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nts_proto::client::NtsClient;
use nts_proto::cookie::{seal_cookie, CookieKeys, MasterKey};
use nts_proto::{
    Action, AeadAlgorithm, AeadKey, NtpTimestamp, Random, Server, SessionKeys, SystemInfo,
};
use ntsd_bench::{flood, FloodConfig};

struct Ring(MasterKey);

impl CookieKeys for Ring {
    fn sealing_key(&self) -> (u32, &MasterKey) {
        (1, &self.0)
    }
    fn opening_keys(&self, id: u32) -> &[MasterKey] {
        if id == 1 {
            std::slice::from_ref(&self.0)
        } else {
            &[]
        }
    }
}

struct Counter(u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

/// A responder on loopback sealing and opening cookies under `master`.
fn responder(stop: Arc<AtomicBool>, master: [u8; 32]) -> (u16, std::thread::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let ring = Ring(MasterKey::from_bytes(&master));
        let mut system = SystemInfo::unsynchronized();
        system.leap = nts_proto::Leap::NoWarning;
        system.stratum = 1;
        let server = Server {
            keys: &ring,
            system: &system,
        };
        let mut rng = Counter(0);
        let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if let Action::Reply { len, .. } =
                server.handle(NtpTimestamp(7), &buf[..n], &mut out, &mut rng)
            {
                sock.send_to(&out[..len], peer).unwrap();
            }
        }
    });
    (port, handle)
}

fn sessions(count: usize, master: [u8; 32]) -> Vec<NtsClient> {
    let master = MasterKey::from_bytes(&master);
    (0..count)
        .map(|i| {
            let alg = AeadAlgorithm::AesSivCmac256;
            let keys = SessionKeys {
                c2s: AeadKey::new(alg, &[i as u8; 32]).unwrap(),
                s2c: AeadKey::new(alg, &[i as u8 ^ 0xff; 32]).unwrap(),
            };
            let cookies = (0..8)
                .map(|j| {
                    let mut c = vec![0u8; 100];
                    seal_cookie(1, &master, &[j; 16], &keys, &mut c).unwrap();
                    c
                })
                .collect();
            NtsClient::new(keys, cookies)
        })
        .collect()
}

fn run(master_server: [u8; 32], master_client: [u8; 32], nts: bool) -> ntsd_bench::FloodReport {
    let stop = Arc::new(AtomicBool::new(false));
    let (port, handle) = responder(stop.clone(), master_server);
    let cfg = FloodConfig {
        target: ([127, 0, 0, 1], port).into(),
        window: 4,
        duration: Duration::from_millis(500),
    };
    let mut s = if nts {
        sessions(4, master_client)
    } else {
        Vec::new()
    };
    let report = flood(&cfg, &mut s).unwrap();
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap();
    report
}

#[test]
fn nts_flood_verifies_every_reply_and_reuses_new_cookies() {
    let r = run([5; 32], [5; 32], true);
    // Far more replies than the 32 initial cookies: new cookies were used.
    assert!(r.valid > 100, "{r:?}");
    assert_eq!((r.invalid, r.naks, r.lost), (0, 0, 0));
    assert_eq!(r.sent, r.valid);
    assert!(r.percentile_us(0.5) > 0);
}

#[test]
fn plain_flood_counts_valid_replies() {
    let r = run([5; 32], [5; 32], false);
    assert!(r.valid > 100, "{r:?}");
    assert_eq!((r.invalid, r.naks, r.lost), (0, 0, 0));
}

#[test]
fn cookies_under_an_unknown_key_are_counted_as_naks() {
    let r = run([5; 32], [6; 32], true);
    assert_eq!(r.valid, 0);
    assert_eq!(r.naks, 32, "{r:?}");
}
