//! One NTS client identity for the generator: the session keys from NTS-KE
//! and a fixed-capacity cookie pool.
//!
//! It builds and verifies requests with the functions `NtsClient` uses
//! (`nts_proto::client::write_request`, `open_reply`, `new_cookies`), so the
//! bytes, checks and errors are the same (the tests below compare the two),
//! but keeps its cookies without a heap allocation per request:
//! cookies live in one buffer allocated with the session, the reply is
//! decrypted in a buffer of the session, and both keys are expanded once.

use nts_proto::aead::{Cipher, TAG_LEN};
use nts_proto::client::{self, ClientError, NONCE_LEN, UNIQUE_ID_LEN};
use nts_proto::ef::{field_len, Authenticator};
use nts_proto::packet::{NtpHeader, HEADER_LEN};
use nts_proto::{NtpTimestamp, SessionKeys};

use crate::sys::DATAGRAM_MAX;

/// Cookies a request asks to hold after its reply (RFC 8915, section 5.7),
/// as `NtsClient` is used by the generator.
pub const POOL_TARGET: usize = 8;
/// Cookies kept per session; further new cookies are dropped. Requests
/// ask for placeholders only below [`POOL_TARGET`], so the pool exceeds it
/// only by requests that were in flight together.
pub const POOL_CAPACITY: usize = 64;
/// Longest cookie accepted from NTS-KE (ntsd's are 100 or 164 bytes).
pub const COOKIE_MAX: usize = 400;

/// The longest request a session with `cookie_len`-byte cookies builds.
pub const fn max_request_len(cookie_len: usize) -> usize {
    HEADER_LEN
        + field_len(UNIQUE_ID_LEN)
        + POOL_TARGET * field_len(cookie_len)
        + 4
        + Authenticator::body_len(NONCE_LEN, TAG_LEN)
}

/// Why NTS-KE output cannot make a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("NTS-KE gave no cookies")]
    NoCookies,
    #[error("cookie of {0} bytes (at most {COOKIE_MAX} supported)")]
    CookieTooLong(usize),
    #[error("cannot expand a session key")]
    Key,
}

/// Cookies in one buffer: `POOL_CAPACITY` slots of `cookie_len` bytes, a
/// ring from `head`.
struct Pool {
    cookie_len: usize,
    buf: Box<[u8]>,
    lens: [u16; POOL_CAPACITY],
    head: usize,
    count: usize,
}

impl Pool {
    /// Stores a cookie (cut to `cookie_len`, as `NtsClient` does); dropped
    /// when the pool is full.
    fn push(&mut self, cookie: &[u8]) {
        if self.count == POOL_CAPACITY {
            return;
        }
        let slot = (self.head + self.count) % POOL_CAPACITY;
        let len = cookie.len().min(self.cookie_len);
        let start = slot * self.cookie_len;
        if let (Some(dst), Some(src), Some(l)) = (
            self.buf.get_mut(start..start + len),
            cookie.get(..len),
            self.lens.get_mut(slot),
        ) {
            dst.copy_from_slice(src);
            *l = len as u16;
            self.count += 1;
        }
    }

    /// Removes the oldest cookie and returns it (valid until the next push).
    fn pop(&mut self) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        let slot = self.head;
        self.head = (self.head + 1) % POOL_CAPACITY;
        self.count -= 1;
        let len = usize::from(*self.lens.get(slot)?);
        let start = slot * self.cookie_len;
        self.buf.get(start..start + len)
    }
}

pub struct Session {
    algorithm: nts_proto::AeadAlgorithm,
    /// The keys, expanded once.
    c2s: Cipher,
    s2c: Cipher,
    pool: Pool,
    /// Where a reply's encrypted fields are opened.
    scratch: Box<[u8]>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("algorithm", &self.algorithm)
            .field("cookie_len", &self.pool.cookie_len)
            .field("cookies", &self.pool.count)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session from NTS-KE's keys and cookies (the first cookie's length
    /// is the session's cookie length, as in `NtsClient`).
    pub fn new(keys: SessionKeys, cookies: &[Vec<u8>]) -> Result<Self, SessionError> {
        let cookie_len = cookies.first().map_or(0, Vec::len);
        if cookie_len == 0 {
            return Err(SessionError::NoCookies);
        }
        if let Some(c) = cookies.iter().find(|c| c.len() > COOKIE_MAX) {
            return Err(SessionError::CookieTooLong(c.len()));
        }
        let mut s = Self {
            algorithm: keys.algorithm(),
            c2s: keys.c2s.cipher().map_err(|_| SessionError::Key)?,
            s2c: keys.s2c.cipher().map_err(|_| SessionError::Key)?,
            pool: Pool {
                cookie_len,
                buf: vec![0; POOL_CAPACITY * cookie_len].into_boxed_slice(),
                lens: [0; POOL_CAPACITY],
                head: 0,
                count: 0,
            },
            scratch: vec![0; DATAGRAM_MAX].into_boxed_slice(),
        };
        for c in cookies {
            s.pool.push(c);
        }
        Ok(s)
    }

