//! The flood allocates at start (tables, buffers, threads) and never per
//! request: a counting global allocator sees the same few hundred
//! allocations whether the run carries a thousand requests or many more.
//! Its own test binary, so no other test's allocations are counted.
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nts_proto::cookie::{seal_cookie, MasterKey, SingleKey};
use nts_proto::{
    Action, AeadAlgorithm, AeadKey, NtpTimestamp, Random, Server, SessionKeys, SystemInfo,
};
use ntsd_bench::{echo, flood, FloodConfig, Session};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call unchanged to the system allocator; the
// counter is the only addition.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Counter(u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
    }
}

fn nts_sessions(master: &MasterKey) -> Vec<Session> {
    (0..4u8)
        .map(|i| {
            let alg = AeadAlgorithm::AesSivCmac256;
            let keys = SessionKeys {
                c2s: AeadKey::new(alg, &[i; 32]).unwrap(),
                s2c: AeadKey::new(alg, &[i ^ 0xff; 32]).unwrap(),
            };
            let cookies: Vec<Vec<u8>> = (0..8)
                .map(|j| {
                    let mut c = vec![0u8; 100];
                    seal_cookie(1, master, &[j; 16], &keys, &mut c).unwrap();
                    c
                })
                .collect();
            Session::new(keys, &cookies).unwrap()
        })
        .collect()
}

/// Allocations during one flood and the replies it verified.
fn measure(target: std::net::SocketAddr, nts: Option<&MasterKey>, ms: u64) -> (u64, u64) {
    let mut cfg = FloodConfig::new(target, 8, Duration::from_millis(ms));
    cfg.threads = 2;
    cfg.sockets = 2;
    let sessions = nts.map(nts_sessions).unwrap_or_default();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let r = flood(&cfg, sessions).unwrap();
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!((r.invalid, r.lost, r.naks), (0, 0, 0), "{r:?}");
    (allocs, r.valid)
}

#[test]
fn no_allocation_per_request() {
    // Plain, against the reflector (which allocates only when it starts).
    let sock = echo::bind(([127, 0, 0, 1], 0).into(), 1)
        .unwrap()
        .pop()
        .unwrap();
    let target = sock.local_addr().unwrap();
    let stop = AtomicBool::new(false);
    // NTS, against the protocol core (allocation-free per packet).
    let nts_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    nts_sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let nts_target = nts_sock.local_addr().unwrap();
    let master = MasterKey::from_bytes(&[5; 32]);
    std::thread::scope(|s| {
        s.spawn(|| echo::serve(&sock, &stop));
        s.spawn(|| {
            let ring = SingleKey::new(1, MasterKey::from_bytes(&[5; 32]));
            let mut system = SystemInfo::unsynchronized();
            system.stratum = 1;
            let server = Server {
                keys: &ring,
                system: &system,
            };
            let mut rng = Counter(0);
            let (mut buf, mut out) = ([0u8; 2048], [0u8; 2048]);
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, peer)) = nts_sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Action::Reply { len, .. } =
                    server.handle(NtpTimestamp(7), &buf[..n], &mut out, &mut rng)
                {
                    let _ = nts_sock.send_to(&out[..len], peer);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        for nts in [None, Some(&master)] {
            let t = if nts.is_some() { nts_target } else { target };
            let (short_allocs, short_valid) = measure(t, nts, 50);
            let (long_allocs, long_valid) = measure(t, nts, 400);
            assert!(
                long_valid > short_valid + 1000,
                "{short_valid} {long_valid}"
            );
            // The same setup either way; a per-request allocation would add
            // thousands.
            assert!(
                long_allocs < short_allocs + 50,
                "nts {}: {short_allocs} allocations for {short_valid} replies, \
                 {long_allocs} for {long_valid}",
                nts.is_some()
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
}
