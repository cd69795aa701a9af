//! AES-SIV (RFC 5297) over the `aes` block cipher, with everything that
//! depends only on the key computed once.
//!
//! ```text
//! key = MAC key || CTR key              (two AES-128 or two AES-256 keys)
//! once per key:   K1, K2  CMAC subkeys  (RFC 4493, 2.3)
//!                 D0 = CMAC(0^128)      (the first step of every S2V)
//! per message:    V = S2V(headers, P)   (RFC 5297, 2.4)
//!                 C = P xor AES-CTR(V with bits 31 and 63 cleared)
//! ```
//!
//! Why not the `aes-siv` crate: it expands both AES key schedules (and the
//! decryption schedule it never uses) on every call through its AEAD API,
//! needs `&mut` to reuse a key, and recomputes CMAC(0^128) per message. A
//! cookie master key sealed and opened hundreds of thousands of times a
//! second is worth expanding once. Tests check this module against the RFC
//! 5297 vectors and against `aes-siv` on random inputs.
//!
//! What is wiped: key schedules (the `zeroize` feature of `aes`), the CMAC
//! constants of a key and the key halves of a kept key ([`Siv::new`]), when
//! they are dropped. What is not: the intermediate blocks of one message
//! (CMAC chains, CTR keystream) and the key halves copied by [`with_key`]
//! and [`verify_empty`].
//! They live in the worker's stack frame, which the next packet overwrites,
//! next to the session keys themselves ([`crate::SessionKeys`]), which are
//! not wiped either; wiping them byte by byte with volatile stores cost
//! 1,815 of 12,021 instructions per NTS reply (callgrind).

use aes::cipher::consts::U16;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, Key, KeyInit};
use zeroize::Zeroize;

pub(crate) const BLOCK: usize = 16;
type Block = [u8; BLOCK];
/// CTR keystream is made this many blocks at a time, so the AES rounds of
/// independent blocks overlap in the pipeline.
const CTR_PAR: usize = 8;

/// An AES-SIV key with its schedules and constants expanded, owned (a
/// cookie master key keeps one for its lifetime).
#[derive(Clone)]
pub(crate) struct Siv<C> {
    mac: C,
    ctr: C,
    consts: Consts,
}

/// The constants of a MAC key: its CMAC subkeys and CMAC(0^128).
#[derive(Clone)]
struct Consts {
    k1: Block,
    k2: Block,
    d0: Block,
}

impl Drop for Consts {
    fn drop(&mut self) {
        // The AES schedules zeroize themselves (the `zeroize` feature of `aes`).
        self.k1.zeroize();
        self.k2.zeroize();
        self.d0.zeroize();
    }
}

/// An expanded AES-SIV key by reference: what sealing and opening work on.
/// A schedule of the `aes` crate is a union sized for its software
/// fallback (704 bytes for AES-128, 960 for AES-256), so a key expanded for
/// one packet is lent, never moved: see [`with_key`].
pub(crate) struct SivRef<'a, C> {
    mac: &'a C,
    ctr: &'a C,
    consts: &'a Consts,
}

impl<C> Clone for SivRef<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for SivRef<'_, C> {}

fn encrypt<C: BlockEncrypt<BlockSize = U16>>(cipher: &C, block: &mut Block) {
    let mut b = GenericArray::from(*block);
    cipher.encrypt_block(&mut b);
    *block = b.into();
}

/// `dst ^= src` as one 128-bit operation (a byte loop is not vectorised
/// everywhere it is inlined).
fn xor(dst: &mut Block, src: &Block) {
    *dst = (u128::from_ne_bytes(*dst) ^ u128::from_ne_bytes(*src)).to_ne_bytes();
}

