//! Our AES-SIV (`nts_proto::aead`, over `proto/src/siv.rs`) against the
//! `aes-siv` crate on arbitrary keys, associated data, nonces and
//! plaintexts: the sealed bytes agree, both open each other's output, and a
//! tampered ciphertext, tag, nonce or associated data is refused by both.
#![no_main]

use aes_siv::KeyInit;
use libfuzzer_sys::fuzz_target;
use nts_proto::aead::TAG_LEN;
use nts_proto::{AeadAlgorithm, AeadKey};

/// The reference: S2V over (ad, nonce) then the plaintext, as RFC 5297
/// section 3 uses for nonce-based AEAD, through the crate's `Siv` API.
fn reference_seal(alg: AeadAlgorithm, key: &[u8], ad: &[u8], nonce: &[u8], pt: &[u8]) -> Vec<u8> {
    let headers: [&[u8]; 2] = [ad, nonce];
    let out = match alg {
        AeadAlgorithm::AesSivCmac512 => aes_siv::siv::Aes256Siv::new_from_slice(key)
            .expect("key length")
            .encrypt(headers, pt),
        _ => aes_siv::siv::Aes128Siv::new_from_slice(key)
            .expect("key length")
            .encrypt(headers, pt),
    }
    .expect("aes-siv seal");
    // aes-siv writes the tag first, as NTS does.
    assert_eq!(out.len(), TAG_LEN + pt.len());
    out
}

fn reference_open(alg: AeadAlgorithm, key: &[u8], ad: &[u8], nonce: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let headers: [&[u8]; 2] = [ad, nonce];
    match alg {
        AeadAlgorithm::AesSivCmac512 => aes_siv::siv::Aes256Siv::new_from_slice(key)
            .ok()?
            .decrypt(headers, ct)
            .ok(),
        _ => aes_siv::siv::Aes128Siv::new_from_slice(key)
            .ok()?
            .decrypt(headers, ct)
            .ok(),
    }
}

fuzz_target!(|data: &[u8]| {
    // mode | key | ad length | nonce length | flip position | rest: ad, nonce, plaintext
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The two AES-SIV algorithms; AEAD 30 is the `aes-gcm-siv` crate itself.
    let alg = [AeadAlgorithm::AesSivCmac256, AeadAlgorithm::AesSivCmac512][usize::from(mode & 1)];
    let n = alg.key_len();
    if rest.len() < n + 3 {
        return;
    }
    let (key_bytes, rest) = rest.split_at(n);
    let (lens, rest) = rest.split_at(3);
    let ad_len = usize::from(lens[0]).min(rest.len());
    let (ad, rest) = rest.split_at(ad_len);
    let nonce_len = usize::from(lens[1]).min(rest.len());
    let (nonce, pt) = rest.split_at(nonce_len);
    let key = AeadKey::new(alg, key_bytes).expect("key length");

    let mut ours = vec![0u8; TAG_LEN + pt.len()];
    ours[TAG_LEN..].copy_from_slice(pt);
    key.seal(ad, nonce, &mut ours).expect("seal");
    let theirs = reference_seal(alg, key_bytes, ad, nonce, pt);
    assert_eq!(ours, theirs, "sealed output differs");
    // Expanded once and kept (the cipher path), the same bytes.
    let mut kept = vec![0u8; TAG_LEN + pt.len()];
    kept[TAG_LEN..].copy_from_slice(pt);
    key.cipher().expect("cipher").seal(ad, nonce, &mut kept).expect("seal");
    assert_eq!(kept, theirs);

    let mut buf = theirs.clone();
    assert_eq!(key.open(ad, nonce, &mut buf).ok().map(|p| p.to_vec()), Some(pt.to_vec()));
    assert_eq!(reference_open(alg, key_bytes, ad, nonce, &ours), Some(pt.to_vec()));

    // One flipped bit anywhere in (tag, ciphertext, nonce, ad): refused by both.
    let total = theirs.len() + nonce.len() + ad.len();
    let at = usize::from(lens[2]) * 31 % total.max(1);
    let bit = 1u8 << (mode >> 5);
    let (mut ct, mut nonce2, mut ad2) = (theirs.clone(), nonce.to_vec(), ad.to_vec());
    if at < ct.len() {
        ct[at] ^= bit;
    } else if at < ct.len() + nonce2.len() {
        nonce2[at - ct.len()] ^= bit;
    } else if !ad2.is_empty() {
        let i = at - ct.len() - nonce2.len();
        ad2[i] ^= bit;
    } else {
        return;
    }
    let mut buf = ct.clone();
    assert!(key.open(&ad2, &nonce2, &mut buf).is_err(), "tampered input opened");
    assert!(reference_open(alg, key_bytes, &ad2, &nonce2, &ct).is_none());
});
