//! The cookie codec (RFC 8915, section 6, which leaves the format to the server).
//!
//! ```text
//! cookie = key id (u32 BE) || nonce (16) || SIV tag (16) || E(c2s key || s2c key)
//! ```
//!
//! The cookie is sealed with AES-SIV-CMAC-256 under a master key, with the key
//! id as associated data. SIV resists nonce misuse, which matters because
//! master keys are reused across restarts and shared between fleet nodes that
//! cannot coordinate nonces. The AEAD of the session keys is not stored: the
//! two keys' length identifies it (32 bytes each for id 15, 64 for id 17, 16
//! for id 30), and that length is authenticated with the rest. This keeps an
//! AEAD-15 cookie at 100 bytes and an AEAD-30 cookie at 68, multiples of 4
//! below chrony's 104-byte limit, and makes every cookie of one AEAD the same
//! length whatever the master key (NTPsec refuses a reply whose cookies
//! change length). The master key's own AEAD is AES-SIV-CMAC-256 for every
//! session AEAD, so cookies issued before AEAD 30 was offered still open.

use crate::aead::{AeadAlgorithm, AeadKey, Cipher, TAG_LEN};
use crate::reader::Reader;
use zeroize::Zeroize;

pub const COOKIE_NONCE_LEN: usize = 16;
const KEY_ID_LEN: usize = 4;
const MASTER_KEY_LEN: usize = 32;
/// Longest cookie we issue (AEAD 17).
pub const MAX_COOKIE_LEN: usize = KEY_ID_LEN + COOKIE_NONCE_LEN + TAG_LEN + 2 * 64;

/// Length of every cookie issued for `algorithm`.
pub const fn cookie_len(algorithm: AeadAlgorithm) -> usize {
    KEY_ID_LEN + COOKIE_NONCE_LEN + TAG_LEN + 2 * algorithm.key_len()
}

/// A 256-bit master key that seals cookies, kept with its AES-SIV key
/// schedule expanded so that no packet pays for the expansion. `Debug` is
/// redacted.
#[derive(Clone, Debug)]
pub struct MasterKey {
    key: AeadKey,
    cipher: Cipher,
}

impl PartialEq for MasterKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for MasterKey {}

impl MasterKey {
    pub const LEN: usize = MASTER_KEY_LEN;

    pub fn from_bytes(bytes: &[u8; MASTER_KEY_LEN]) -> Self {
        // 32 bytes is exactly the AES-SIV-CMAC-256 key length, so this cannot fail.
        let Some(key) = AeadKey::new(AeadAlgorithm::AesSivCmac256, bytes) else {
            unreachable_key()
        };
        let Ok(cipher) = key.cipher() else {
            unreachable_key()
        };
        Self { key, cipher }
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.key.as_bytes()
    }
}

#[cold]
fn unreachable_key() -> ! {
    unreachable!("a 32-byte key is valid for AES-SIV-CMAC-256")
}

/// Where the server's master keys come from. Implemented by `keyrotate`.
pub trait CookieKeys {
    /// The key that seals new cookies, and its id.
    fn sealing_key(&self) -> (u32, &MasterKey);
    /// The keys that may open a cookie with this id, most likely first;
    /// empty when the id is unknown or no longer accepted. More than one key
    /// per id appears while a fleet secret is rolled or after a forced
    /// rotation.
    fn opening_keys(&self, id: u32) -> &[MasterKey];
}

/// A ring of one master key under a fixed id, which never rotates: for
/// tests, benchmarks and tools that run a [`crate::Server`] without
/// `keyrotate`.
#[derive(Clone, Debug)]
pub struct SingleKey {
    id: u32,
    key: MasterKey,
}

impl SingleKey {
    pub fn new(id: u32, key: MasterKey) -> Self {
        Self { id, key }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key, for sealing cookies by hand with [`seal_cookie`].
    pub fn key(&self) -> &MasterKey {
        &self.key
    }
}

impl CookieKeys for SingleKey {
    fn sealing_key(&self) -> (u32, &MasterKey) {
        (self.id, &self.key)
    }

    fn opening_keys(&self, id: u32) -> &[MasterKey] {
        if id == self.id {
            std::slice::from_ref(&self.key)
        } else {
            &[]
        }
    }
}

/// The session keys carried by a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    pub c2s: AeadKey,
    pub s2c: AeadKey,
}

impl SessionKeys {
    pub fn algorithm(&self) -> AeadAlgorithm {
        self.c2s.algorithm()
    }
}