/// `dst ^= src` over the shorter of the two: one 128-bit operation when
/// both are a whole block, else byte by byte.
fn xor_slice(dst: &mut [u8], src: &[u8]) {
    if let (Ok(d), Ok(s)) = (<&mut Block>::try_from(&mut *dst), <&Block>::try_from(src)) {
        xor(d, s);
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

/// Doubling in GF(2^128) (RFC 5297, section 2.3).
fn dbl(block: &Block) -> Block {
    let v = u128::from_be_bytes(*block);
    let carry = (v >> 127) as u8;
    let mut out = (v << 1).to_be_bytes();
    if let Some(last) = out.last_mut() {
        *last ^= 0x87 & 0u8.wrapping_sub(carry);
    }
    out
}

/// `block` zero-padded after `data` with the 10* rule; `data` is shorter than a block.
fn pad(data: &[u8]) -> Block {
    let mut b = [0u8; BLOCK];
    for (d, s) in b.iter_mut().zip(data) {
        *d = *s;
    }
    if let Some(p) = b.get_mut(data.len()) {
        *p = 0x80;
    }
    b
}

/// Streaming CMAC (RFC 4493) over a cipher backend. The last block is held
/// back until `finish`, since only then is it known to be the last.
struct Cmac {
    x: Block,
    buf: Block,
    len: usize,
}

impl Cmac {
    #[inline(always)]
    fn absorb<B: BlockBackend<BlockSize = U16>>(&mut self, aes: &mut B, block: &Block) {
        xor(&mut self.x, block);
        let mut b = GenericArray::from(self.x);
        aes.proc_block((&mut b).into());
        self.x = b.into();
    }

    #[inline(always)]
    fn update<B: BlockBackend<BlockSize = U16>>(&mut self, aes: &mut B, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // Top up a partial buffer first.
        if self.len < BLOCK {
            let take = (BLOCK - self.len).min(data.len());
            let (head, rest) = data.split_at(take);
            for (d, s) in self.buf.iter_mut().skip(self.len).zip(head) {
                *d = *s;
            }
            self.len += take;
            data = rest;
            if data.is_empty() {
                return;
            }
        }
        // The buffer is full and more follows, so it was not the last block.
        let full = self.buf;
        self.absorb(aes, &full);
        // Whole blocks straight from the input, keeping the last one back.
        let keep = match data.len() % BLOCK {
            0 => BLOCK,
            n => n,
        };
        let (blocks, tail) = data.split_at(data.len() - keep);
        for chunk in blocks.chunks_exact(BLOCK) {
            let mut b = [0u8; BLOCK];
            b.copy_from_slice(chunk);
            self.absorb(aes, &b);
        }
        self.buf = [0; BLOCK];
        for (d, s) in self.buf.iter_mut().zip(tail) {
            *d = *s;
        }
        self.len = tail.len();
    }

    #[inline(always)]
    fn finish<B: BlockBackend<BlockSize = U16>>(
        mut self,
        aes: &mut B,
        k1: &Block,
        k2: &Block,
    ) -> Block {
        let last = if self.len == BLOCK {
            let mut b = self.buf;
            xor(&mut b, k1);
            b
        } else {
            let mut b = pad(self.buf.get(..self.len).unwrap_or_default());
            xor(&mut b, k2);
            b
        };
        self.absorb(aes, &last);
        self.x
    }
}

/// Independent CMAC chains computed side by side: one block of each per
/// step, so that the AES rounds of one chain fill the pipeline while
/// another waits on its previous block. S2V has up to three such chains in
/// an NTS packet: the associated data, the nonce, and the part of the
/// message before its last 16 bytes (the only part that depends on the
/// others).
const LANES: usize = 4;

/// Splits a CMAC input into the whole blocks absorbed as they are and the
/// last block (1 to 16 bytes; empty only for an empty input).
fn split_last(s: &[u8]) -> (&[u8], &[u8]) {
    s.split_at(s.len().saturating_sub(1) / BLOCK * BLOCK)
}

/// The final CMAC block of `last` (RFC 4493, 2.4: K1 if whole, else padded and K2).
fn final_block(last: &[u8], k1: &Block, k2: &Block) -> Block {
    if last.len() == BLOCK {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(last);
        xor(&mut b, k1);
        b
    } else {
        let mut b = pad(last);
        xor(&mut b, k2);
        b
    }
}

#[inline(always)]
fn absorb_block<B: BlockBackend<BlockSize = U16>>(aes: &mut B, x: &mut Block, block: &[u8]) {
    xor_slice(x, block);
    let mut g = GenericArray::from(*x);
    aes.proc_block((&mut g).into());
    *x = g.into();
}

/// Absorbs the whole blocks of `bodies[i]` into `x[i]`, interleaved.
#[inline(always)]
fn absorb_lanes<B: BlockBackend<BlockSize = U16>>(
    aes: &mut B,
    x: &mut [Block; LANES],
    bodies: &[&[u8]; LANES],
) {
    let steps = bodies.iter().map(|b| b.len() / BLOCK).max().unwrap_or(0);
    for step in 0..steps {
        let range = step * BLOCK..(step + 1) * BLOCK;
        for (x, body) in x.iter_mut().zip(bodies) {
            if let Some(block) = body.get(range.clone()) {
                absorb_block(aes, x, block);
            }
        }
    }
}

/// S2V (RFC 5297, section 2.4) as one pass over the cipher backend, so the
/// CPU-feature dispatch of `aes` happens once per message, not per block.
struct S2v<'a> {
    k1: &'a Block,
    k2: &'a Block,
    d0: &'a Block,
    headers: &'a [&'a [u8]],
    message: &'a [u8],
    out: &'a mut Block,
}

