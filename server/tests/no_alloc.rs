//! The protocol core of the NTP workers' hot path, `Server::handle`,
//! allocates nothing: a counting global allocator sees no allocation while
//! it answers plain, NTS (every AEAD, with and without placeholders) and
//! NAK requests. The requests are built first; only the `handle` calls are
//! counted. Its own test binary, so no other test's allocations are
//! counted. (Here rather than in `nts-proto`, which forbids unsafe code
//! even in tests; a global allocator needs it.)
#![allow(unsafe_code, clippy::unwrap_used, clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

// The protocol crate's test fixtures: a one-key ring, a counting RNG,
// fixed session keys, cookies.
#[path = "../../proto/tests/common/mod.rs"]
mod fixtures;

use fixtures::{cookie, one_key_with, session, Counter, KEY_ID, MASTER, T1, T2};
use nts_proto::client::NtsClient;
use nts_proto::{Action, AeadAlgorithm, NtpHeader, ReplyKind, Server, SystemInfo};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only
// counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn handle_allocates_nothing() {
    let ring = one_key_with(KEY_ID, MASTER);
    let other = one_key_with(KEY_ID + 1, [0x24; 32]);
    let sys = SystemInfo::unsynchronized();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    // Every request first: plain, then NTS with each AEAD (with and
    // without placeholders), then one whose cookie no key opens (a NAK).
    let mut requests: Vec<(Vec<u8>, &str)> = Vec::new();
    requests.push((NtpHeader::client_request(T1).to_bytes().to_vec(), "plain"));
    for alg in AeadAlgorithm::ALL {
        for (n, target) in [(1u8, 1usize), (3, 3), (1, 4)] {
            let keys = session(alg);
            let cookies = (0..n).map(|i| cookie(&ring, &keys, i)).collect();
            let mut client = NtsClient::new(keys, cookies);
            let mut out = [0u8; 2048];
            let (len, _) = client
                .build_request(T1, &[7; 48], target, &mut out)
                .unwrap();
            requests.push((out[..len].to_vec(), "nts"));
        }
    }
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let mut client = NtsClient::new(keys.clone(), vec![cookie(&other, &keys, 9)]);
    let mut out = [0u8; 2048];
    let (len, _) = client.build_request(T1, &[8; 48], 1, &mut out).unwrap();
    requests.push((out[..len].to_vec(), "nak"));

    let mut reply = [0u8; 2048];
    let mut rng = Counter::default();
    let mut kinds = Vec::with_capacity(requests.len());
    COUNTING.store(true, Ordering::Relaxed);
    for (request, _) in &requests {
        let action = server.handle(T2, request, &mut reply, &mut rng);
        kinds.push(match action {
            Action::Reply {
                kind: ReplyKind::Plain,
                ..
            } => "plain",
            Action::Reply {
                kind: ReplyKind::Nts,
                ..
            } => "nts",
            Action::Reply {
                kind: ReplyKind::Nak(_),
                ..
            } => "nak",
            Action::Ignore(_) => "ignored",
        });
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 0, "handle allocated");
    let expected: Vec<&str> = requests.iter().map(|(_, k)| *k).collect();
    assert_eq!(kinds, expected, "every request answered as expected");
}
