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

use fixtures::{
    cookie, first_byte, header, one_key_with, push_authenticator, push_field, session, Counter,
    KEY_ID, MASTER, T1, T2,
};
use nts_proto::client::NtsClient;
use nts_proto::ef::field_type;
use nts_proto::{
    Action, AeadAlgorithm, Interleave, NtpHeader, NtpTimestamp, ReplyKind, Server, SystemInfo,
};

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

/// The count is global: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn handle_allocates_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
    ALLOCATIONS.store(0, Ordering::Relaxed);
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

/// A store of one saved pair, as fixed as the workers' table.
struct OnePair(Option<NtpTimestamp>);

impl Interleave for OnePair {
    fn exchange(&mut self, _: NtpTimestamp, _: NtpTimestamp) -> Option<NtpTimestamp> {
        self.0.take()
    }
}

/// The interleaved path allocates nothing either: plain and NTS requests
/// in interleaved form, each answered with a saved transmit timestamp.
#[test]
fn interleaved_replies_allocate_nothing() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ring = one_key_with(KEY_ID, MASTER);
    let sys = SystemInfo::unsynchronized();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let interleaved_form = || {
        let mut h = header(first_byte(4, 3), T1);
        h[24..32].copy_from_slice(&0xe9a0_0000_0000_0001u64.to_be_bytes());
        h[32..40].copy_from_slice(&0xe9a0_0000_0000_1000u64.to_be_bytes());
        h
    };
    let plain = interleaved_form();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let mut nts = interleaved_form();
    push_field(&mut nts, field_type::UNIQUE_IDENTIFIER, &[0xa0; 32]);
    push_field(&mut nts, field_type::COOKIE, &cookie(&ring, &keys, 1));
    push_authenticator(&mut nts, &keys.c2s, &[0xc0; 16], &[]);

    let mut reply = [0u8; 2048];
    let mut rng = Counter::default();
    let mut kinds = Vec::with_capacity(2);
    // Session ciphers are expanded on their first use, once per key (as
    // the client's were above when it built its requests).
    for request in [&plain, &nts] {
        let _ =
            server.handle_interleaved(T2, || T2, &mut OnePair(None), request, &mut reply, &mut rng);
    }
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for request in [&plain, &nts] {
        let mut saved = OnePair(Some(NtpTimestamp(0xe9a0_0000_0000_2000)));
        let action =
            server.handle_interleaved(T2, || T2, &mut saved, request, &mut reply, &mut rng);
        kinds.push((action, saved.0.is_none()));
    }
    COUNTING.store(false, Ordering::Relaxed);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "handle_interleaved allocated"
    );
    assert!(
        matches!(
            kinds[0],
            (
                Action::Reply {
                    kind: ReplyKind::Plain,
                    ..
                },
                true
            )
        ),
        "{kinds:?}"
    );
    assert!(
        matches!(
            kinds[1],
            (
                Action::Reply {
                    kind: ReplyKind::Nts,
                    ..
                },
                true
            )
        ),
        "{kinds:?}"
    );
}