impl BlockSizeUser for S2v<'_> {
    type BlockSize = U16;
}

impl BlockClosure for S2v<'_> {
    // This closure and every helper that takes the backend are inlined into
    // the `aes` crate's dispatch function, which is compiled with AES-NI
    // enabled. Only there can the backend's block function (itself an
    // AES-NI `target_feature` function) be inlined; compiled on their own,
    // they call it out of line for every block, a cost criterion's
    // `handle/nts_aead15` shows (bench/RESULTS.md, "Before and after the
    // hot-path work").
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(self, aes: &mut B) {
        let msg = self.message;
        // Whole blocks of the message before its last 16 bytes: T = M xorend D
        // changes only those last 16, so these need not wait for D.
        let (msg_head, msg_tail) = msg.split_at(msg.len().saturating_sub(BLOCK) / BLOCK * BLOCK);
        let mut msg_x = [0u8; BLOCK];
        let mut d = *self.d0;
        let mut rest = self.headers;
        let mut first = true;
        while first || !rest.is_empty() {
            let (group, more) = rest.split_at(rest.len().min(LANES - 1));
            let mut x = [[0u8; BLOCK]; LANES];
            let mut bodies: [&[u8]; LANES] = [&[]; LANES];
            let mut lasts: [&[u8]; LANES] = [&[]; LANES];
            for ((body, last), h) in bodies.iter_mut().zip(lasts.iter_mut()).zip(group) {
                (*body, *last) = split_last(h);
            }
            if first {
                if let Some(b) = bodies.last_mut() {
                    *b = msg_head;
                }
            }
            absorb_lanes(aes, &mut x, &bodies);
            if first {
                msg_x = *x.last().unwrap_or(&msg_x);
            }
            for (x, last) in x.iter_mut().zip(&lasts).take(group.len()) {
                let fin = final_block(last, self.k1, self.k2);
                absorb_block(aes, x, &fin);
            }
            for x in x.iter().take(group.len()) {
                d = dbl(&d);
                xor(&mut d, x);
            }
            first = false;
            rest = more;
        }
        *self.out = if msg.len() >= BLOCK {
            let mut t = [0u8; 2 * BLOCK];
            let t = t.get_mut(..msg_tail.len()).unwrap_or_default();
            t.copy_from_slice(msg_tail);
            let from = t.len() - BLOCK;
            for (a, b) in t.iter_mut().skip(from).zip(&d) {
                *a ^= b;
            }
            let mut m = Cmac {
                x: msg_x,
                buf: [0; BLOCK],
                len: 0,
            };
            m.update(aes, t);
            m.finish(aes, self.k1, self.k2)
        } else {
            // A short message is padded into one block: CMAC(T) = E(T xor K1).
            let mut t = dbl(&d);
            xor(&mut t, &pad(msg));
            let mut v = [0u8; BLOCK];
            let fin = final_block(&t, self.k1, self.k2);
            absorb_block(aes, &mut v, &fin);
            v
        };
    }
}