    pub fn cookies_left(&self) -> usize {
        self.pool.count
    }

    /// The longest request this session builds.
    pub fn max_request_len(&self) -> usize {
        max_request_len(self.pool.cookie_len)
    }

    /// As `NtsClient::build_request` with `pool_target` [`POOL_TARGET`]:
    /// spends one cookie and returns the request's length. `random` is the
    /// unique identifier then the nonce.
    pub fn build_request(
        &mut self,
        transmit: NtpTimestamp,
        random: &[u8; UNIQUE_ID_LEN + NONCE_LEN],
        out: &mut [u8],
    ) -> Result<usize, ClientError> {
        let header = NtpHeader::client_request(transmit);
        self.build_request_with(&header, random, out)
    }

    /// [`Session::build_request`] with a header of the caller's (an
    /// interleaved client's origin and receive timestamps).
    pub fn build_request_with(
        &mut self,
        header: &NtpHeader,
        random: &[u8; UNIQUE_ID_LEN + NONCE_LEN],
        out: &mut [u8],
    ) -> Result<usize, ClientError> {
        // Cookies left once this one is spent.
        let left = self.pool.count.saturating_sub(1);
        let cookie = self.pool.pop().ok_or(ClientError::NoCookies)?;
        let placeholders = POOL_TARGET.saturating_sub(left + 1);
        client::write_request_with(self.c2s.as_ref(), header, random, cookie, placeholders, out)
    }

