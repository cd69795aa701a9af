//! Fixtures shared by the integration tests: a one-key cookie ring, a
//! deterministic random source, fixed session keys and a request builder
//! for packets the real client would never send.
#![allow(dead_code)]

use nts_proto::cookie::{seal_cookie, COOKIE_NONCE_LEN, MAX_COOKIE_LEN};
use nts_proto::ef::{field_type, write_field};
use nts_proto::reader::Writer;
use nts_proto::{
    AeadAlgorithm, AeadKey, Leap, MasterKey, NtpShort, NtpTimestamp, Random, SessionKeys,
    SingleKey, SystemInfo,
};

pub const KEY_ID: u32 = 0x0102_0304;
pub const MASTER: [u8; 32] = [0x42; 32];

/// The tests' cookie ring: one master key ([`MASTER`]) under [`KEY_ID`].
pub fn one_key() -> SingleKey {
    one_key_with(KEY_ID, MASTER)
}

/// A ring of one master key made of `bytes`, accepted under `id`.
pub fn one_key_with(id: u32, bytes: [u8; 32]) -> SingleKey {
    SingleKey::new(id, MasterKey::from_bytes(&bytes))
}

/// Deterministic "randomness": a byte counter.
#[derive(Debug, Clone, Default)]
pub struct Counter(pub u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

/// Session keys with every c2s byte 0x11 and every s2c byte 0x22.
pub fn session(alg: AeadAlgorithm) -> SessionKeys {
    SessionKeys {
        c2s: AeadKey::new(alg, &vec![0x11; alg.key_len()]).unwrap(),
        s2c: AeadKey::new(alg, &vec![0x22; alg.key_len()]).unwrap(),
    }
}

/// A cookie sealed under `ring` with a nonce of `seed` bytes.
pub fn cookie(ring: &SingleKey, keys: &SessionKeys, seed: u8) -> Vec<u8> {
    let mut out = [0u8; MAX_COOKIE_LEN];
    let n = seal_cookie(
        ring.id(),
        ring.key(),
        &[seed; COOKIE_NONCE_LEN],
        keys,
        &mut out,
    )
    .unwrap();
    out[..n].to_vec()
}

pub fn system() -> SystemInfo {
    SystemInfo {
        leap: Leap::InsertSecond,
        stratum: 2,
        precision: -23,
        root_delay: NtpShort(0x0000_0123),
        root_dispersion: NtpShort(0x0000_0456),
        reference_id: *b"GPS\0",
        reference_time: NtpTimestamp(0xe9a0_0000_0000_0000),
    }
}

pub const T1: NtpTimestamp = NtpTimestamp(0xe9a0_1234_5678_9abc);
pub const T2: NtpTimestamp = NtpTimestamp(0xe9a0_1234_8000_0000);

/// The first byte of a client header: LI 0, the given version, mode 3.
pub fn first_byte(version: u8, mode: u8) -> u8 {
    (version << 3) | mode
}

/// A 48-byte client header with the given first byte and transmit time.
pub fn header(first: u8, transmit: NtpTimestamp) -> Vec<u8> {
    let mut h = vec![0u8; 48];
    h[0] = first;
    h[40..48].copy_from_slice(&transmit.0.to_be_bytes());
    h
}

/// Appends an extension field (padded to a valid length).
pub fn push_field(pkt: &mut Vec<u8>, field_type: u16, body: &[u8]) {
    let mut buf = vec![0u8; body.len() + 20];
    let mut w = Writer::new(&mut buf);
    write_field(&mut w, field_type, body).unwrap();
    let n = w.position();
    pkt.extend_from_slice(&buf[..n]);
}

/// Appends an NTS Authenticator whose associated data is everything already
/// in `pkt`, sealing `plaintext` (encrypted extension fields) under `key`.
pub fn push_authenticator(pkt: &mut Vec<u8>, key: &AeadKey, nonce: &[u8], plaintext: &[u8]) {
    let mut ct = vec![0u8; 16];
    ct.extend_from_slice(plaintext);
    key.seal(pkt, nonce, &mut ct).unwrap();
    let pad = |n: usize| (4 - n % 4) % 4;
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(nonce.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&u16::try_from(ct.len()).unwrap().to_be_bytes());
    body.extend_from_slice(nonce);
    body.extend(std::iter::repeat_n(0, pad(nonce.len())));
    body.extend_from_slice(&ct);
    body.extend(std::iter::repeat_n(0, pad(ct.len())));
    push_field(pkt, field_type::AUTHENTICATOR, &body);
}

/// A well-formed NTS request built field by field (not by `NtsClient`), so
/// tests can vary each part.
pub fn nts_request(
    keys: &SessionKeys,
    cookie: &[u8],
    uid: &[u8],
    placeholders: usize,
    nonce: &[u8],
) -> Vec<u8> {
    let mut pkt = header(first_byte(4, 3), T1);
    push_field(&mut pkt, field_type::UNIQUE_IDENTIFIER, uid);
    push_field(&mut pkt, field_type::COOKIE, cookie);
    for _ in 0..placeholders {
        push_field(
            &mut pkt,
            field_type::COOKIE_PLACEHOLDER,
            &vec![0; cookie.len()],
        );
    }
    push_authenticator(&mut pkt, &keys.c2s, nonce, &[]);
    pkt
}