/// AES-CTR as one pass over the cipher backend, inlined like [`S2v`]:
/// `data ^= keystream` from counter `iv` with bits 31 and 63 cleared (RFC
/// 5297, 2.5). Blocks are encrypted `CTR_PAR` at a time, so the rounds of
/// independent counters overlap.
struct Ctr<'a> {
    iv: &'a Block,
    data: &'a mut [u8],
}

impl BlockSizeUser for Ctr<'_> {
    type BlockSize = U16;
}

impl BlockClosure for Ctr<'_> {
    #[inline(always)]
    fn call<B: BlockBackend<BlockSize = U16>>(self, aes: &mut B) {
        let mut q = *self.iv;
        if let Some(b) = q.get_mut(8) {
            *b &= 0x7f;
        }
        if let Some(b) = q.get_mut(12) {
            *b &= 0x7f;
        }
        let mut counter = u128::from_be_bytes(q);
        for chunk in self.data.chunks_mut(BLOCK * CTR_PAR) {
            let mut ks = [GenericArray::from([0u8; BLOCK]); CTR_PAR];
            let n = chunk.len().div_ceil(BLOCK);
            for k in ks.iter_mut().take(n) {
                *k = GenericArray::from(counter.to_be_bytes());
                counter = counter.wrapping_add(1);
            }
            for k in ks.iter_mut().take(n) {
                aes.proc_block(k.into());
            }
            for (c, k) in chunk.chunks_mut(BLOCK).zip(ks.iter()) {
                xor_slice(c, k);
            }
        }
    }
}

/// The two halves of an AES-SIV key as the cipher's key type; `None` unless
/// `key` is exactly twice the cipher's key length.
fn split_key<C: KeyInit>(key: &[u8]) -> Option<(Key<C>, Key<C>)> {
    if key.len() % 2 != 0 {
        return None;
    }
    let (mac, ctr) = key.split_at(key.len() / 2);
    let mac = Key::<C>::from_exact_iter(mac.iter().copied())?;
    let ctr = Key::<C>::from_exact_iter(ctr.iter().copied())?;
    Some((mac, ctr))
}

impl Consts {
    fn new<C: BlockEncrypt<BlockSize = U16>>(mac: &C) -> Self {
        let mut l = [0u8; BLOCK];
        encrypt(mac, &mut l);
        let k1 = dbl(&l);
        let k2 = dbl(&k1);
        l.zeroize();
        // CMAC of one whole zero block: E(0 xor K1).
        let mut d0 = k1;
        encrypt(mac, &mut d0);
        Self { k1, k2, d0 }
    }
}

/// Expands `key` (twice the AES key length) in this stack frame and lends it
/// to `f`; `None` for any other length. Borrowed, the schedules are not
/// moved after they are built (the `aes` constructor itself copies each
/// once), which matters for the two session keys that every NTS reply
/// expands.
pub(crate) fn with_key<C, R>(key: &[u8], f: impl FnOnce(SivRef<'_, C>) -> R) -> Option<R>
where
    C: BlockEncrypt<BlockSize = U16> + KeyInit,
{
    let (mac_key, ctr_key) = split_key::<C>(key)?;
    let mac = C::new(&mac_key);
    let ctr = C::new(&ctr_key);
    let consts = Consts::new(&mac);
    Some(f(SivRef {
        mac: &mac,
        ctr: &ctr,
        consts: &consts,
    }))
}

impl<C: BlockEncrypt<BlockSize = U16> + KeyInit> Siv<C> {
    /// Expands a key of twice the AES key length; `None` for any other length.
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        let (mut mac_key, mut ctr_key) = split_key::<C>(key)?;
        let mac = C::new(&mac_key);
        let ctr = C::new(&ctr_key);
        mac_key.zeroize();
        ctr_key.zeroize();
        let consts = Consts::new(&mac);
        Some(Self { mac, ctr, consts })
    }

    pub(crate) fn as_ref(&self) -> SivRef<'_, C> {
        SivRef {
            mac: &self.mac,
            ctr: &self.ctr,
            consts: &self.consts,
        }
    }
}