/// Why a cookie could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    #[error("cookie has an impossible length")]
    BadLength,
    #[error("cookie key id is unknown or expired")]
    UnknownKey,
    #[error("cookie failed authentication")]
    BadTag,
    #[error("output buffer too small for cookie")]
    BufferTooSmall,
}

/// Seals `keys` into `out` and returns the cookie length.
pub fn seal_cookie(
    key_id: u32,
    master: &MasterKey,
    nonce: &[u8; COOKIE_NONCE_LEN],
    keys: &SessionKeys,
    out: &mut [u8],
) -> Result<usize, CookieError> {
    let len = prepare_cookie(key_id, nonce, keys, out)?;
    let cookie = out.get_mut(..len).ok_or(CookieError::BufferTooSmall)?;
    seal_prepared(master, cookie)?;
    Ok(len)
}

/// Opens a cookie, using `scratch` (at least [`MAX_COOKIE_LEN`] bytes) to
/// decrypt without allocating.
#[inline]
pub fn open_cookie(
    keys: &impl CookieKeys,
    cookie: &[u8],
    scratch: &mut [u8],
) -> Result<SessionKeys, CookieError> {
    let parsed = parse(cookie)?;
    let masters = keys.opening_keys(parsed.id);
    if masters.is_empty() {
        return Err(CookieError::UnknownKey);
    }
    let buf = scratch
        .get_mut(..parsed.sealed.len())
        .ok_or(CookieError::BufferTooSmall)?;
    let opened = masters.iter().any(|master| {
        buf.copy_from_slice(parsed.sealed);
        master
            .cipher
            .open(parsed.id_bytes, parsed.nonce, buf)
            .is_ok()
    });
    if !opened {
        return Err(CookieError::BadTag);
    }
    let keys = session_keys(parsed.alg, buf.get(TAG_LEN..).unwrap_or_default());
    // The opened session keys must not stay in the caller's buffer (the
    // tag before them is public).
    if let Some(plain) = buf.get_mut(TAG_LEN..) {
        plain.zeroize();
    }
    keys
}

/// Writes a cookie for `keys` into `out` unsealed: key id, nonce, room for
/// the tag, then the session keys in the clear, which [`seal_prepared`] then
/// seals in place. Returns the cookie length. The bytes end up those of
/// [`seal_cookie`].
#[inline]
pub fn prepare_cookie(
    key_id: u32,
    nonce: &[u8; COOKIE_NONCE_LEN],
    keys: &SessionKeys,
    out: &mut [u8],
) -> Result<usize, CookieError> {
    let alg = keys.algorithm();
    if keys.s2c.algorithm() != alg {
        return Err(CookieError::BadLength);
    }
    let len = cookie_len(alg);
    let out = out.get_mut(..len).ok_or(CookieError::BufferTooSmall)?;
    let (head, sealed) = out.split_at_mut(KEY_ID_LEN + COOKIE_NONCE_LEN);
    let (id_out, nonce_out) = head.split_at_mut(KEY_ID_LEN);
    id_out.copy_from_slice(&key_id.to_be_bytes());
    nonce_out.copy_from_slice(nonce);
    let (c2s_out, s2c_out) = sealed
        .get_mut(TAG_LEN..)
        .ok_or(CookieError::BufferTooSmall)?
        .split_at_mut(alg.key_len());
    c2s_out.copy_from_slice(keys.c2s.as_bytes());
    s2c_out.copy_from_slice(keys.s2c.as_bytes());
    Ok(len)
}

/// Seals one cookie written by [`prepare_cookie`] in place.
#[inline]
pub(crate) fn seal_prepared(master: &MasterKey, cookie: &mut [u8]) -> Result<(), CookieError> {
    let (head, sealed) = cookie
        .split_at_mut_checked(KEY_ID_LEN + COOKIE_NONCE_LEN)
        .ok_or(CookieError::BufferTooSmall)?;
    let (id, nonce) = head.split_at(KEY_ID_LEN);
    master
        .cipher
        .seal(id, nonce, sealed)
        .map_err(|_| CookieError::BufferTooSmall)
}

/// A cookie's fields, lengths checked.
struct Parsed<'c> {
    id: u32,
    id_bytes: &'c [u8],
    nonce: &'c [u8],
    /// Tag then ciphertext.
    sealed: &'c [u8],
    alg: AeadAlgorithm,
}

