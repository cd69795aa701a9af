//! Fixed keys and deterministic randomness shared by the fuzz targets, so
//! every crash reproduces from its input alone.

use nts_proto::client::{NtsClient, Pending};
use nts_proto::cookie::{seal_cookie, MAX_COOKIE_LEN};
use nts_proto::{
    AeadAlgorithm, AeadKey, Leap, MasterKey, NtpShort, NtpTimestamp, Random, SessionKeys,
    SingleKey, SystemInfo,
};

pub const KEY_ID: u32 = 0x0102_0304;
pub const T1: NtpTimestamp = NtpTimestamp(0xe9a0_1234_5678_9abc);
pub const T2: NtpTimestamp = NtpTimestamp(0xe9a0_1234_8000_0000);

/// One master key under [`KEY_ID`].
pub fn one_key() -> SingleKey {
    SingleKey::new(KEY_ID, MasterKey::from_bytes(&[0x42; 32]))
}

/// Deterministic "randomness": a byte counter.
#[derive(Debug, Default)]
pub struct Counter(pub u8);

impl Random for Counter {
    fn fill(&mut self, dest: &mut [u8]) {
        for b in dest {
            *b = self.0;
            self.0 = self.0.wrapping_add(1);
        }
    }
}

pub fn system() -> SystemInfo {
    SystemInfo {
        leap: Leap::NoWarning,
        stratum: 2,
        precision: -23,
        root_delay: NtpShort(0x123),
        root_dispersion: NtpShort(0x456),
        reference_id: *b"GPS\0",
        reference_time: NtpTimestamp(0xe9a0_0000_0000_0000),
    }
}

pub fn session(alg: AeadAlgorithm) -> SessionKeys {
    let n = alg.key_len();
    let key = |b: u8| match AeadKey::new(alg, &[b; 64][..n]) {
        Some(k) => k,
        None => unreachable!("key length matches the algorithm"),
    };
    SessionKeys {
        c2s: key(0x11),
        s2c: key(0x22),
    }
}

/// A cookie for `session(alg)` sealed under [`one_key`].
pub fn cookie(ring: &SingleKey, alg: AeadAlgorithm, seed: u8) -> Vec<u8> {
    let mut out = [0u8; MAX_COOKIE_LEN];
    match seal_cookie(ring.id(), ring.key(), &[seed; 16], &session(alg), &mut out) {
        Ok(n) => out.get(..n).unwrap_or_default().to_vec(),
        Err(e) => unreachable!("sealing a cookie failed: {e}"),
    }
}

/// A valid NTS request from the real client, with the client and its
/// pending state so the reply can be verified.
pub fn valid_request(
    alg: AeadAlgorithm,
    placeholders: usize,
    seed: u8,
) -> (Vec<u8>, NtsClient, Pending) {
    let ring = one_key();
    let mut client = NtsClient::new(session(alg), vec![cookie(&ring, alg, seed)]);
    let mut out = [0u8; 2048];
    match client.build_request(T1, &[seed; 48], placeholders + 1, &mut out) {
        Ok((len, pending)) => (out.get(..len).unwrap_or_default().to_vec(), client, pending),
        Err(e) => unreachable!("building a request failed: {e}"),
    }
}

/// Applies 4-byte edit commands (op, position high, position low, value) to
/// `pkt`: xor, overwrite, truncate, insert.
pub fn mutate(pkt: &mut Vec<u8>, commands: &[u8]) {
    for c in commands.chunks_exact(4) {
        let [op, hi, lo, val] = [c[0], c[1], c[2], c[3]];
        let pos = usize::from(u16::from_be_bytes([hi, lo]));
        match op % 4 {
            0 if !pkt.is_empty() => {
                let i = pos % pkt.len();
                pkt[i] ^= val.max(1);
            }
            1 if !pkt.is_empty() => {
                let i = pos % pkt.len();
                pkt[i] = val;
            }
            2 => pkt.truncate(pos % (pkt.len() + 1)),
            3 if pkt.len() < 1500 => {
                let i = pos % (pkt.len() + 1);
                pkt.insert(i, val);
            }
            _ => {}
        }
    }
}
