//! The client half: build an NTS request, verify the reply, keep the cookies.
//!
//! Used by `ntsd query`, the load generator and the tests. Allocation is fine
//! here; the server path in [`crate::server`] is the one kept allocation-free.

use std::collections::VecDeque;

use crate::aead::{CipherRef, TAG_LEN};
use crate::cookie::SessionKeys;
use crate::ef::{field_len, field_type, write_field, write_zero_field, Authenticator, Fields};
use crate::packet::{Mode, NtpHeader, HEADER_LEN};
use crate::reader::{BufferTooSmall, Reader, Writer};
use crate::time::NtpTimestamp;

pub const UNIQUE_ID_LEN: usize = 32;
/// Random bytes drawn for a request's nonce: the longest any AEAD uses (16,
/// AES-SIV); AES-GCM-SIV takes the first 12.
pub const NONCE_LEN: usize = 16;

/// Why a reply was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("reply is malformed")]
    Malformed,
    #[error("reply is not a server reply to our request")]
    Unsolicited,
    #[error("server answered with an NTS NAK")]
    Nak,
    #[error("reply failed authentication")]
    BadAuthenticator,
    #[error("no cookie left; run NTS-KE again")]
    NoCookies,
    #[error("buffer too small")]
    BufferTooSmall,
}

impl From<BufferTooSmall> for ClientError {
    fn from(_: BufferTooSmall) -> Self {
        ClientError::BufferTooSmall
    }
}

/// A request in flight: what the reply must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub unique_id: [u8; UNIQUE_ID_LEN],
    pub transmit: NtpTimestamp,
}

/// An accepted reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub header: NtpHeader,
    /// New cookies found in the encrypted part.
    pub cookies: usize,
}

/// One NTS association: the keys from NTS-KE and a pool of unused cookies.
#[derive(Debug, Clone)]
pub struct NtsClient {
    keys: SessionKeys,
    cookies: VecDeque<Vec<u8>>,
    cookie_len: usize,
}

impl NtsClient {
    pub fn new(keys: SessionKeys, cookies: Vec<Vec<u8>>) -> Self {
        let cookie_len = cookies.first().map_or(0, Vec::len);
        Self {
            keys,
            cookies: cookies.into(),
            cookie_len,
        }
    }

    pub fn cookies_left(&self) -> usize {
        self.cookies.len()
    }

    /// Writes a request that spends one cookie and asks for enough new ones to
    /// refill the pool to `pool_target` (RFC 8915, section 5.7). `random`
    /// supplies the unique identifier then the nonce.
    pub fn build_request(
        &mut self,
        transmit: NtpTimestamp,
        random: &[u8; UNIQUE_ID_LEN + NONCE_LEN],
        pool_target: usize,
        out: &mut [u8],
    ) -> Result<(usize, Pending), ClientError> {
        let cookie = self.cookies.pop_front().ok_or(ClientError::NoCookies)?;
        let placeholders = pool_target.saturating_sub(self.cookies.len() + 1);
        let len = self
            .keys
            .c2s
            .with_cipher(|c2s| write_request(c2s, transmit, random, &cookie, placeholders, out))
            .map_err(|_| ClientError::BufferTooSmall)??;
        let unique_id: [u8; UNIQUE_ID_LEN] =
            *random.first_chunk().ok_or(ClientError::BufferTooSmall)?;
        Ok((
            len,
            Pending {
                unique_id,
                transmit,
            },
        ))
    }

    /// Verifies a reply to `pending` and stores the cookies it carries.
    pub fn verify_reply(
        &mut self,
        reply: &[u8],
        pending: &Pending,
    ) -> Result<Verified, ClientError> {
        let mut scratch = vec![0u8; reply.len()];
        let (header, plain) = self
            .keys
            .s2c
            .with_cipher(|s2c| {
                open_reply(
                    s2c,
                    reply,
                    pending.transmit,
                    &pending.unique_id,
                    &mut scratch,
                )
            })
            .map_err(|_| ClientError::BadAuthenticator)??;
        let cookies = new_cookies(plain, |c| {
            let c = c.get(..self.cookie_len).unwrap_or(c);
            self.cookies.push_back(c.to_vec());
        })?;
        Ok(Verified { header, cookies })
    }

    /// Length of a request built with `placeholders` placeholders.
    pub fn request_len(&self, placeholders: usize) -> usize {
        HEADER_LEN
            + field_len(UNIQUE_ID_LEN)
            + (1 + placeholders) * field_len(self.cookie_len)
            + 4
            + Authenticator::body_len(self.keys.algorithm().nonce_len(), TAG_LEN)
    }
}

/// Writes an NTS request for `transmit` carrying `cookie` and
/// `placeholders` cookie placeholders, authenticated under `c2s`; returns
/// its length. `random` is the unique identifier then the nonce. The
/// request building of [`NtsClient`], for clients that keep their cookies
/// and keys their own way (the load generator).
pub fn write_request(
    c2s: CipherRef<'_>,
    transmit: NtpTimestamp,
    random: &[u8; UNIQUE_ID_LEN + NONCE_LEN],
    cookie: &[u8],
    placeholders: usize,
    out: &mut [u8],
) -> Result<usize, ClientError> {
    let header = NtpHeader::client_request(transmit);
    write_request_with(c2s, &header, random, cookie, placeholders, out)
}