#[inline]
fn parse(cookie: &[u8]) -> Result<Parsed<'_>, CookieError> {
    let mut r = Reader::new(cookie);
    let id_bytes = r.take(KEY_ID_LEN).ok_or(CookieError::BadLength)?;
    let nonce = r.take(COOKIE_NONCE_LEN).ok_or(CookieError::BadLength)?;
    let sealed = r.rest();
    let key_len = sealed
        .len()
        .checked_sub(TAG_LEN)
        .map(|n| n / 2)
        .ok_or(CookieError::BadLength)?;
    let alg = AeadAlgorithm::from_key_len(key_len).ok_or(CookieError::BadLength)?;
    if cookie.len() != cookie_len(alg) {
        return Err(CookieError::BadLength);
    }
    let id: [u8; KEY_ID_LEN] = id_bytes.try_into().map_err(|_| CookieError::BadLength)?;
    Ok(Parsed {
        id: u32::from_be_bytes(id),
        id_bytes,
        nonce,
        sealed,
        alg,
    })
}

/// The two session keys of `alg` in an opened cookie's plaintext.
fn session_keys(alg: AeadAlgorithm, plain: &[u8]) -> Result<SessionKeys, CookieError> {
    let (c2s, s2c) = plain
        .split_at_checked(alg.key_len())
        .ok_or(CookieError::BadLength)?;
    let c2s = AeadKey::new(alg, c2s).ok_or(CookieError::BadLength)?;
    let s2c = AeadKey::new(alg, s2c).ok_or(CookieError::BadLength)?;
    Ok(SessionKeys { c2s, s2c })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(alg: AeadAlgorithm) -> SessionKeys {
        SessionKeys {
            c2s: AeadKey::new(alg, &vec![1; alg.key_len()]).unwrap(),
            s2c: AeadKey::new(alg, &vec![2; alg.key_len()]).unwrap(),
        }
    }

    #[test]
    fn cookie_lengths_fit_clients() {
        // chrony takes 8 cookies only if each is <= 104 bytes and a multiple of 4.
        assert_eq!(cookie_len(AeadAlgorithm::AesSivCmac256), 100);
        assert_eq!(cookie_len(AeadAlgorithm::AesSivCmac512), 164);
        assert_eq!(cookie_len(AeadAlgorithm::AesGcmSiv128), 68);
        assert_eq!(MAX_COOKIE_LEN, 164);
    }

    #[test]
    fn round_trip_and_failures() {
        let ring = SingleKey::new(7, MasterKey::from_bytes(&[9; 32]));
        for alg in AeadAlgorithm::ALL {
            let keys = session(alg);
            let mut cookie = [0u8; MAX_COOKIE_LEN];
            let n = seal_cookie(7, ring.key(), &[3; 16], &keys, &mut cookie).unwrap();
            let cookie = &cookie[..n];
            assert_eq!(&cookie[..4], &[0, 0, 0, 7]);
            let mut scratch = [0u8; MAX_COOKIE_LEN];
            assert_eq!(open_cookie(&ring, cookie, &mut scratch), Ok(keys));

            let mut bad = cookie.to_vec();
            bad[30] ^= 0x40;
            assert_eq!(
                open_cookie(&ring, &bad, &mut scratch),
                Err(CookieError::BadTag)
            );
            bad[30] ^= 0x40;
            bad[3] = 8;
            assert_eq!(
                open_cookie(&ring, &bad, &mut scratch),
                Err(CookieError::UnknownKey)
            );
            assert_eq!(
                open_cookie(&ring, &cookie[..n - 1], &mut scratch),
                Err(CookieError::BadLength)
            );
        }
        let other = SingleKey::new(7, MasterKey::from_bytes(&[8; 32]));
        let mut cookie = [0u8; 100];
        seal_cookie(
            7,
            ring.key(),
            &[3; 16],
            &session(AeadAlgorithm::AesSivCmac256),
            &mut cookie,
        )
        .unwrap();
        let mut scratch = [0u8; MAX_COOKIE_LEN];
        assert_eq!(
            open_cookie(&other, &cookie, &mut scratch),
            Err(CookieError::BadTag)
        );
    }

    /// The layout: key id, then the nonce, then the sealed keys. The full
    /// byte-for-byte vectors are in tests/exchange.rs.
    #[test]
    fn cookie_layout() {
        let master = MasterKey::from_bytes(&[0x42; 32]);
        let mut cookie = [0u8; 100];
        seal_cookie(
            0x0102_0304,
            &master,
            &[0x11; 16],
            &session(AeadAlgorithm::AesSivCmac256),
            &mut cookie,
        )
        .unwrap();
        assert_eq!(
            &cookie[..20],
            &hex::decode("01020304111111111111111111111111111111111111").unwrap()[..20]
        );
        let ring = SingleKey::new(0x0102_0304, master);
        let mut scratch = [0u8; MAX_COOKIE_LEN];
        assert!(open_cookie(&ring, &cookie, &mut scratch).is_ok());
    }
}