    /// As `NtsClient::verify_reply`: checks the reply to the request with
    /// `transmit` and `unique_id`, stores its new cookies and returns how
    /// many there were.
    pub fn verify_reply(
        &mut self,
        reply: &[u8],
        transmit: NtpTimestamp,
        unique_id: &[u8; UNIQUE_ID_LEN],
    ) -> Result<usize, ClientError> {
        let (_, plain) = client::open_reply(
            self.s2c.as_ref(),
            reply,
            transmit,
            unique_id,
            &mut self.scratch,
        )?;
        let pool = &mut self.pool;
        client::new_cookies(plain, |c| pool.push(c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nts_proto::client::NtsClient;
    use nts_proto::cookie::{seal_cookie, MasterKey, SingleKey};
    use nts_proto::ef::{field_type, Fields};
    use nts_proto::packet::NtpHeader;
    use nts_proto::reader::Reader;
    use nts_proto::{Action, AeadAlgorithm, AeadKey, Random, Server, SystemInfo};

    struct Counter(u8);

    impl Random for Counter {
        fn fill(&mut self, dest: &mut [u8]) {
            for b in dest {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
        }
    }

    fn keys(alg: AeadAlgorithm) -> SessionKeys {
        let n = alg.key_len();
        SessionKeys {
            c2s: AeadKey::new(alg, &vec![3; n]).expect("key"),
            s2c: AeadKey::new(alg, &vec![4; n]).expect("key"),
        }
    }

    fn cookies(master: &MasterKey, keys: &SessionKeys, n: u8) -> Vec<Vec<u8>> {
        (0..n)
            .map(|j| {
                let mut c = vec![0u8; nts_proto::cookie::cookie_len(keys.algorithm())];
                seal_cookie(1, master, &[j; 16], keys, &mut c).expect("seal");
                c
            })
            .collect()
    }

    /// Many exchanges, with several requests in flight at once and one
    /// tampered reply and one NAK: `Session` and `NtsClient` build the same
    /// bytes and reach the same verdicts.
    #[test]
    fn behaves_exactly_like_nts_client() {
        for alg in AeadAlgorithm::ALL {
            let master = MasterKey::from_bytes(&[9; 32]);
            let ring = SingleKey::new(1, MasterKey::from_bytes(&[9; 32]));
            let mut system = SystemInfo::unsynchronized();
            system.stratum = 1;
            let server = Server {
                keys: &ring,
                system: &system,
            };
            let k = keys(alg);
            let initial = cookies(&master, &k, 8);
            let mut ours = Session::new(k.clone(), &initial).expect("session");
            let mut theirs = NtsClient::new(k, initial);
            let mut rng = Counter(0);
            let mut step = 0u64;
            for round in 0..20u64 {
                // Build 3 requests, then answer them in reverse order.
                let mut flight = Vec::new();
                for j in 0..3u64 {
                    step += 1;
                    let transmit = NtpTimestamp(round << 8 | j);
                    let random = [step as u8; UNIQUE_ID_LEN + NONCE_LEN];
                    let (mut a, mut b) = ([0u8; 2048], [0u8; 2048]);
                    let la = ours.build_request(transmit, &random, &mut a);
                    let lb = theirs.build_request(transmit, &random, 8, &mut b);
                    let (la, (lb, pending)) = (la.expect("ours"), lb.expect("theirs"));
                    assert_eq!(a[..la], b[..lb]);
                    flight.push((a, la, transmit, pending));
                }
                for (i, (req, len, transmit, pending)) in flight.into_iter().rev().enumerate() {
                    let mut reply = [0u8; 2048];
                    let Action::Reply { len: n, .. } =
                        server.handle(NtpTimestamp(7), &req[..len], &mut reply, &mut rng)
                    else {
                        panic!("no reply");
                    };
                    match (round, i) {
                        (5, 0) => reply[n - 1] ^= 1,
                        (7, 1) => reply[40] ^= 1,
                        (9, 2) => {
                            let mut r = Reader::new(&reply[..n]);
                            let mut h = NtpHeader::decode(&mut r).expect("header");
                            h.stratum = 0;
                            h.reference_id = *b"NTSN";
                            reply[..HEADER_LEN].copy_from_slice(&h.to_bytes());
                            // Cut at the authenticator: a NAK carries none.
                            let at = Fields::new(&reply[HEADER_LEN..n], HEADER_LEN)
                                .flatten()
                                .find(|f| f.field_type == field_type::AUTHENTICATOR)
                                .map(|f| f.offset)
                                .expect("authenticator");
                            let uid: [u8; UNIQUE_ID_LEN] = pending.unique_id;
                            let a = ours.verify_reply(&reply[..at], transmit, &uid);
                            let b = theirs.verify_reply(&reply[..at], &pending);
                            assert_eq!(a, Err(ClientError::Nak));
                            assert_eq!(b.map(|v| v.cookies), a);
                            continue;
                        }
                        _ => {}
                    }
                    let a = ours.verify_reply(&reply[..n], transmit, &pending.unique_id);
                    let b = theirs.verify_reply(&reply[..n], &pending);
                    assert_eq!(a, b.map(|v| v.cookies), "round {round} reply {i}");
                }
                assert_eq!(ours.cookies_left(), theirs.cookies_left());
            }
        }
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        let k = keys(AeadAlgorithm::AesSivCmac256);
        let master = MasterKey::from_bytes(&[1; 32]);
        let mut s = Session::new(k, &cookies(&master, &keys(AeadAlgorithm::AesSivCmac256), 2))
            .expect("session");
        let uid = [0u8; UNIQUE_ID_LEN];
        for len in [0usize, 10, 47, 48, 52, 64, 200] {
            let mut reply = vec![0xffu8; len];
            if len >= 1 {
                reply[0] = 0x24;
            }
            assert!(s.verify_reply(&reply, NtpTimestamp(0), &uid).is_err());
        }
        assert_eq!(
            Session::new(keys(AeadAlgorithm::AesSivCmac256), &[]).err(),
            Some(SessionError::NoCookies)
        );
        assert_eq!(
            Session::new(keys(AeadAlgorithm::AesSivCmac256), &[vec![0; 500]]).err(),
            Some(SessionError::CookieTooLong(500))
        );
    }

    #[test]
    fn the_pool_is_bounded_and_each_cookie_used_once() {
        let k = keys(AeadAlgorithm::AesSivCmac256);
        let many: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 100]).collect();
        let mut s = Session::new(k, &many).expect("session");
        assert_eq!(s.cookies_left(), POOL_CAPACITY);
        let mut out = [0u8; 2048];
        let mut seen = Vec::new();
        while s.cookies_left() > 0 {
            let len = s
                .build_request(NtpTimestamp(1), &[0; 48], &mut out)
                .expect("request");
            seen.push(out[HEADER_LEN + 36 + 4]);
            assert!(len <= s.max_request_len());
        }
        assert_eq!(seen, (0..POOL_CAPACITY as u8).collect::<Vec<_>>());
        assert_eq!(
            s.build_request(NtpTimestamp(1), &[0; 48], &mut out),
            Err(ClientError::NoCookies)
        );
    }

    /// Cookies longer than ntsd's own (other servers may issue them) are
    /// sent, and asked for, at their full length, up to `COOKIE_MAX`.
    #[test]
    fn long_cookies_are_sent_whole() {
        let cookie = vec![0xc5u8; COOKIE_MAX];
        let keys = keys(AeadAlgorithm::AesSivCmac256);
        let mut s = Session::new(keys, std::slice::from_ref(&cookie)).expect("session");
        let mut out = [0u8; DATAGRAM_MAX];
        let len = s
            .build_request(NtpTimestamp(1), &[1; UNIQUE_ID_LEN + NONCE_LEN], &mut out)
            .expect("request");
        assert_eq!(len, max_request_len(COOKIE_MAX));
        let fields: Vec<(u16, usize)> = Fields::new(&out[HEADER_LEN..len], HEADER_LEN)
            .map(|f| f.expect("field"))
            .map(|f| (f.field_type, f.body.len()))
            .collect();
        assert!(fields.contains(&(field_type::COOKIE, COOKIE_MAX)));
        let placeholders = (field_type::COOKIE_PLACEHOLDER, COOKIE_MAX);
        let n = fields.iter().filter(|f| **f == placeholders).count();
        assert_eq!(n, POOL_TARGET - 1);
    }
}