/// [`write_request`] with a header of the caller's: an interleaved client
/// (RFC 9769) sets its origin and receive timestamps.
pub fn write_request_with(
    c2s: CipherRef<'_>,
    header: &NtpHeader,
    random: &[u8; UNIQUE_ID_LEN + NONCE_LEN],
    cookie: &[u8],
    placeholders: usize,
    out: &mut [u8],
) -> Result<usize, ClientError> {
    let (uid, nonce) = random.split_at(UNIQUE_ID_LEN);
    let nonce_len = c2s.algorithm().nonce_len();
    let nonce = nonce.get(..nonce_len).ok_or(ClientError::BufferTooSmall)?;
    let mut w = Writer::new(out);
    header.encode(&mut w)?;
    write_field(&mut w, field_type::UNIQUE_IDENTIFIER, uid)?;
    write_field(&mut w, field_type::COOKIE, cookie)?;
    for _ in 0..placeholders {
        write_zero_field(&mut w, field_type::COOKIE_PLACEHOLDER, cookie.len())?;
    }
    let auth_offset = w.position();
    let body_len = Authenticator::body_len(nonce_len, TAG_LEN);
    w.put_u16(field_type::AUTHENTICATOR)?;
    w.put_u16(u16::try_from(4 + body_len).map_err(|_| ClientError::BufferTooSmall)?)?;
    w.put_u16(u16::try_from(nonce_len).map_err(|_| ClientError::BufferTooSmall)?)?;
    w.put_u16(TAG_LEN as u16)?;
    w.put(nonce)?;
    w.reserve(TAG_LEN)?;
    let len = w.position();
    let (ad, rest) = out.split_at_mut(auth_offset);
    let tag = rest
        .get_mut(8 + nonce_len..8 + nonce_len + TAG_LEN)
        .ok_or(ClientError::BufferTooSmall)?;
    c2s.seal(ad, nonce, tag)
        .map_err(|_| ClientError::BufferTooSmall)?;
    Ok(len)
}

/// Checks that `reply` answers the request with `transmit` and `unique_id`
/// and authenticates under `s2c`; returns its header and the decrypted
/// extension fields (in `scratch`, which must hold the ciphertext). The
/// checks of [`NtsClient::verify_reply`], in the same order and with the
/// same errors.
pub fn open_reply<'s>(
    s2c: CipherRef<'_>,
    reply: &[u8],
    transmit: NtpTimestamp,
    unique_id: &[u8; UNIQUE_ID_LEN],
    scratch: &'s mut [u8],
) -> Result<(NtpHeader, &'s [u8]), ClientError> {
    let header = NtpHeader::decode(&mut Reader::new(reply)).ok_or(ClientError::Malformed)?;
    if header.mode != Mode::Server || header.origin != transmit {
        return Err(ClientError::Unsolicited);
    }
    let rest = reply.get(HEADER_LEN..).unwrap_or(&[]);
    let mut uid_ok = false;
    let mut auth = None;
    for field in Fields::new(rest, HEADER_LEN) {
        let field = field.map_err(|_| ClientError::Malformed)?;
        match field.field_type {
            field_type::UNIQUE_IDENTIFIER => uid_ok = field.body == unique_id,
            field_type::AUTHENTICATOR => {
                auth = Some((field.body, field.offset));
                break;
            }
            _ => {}
        }
    }
    if !uid_ok {
        return Err(ClientError::Unsolicited);
    }
    if header.stratum == 0 && header.reference_id == *b"NTSN" && auth.is_none() {
        return Err(ClientError::Nak);
    }
    let (body, offset) = auth.ok_or(ClientError::BadAuthenticator)?;
    let a = Authenticator::decode(body).ok_or(ClientError::Malformed)?;
    let ad = reply.get(..offset).ok_or(ClientError::Malformed)?;
    let buf = scratch
        .get_mut(..a.ciphertext.len())
        .ok_or(ClientError::Malformed)?;
    buf.copy_from_slice(a.ciphertext);
    let plain = s2c
        .open(ad, a.nonce, buf)
        .map_err(|_| ClientError::BadAuthenticator)?;
    Ok((header, plain))
}

/// Passes each New Cookie field of a reply's decrypted part to `store`
/// and returns how many there were.
pub fn new_cookies(plain: &[u8], mut store: impl FnMut(&[u8])) -> Result<usize, ClientError> {
    let mut cookies = 0;
    for field in Fields::new(plain, 0) {
        let field = field.map_err(|_| ClientError::Malformed)?;
        if field.field_type == field_type::COOKIE {
            store(field.body);
            cookies += 1;
        }
    }
    Ok(cookies)
}

/// Offset and round-trip delay in seconds from the four timestamps
/// (RFC 5905, section 8): t1 client send, t2 server receive, t3 server
/// send, t4 client receive.
pub fn offset_delay(
    t1: NtpTimestamp,
    t2: NtpTimestamp,
    t3: NtpTimestamp,
    t4: NtpTimestamp,
) -> (f64, f64) {
    let offset = (t2.seconds_since(t1) + t3.seconds_since(t4)) / 2.0;
    let delay = t4.seconds_since(t1) - t3.seconds_since(t2);
    (offset, delay)
}