fn s2v<C: BlockEncrypt<BlockSize = U16>>(
    mac: &C,
    consts: &Consts,
    headers: &[&[u8]],
    message: &[u8],
) -> Block {
    let mut out = [0u8; BLOCK];
    mac.encrypt_with_backend(S2v {
        k1: &consts.k1,
        k2: &consts.k2,
        d0: &consts.d0,
        headers,
        message,
        out: &mut out,
    });
    out
}

/// Compares two tags in constant time: no early exit on the first difference.
fn tags_equal(a: &Block, b: &Block) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks `tag` against `headers` and an empty message, with only the MAC
/// half of `key` expanded: the CTR half would encrypt nothing (an NTS
/// request's authenticator usually encrypts nothing). `None` unless `key`
/// is twice the cipher's key length.
pub(crate) fn verify_empty<C>(key: &[u8], headers: &[&[u8]], tag: &Block) -> Option<bool>
where
    C: BlockEncrypt<BlockSize = U16> + KeyInit,
{
    let (mac_key, _) = split_key::<C>(key)?;
    let mac = C::new(&mac_key);
    let consts = Consts::new(&mac);
    Some(tags_equal(&s2v(&mac, &consts, headers, &[]), tag))
}

impl<C: BlockEncrypt<BlockSize = U16>> SivRef<'_, C> {
    fn s2v(&self, headers: &[&[u8]], message: &[u8]) -> Block {
        s2v(self.mac, self.consts, headers, message)
    }

    /// XORs `data` with the AES-CTR keystream that starts at `iv`.
    fn ctr(&self, iv: &Block, data: &mut [u8]) {
        self.ctr.encrypt_with_backend(Ctr { iv, data });
    }

    /// Encrypts `text` in place and returns the SIV tag.
    pub(crate) fn seal(&self, headers: &[&[u8]], text: &mut [u8]) -> Block {
        let v = self.s2v(headers, text);
        self.ctr(&v, text);
        v
    }

    /// Decrypts `text` in place if `tag` authenticates it with `headers`;
    /// on failure `text` is left as it was.
    pub(crate) fn open(&self, headers: &[&[u8]], text: &mut [u8], tag: &Block) -> bool {
        self.ctr(tag, text);
        if tags_equal(&self.s2v(headers, text), tag) {
            return true;
        }
        self.ctr(tag, text);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::{Aes128Enc, Aes256Enc};
    use aes_siv::siv::{Aes128Siv, Aes256Siv};
    use proptest::prelude::*;

    struct CmacJob<'a> {
        siv: &'a Siv<Aes128Enc>,
        pieces: usize,
        data: &'a [u8],
        out: &'a mut Block,
    }

    impl BlockSizeUser for CmacJob<'_> {
        type BlockSize = U16;
    }

    impl BlockClosure for CmacJob<'_> {
        fn call<B: BlockBackend<BlockSize = U16>>(self, aes: &mut B) {
            let mut m = Cmac {
                x: [0; BLOCK],
                buf: [0; BLOCK],
                len: 0,
            };
            for piece in self.data.chunks(self.pieces) {
                m.update(aes, piece);
            }
            *self.out = m.finish(aes, &self.siv.consts.k1, &self.siv.consts.k2);
        }
    }

    fn cmac(siv: &Siv<Aes128Enc>, data: &[u8], pieces: usize) -> Block {
        let mut out = [0u8; BLOCK];
        siv.mac.encrypt_with_backend(CmacJob {
            siv,
            pieces,
            data,
            out: &mut out,
        });
        out
    }

    /// RFC 4493, section 4: the subkeys and CMAC of the four example lengths.
    #[test]
    fn rfc4493_cmac() {
        let mut key = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        key.extend_from_slice(&[0; 16]);
        let siv = Siv::<Aes128Enc>::new(&key).unwrap();
        assert_eq!(
            hex::encode(siv.consts.k1),
            "fbeed618357133667c85e08f7236a8de"
        );
        assert_eq!(
            hex::encode(siv.consts.k2),
            "f7ddac306ae266ccf90bc11ee46d513b"
        );
        assert_eq!(siv.consts.d0, cmac(&siv, &[0; 16], 16));
        let msg = hex::decode(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        )
        .unwrap();
        for (len, mac) in [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ] {
            assert_eq!(
                hex::encode(cmac(&siv, &msg[..len], 64)),
                mac,
                "length {len}"
            );
            // Fed in uneven pieces, the streaming CMAC gives the same.
            for pieces in [1, 7, 16, 17] {
                let got = hex::encode(cmac(&siv, &msg[..len], pieces));
                assert_eq!(got, mac, "length {len} in pieces of {pieces}");
            }
        }
    }

    fn reference_seal(key: &[u8], headers: &[&[u8]], text: &[u8]) -> Vec<u8> {
        let mut buf = text.to_vec();
        let tag = if key.len() == 32 {
            Aes128Siv::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(headers, &mut buf)
        } else {
            Aes256Siv::new_from_slice(key)
                .unwrap()
                .encrypt_in_place_detached(headers, &mut buf)
        }
        .unwrap();
        let mut out = tag.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    fn check_empty(key: &[u8], headers: &[&[u8]], tag: &Block) -> Option<bool> {
        if key.len() == 32 {
            verify_empty::<Aes128Enc>(key, headers, tag)
        } else {
            verify_empty::<Aes256Enc>(key, headers, tag)
        }
    }

    /// Only the MAC half of the key, for an empty message: the same tags as
    /// the `aes-siv` crate, and any change to tag, data or key refused.
    #[test]
    fn verify_empty_matches_aes_siv_crate() {
        let ad: Vec<u8> = (0..188).map(|i| i as u8).collect();
        let nonce = [0x42u8; 16];
        for len in [32, 64] {
            let key: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let headers: [&[u8]; 2] = [&ad, &nonce];
            let sealed = reference_seal(&key, &headers, &[]);
            let tag: Block = sealed.as_slice().try_into().unwrap();
            assert_eq!(check_empty(&key, &headers, &tag), Some(true));
            for i in 0..BLOCK {
                let mut bad = tag;
                bad[i] ^= 0x80;
                assert_eq!(check_empty(&key, &headers, &bad), Some(false));
            }
            let other_nonce = [0x43u8; 16];
            assert_eq!(check_empty(&key, &[&ad, &other_nonce], &tag), Some(false));
            assert_eq!(check_empty(&key, &[&ad[1..], &nonce], &tag), Some(false));
            let mut other_key = key.clone();
            other_key[0] ^= 1;
            assert_eq!(check_empty(&other_key, &headers, &tag), Some(false));
            // The CTR half does not enter the tag of an empty message.
            let mut ctr_changed = key.clone();
            ctr_changed[len - 1] ^= 1;
            assert_eq!(check_empty(&ctr_changed, &headers, &tag), Some(true));
        }
        assert_eq!(verify_empty::<Aes128Enc>(&[0; 31], &[], &[0; BLOCK]), None);
    }

    fn seal(key: &[u8], headers: &[&[u8]], text: &[u8]) -> Vec<u8> {
        let mut buf = text.to_vec();
        let tag = if key.len() == 32 {
            Siv::<Aes128Enc>::new(key)
                .unwrap()
                .as_ref()
                .seal(headers, &mut buf)
        } else {
            Siv::<Aes256Enc>::new(key)
                .unwrap()
                .as_ref()
                .seal(headers, &mut buf)
        };
        let mut out = tag.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    proptest! {
        /// Same output as the `aes-siv` crate for every length around the
        /// block boundaries and the CTR batch size, and the round trip holds.
        #[test]
        fn matches_aes_siv_crate(
            wide in any::<bool>(),
            key in proptest::collection::vec(any::<u8>(), 64),
            ad in proptest::collection::vec(any::<u8>(), 0..300),
            nonce in proptest::collection::vec(any::<u8>(), 0..40),
            text in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let key = if wide { &key[..] } else { &key[..32] };
            let ours = seal(key, &[&ad, &nonce], &text);
            prop_assert_eq!(&ours, &reference_seal(key, &[&ad, &nonce], &text));
            let mut tag = [0u8; BLOCK];
            tag.copy_from_slice(&ours[..BLOCK]);
            let mut buf = ours[BLOCK..].to_vec();
            let opened = if wide {
                Siv::<Aes256Enc>::new(key).unwrap().as_ref().open(&[&ad, &nonce], &mut buf, &tag)
            } else {
                Siv::<Aes128Enc>::new(key).unwrap().as_ref().open(&[&ad, &nonce], &mut buf, &tag)
            };
            prop_assert!(opened);
            prop_assert_eq!(&buf, &text);
        }
    }

    /// More headers than lanes: computed in groups, combined in order.
    #[test]
    fn many_headers_match_aes_siv_crate() {
        let key = [0x3c_u8; 32];
        let parts: Vec<Vec<u8>> = (0..9).map(|i| vec![i as u8; i * 7]).collect();
        for n in 0..parts.len() {
            let headers: Vec<&[u8]> = parts[..n].iter().map(|p| &p[..]).collect();
            for len in [0, 15, 16, 17, 33, 200] {
                let text = vec![0xa5; len];
                assert_eq!(
                    seal(&key, &headers, &text),
                    reference_seal(&key, &headers, &text),
                    "{n} headers, {len} bytes"
                );
            }
        }
    }

    #[test]
    fn failed_open_leaves_ciphertext_unchanged() {
        let owned = Siv::<Aes128Enc>::new(&[5; 32]).unwrap();
        let siv = owned.as_ref();
        let mut buf = [9u8; 100];
        let tag = siv.seal(&[b"ad"], &mut buf);
        let sealed = buf;
        let mut bad = tag;
        bad[0] ^= 1;
        assert!(!siv.open(&[b"ad"], &mut buf, &bad));
        assert_eq!(buf, sealed);
        assert!(!siv.open(&[b"AD"], &mut buf, &tag));
        assert_eq!(buf, sealed);
        assert!(siv.open(&[b"ad"], &mut buf, &tag));
        assert_eq!(buf, [9u8; 100]);
    }

    #[test]
    fn a_lent_key_seals_as_an_owned_one() {
        for key in [&[3u8; 32][..], &[4u8; 64][..]] {
            let text = [7u8; 40];
            let lent = if key.len() == 32 {
                with_key::<Aes128Enc, _>(key, |s| {
                    let mut b = text;
                    (s.seal(&[b"ad", b"nonce"], &mut b), b)
                })
            } else {
                with_key::<Aes256Enc, _>(key, |s| {
                    let mut b = text;
                    (s.seal(&[b"ad", b"nonce"], &mut b), b)
                })
            };
            let (tag, sealed) = lent.expect("key length");
            let mut both = tag.to_vec();
            both.extend_from_slice(&sealed);
            assert_eq!(both, seal(key, &[b"ad", b"nonce"], &text));
        }
        assert!(with_key::<Aes128Enc, _>(&[0; 31], |_| ()).is_none());
        assert!(with_key::<Aes128Enc, _>(&[0; 64], |_| ()).is_none());
        assert!(with_key::<Aes256Enc, _>(&[0; 32], |_| ()).is_none());
    }

    #[test]
    fn odd_and_wrong_key_lengths_are_refused() {
        assert!(Siv::<Aes128Enc>::new(&[0; 31]).is_none());
        assert!(Siv::<Aes128Enc>::new(&[0; 64]).is_none());
        assert!(Siv::<Aes256Enc>::new(&[0; 32]).is_none());
    }
}
