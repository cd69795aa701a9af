//! The per-packet crypto path of an NTS reply, piece by piece and whole.
//!
//! `cargo bench -p nts-proto --bench crypto`. The four AEAD operations are
//! sized as in a real AEAD-15 exchange: a 228-byte request with one cookie
//! and a reply carrying one new cookie.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use nts_proto::client::NtsClient;
use nts_proto::cookie::{open_cookie, seal_cookie, COOKIE_NONCE_LEN, MAX_COOKIE_LEN};
use nts_proto::{
    AeadAlgorithm, AeadKey, Leap, MasterKey, NtpShort, NtpTimestamp, Random, Server, SessionKeys,
    SingleKey, SystemInfo,
};
use std::hint::black_box;

struct Counter(u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

fn session(alg: AeadAlgorithm) -> SessionKeys {
    let c2s = vec![0x11; alg.key_len()];
    let s2c = vec![0x22; alg.key_len()];
    SessionKeys {
        c2s: AeadKey::new(alg, &c2s).expect("key length"),
        s2c: AeadKey::new(alg, &s2c).expect("key length"),
    }
}

fn system() -> SystemInfo {
    SystemInfo {
        leap: Leap::NoWarning,
        stratum: 1,
        precision: -24,
        root_delay: NtpShort(0),
        root_dispersion: NtpShort(0),
        reference_id: *b"LOCL",
        reference_time: NtpTimestamp(1),
    }
}

fn cookie(ring: &SingleKey, keys: &SessionKeys, seed: u8) -> Vec<u8> {
    let mut out = [0u8; MAX_COOKIE_LEN];
    let n = seal_cookie(7, ring.key(), &[seed; COOKIE_NONCE_LEN], keys, &mut out).expect("seal");
    out[..n].to_vec()
}

fn pieces(c: &mut Criterion) {
    let ring = SingleKey::new(7, MasterKey::from_bytes(&[0x42; 32]));
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let a_cookie = cookie(&ring, &keys, 1);
    let ad = [0x5a_u8; 188];
    let nonce = [0x33_u8; 16];
    let mut g = c.benchmark_group("aead15");
    g.bench_function("seal_cookie", |b| {
        let mut out = [0u8; MAX_COOKIE_LEN];
        b.iter(|| {
            seal_cookie(
                7,
                ring.key(),
                &[1; COOKIE_NONCE_LEN],
                &keys,
                black_box(&mut out),
            )
        })
    });
    g.bench_function("open_cookie", |b| {
        let mut scratch = [0u8; MAX_COOKIE_LEN];
        b.iter(|| open_cookie(&ring, black_box(&a_cookie), &mut scratch).is_ok())
    });
    // Verifying a request: empty plaintext, the whole packet as associated data.
    let mut tag = [0u8; 16];
    keys.c2s.seal(&ad, &nonce, &mut tag).expect("seal");
    g.bench_function("verify_request", |b| {
        b.iter(|| {
            let mut t = tag;
            keys.c2s.open(black_box(&ad), &nonce, &mut t).is_ok()
        })
    });
    // Sealing a reply: header + unique id as associated data, one cookie field.
    g.bench_function("seal_reply", |b| {
        let mut buf = [0u8; 16 + 104];
        b.iter(|| keys.s2c.seal(black_box(&ad[..84]), &nonce, &mut buf))
    });
    g.finish();
}

fn whole(c: &mut Criterion) {
    let ring = SingleKey::new(7, MasterKey::from_bytes(&[0x42; 32]));
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let mut g = c.benchmark_group("handle");
    for alg in AeadAlgorithm::ALL {
        let keys = session(alg);
        let mut client = NtsClient::new(keys.clone(), vec![cookie(&ring, &keys, 1)]);
        let mut request = [0u8; 512];
        let (len, _) = client
            .build_request(NtpTimestamp(5), &[9; 48], 1, &mut request)
            .expect("request");
        let request = &request[..len];
        g.bench_function(format!("nts_aead{}", alg.id()), |b| {
            let mut rng = Counter(0);
            let mut reply = [0u8; 512];
            b.iter(|| server.handle(NtpTimestamp(6), black_box(request), &mut reply, &mut rng))
        });
    }
    let mut plain = [0u8; 48];
    plain[0] = 0x23;
    g.bench_function("plain", |b| {
        let mut rng = Counter(0);
        let mut reply = [0u8; 48];
        b.iter_batched_ref(
            || plain,
            |p| server.handle(NtpTimestamp(6), black_box(&p[..]), &mut reply, &mut rng),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The AES-128 block cipher under everything above, chained (each block's
/// input is the previous output, as in CMAC) and eight independent blocks
/// at a time (as in CTR).
fn block(c: &mut Criterion) {
    use aes::cipher::generic_array::GenericArray;
    use aes::cipher::{BlockEncrypt, KeyInit};
    let aes = aes::Aes128Enc::new(&GenericArray::from([7u8; 16]));
    let mut g = c.benchmark_group("aes128");
    let mut chained = GenericArray::from([1u8; 16]);
    g.bench_function("one_block_chained", |b| {
        b.iter(|| aes.encrypt_block(&mut chained))
    });
    let mut eight = [GenericArray::from([1u8; 16]); 8];
    g.bench_function("eight_blocks_independent", |b| {
        b.iter(|| aes.encrypt_blocks(&mut eight))
    });
    g.finish();
}

criterion_group!(benches, pieces, whole, block);
criterion_main!(benches);
