//! The client half: build an NTS request, verify the reply, keep the cookies.
//!
//! Used by `ntsd query`, the load generator and the tests. Allocation is fine
//! here; the server path in [`crate::server`] is the one kept allocation-free.

use std::collections::VecDeque;

use crate::aead::TAG_LEN;
use crate::cookie::SessionKeys;
use crate::ef::{field_len, field_type, write_field, Authenticator, Fields};
use crate::packet::{Mode, NtpHeader, HEADER_LEN};
use crate::reader::{BufferTooSmall, Reader, Writer};
use crate::time::NtpTimestamp;

pub const UNIQUE_ID_LEN: usize = 32;
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
        let (uid, nonce) = random.split_at(UNIQUE_ID_LEN);
        let placeholders = pool_target.saturating_sub(self.cookies.len() + 1);
        let mut w = Writer::new(out);
        NtpHeader::client_request(transmit).encode(&mut w)?;
        write_field(&mut w, field_type::UNIQUE_IDENTIFIER, uid)?;
        write_field(&mut w, field_type::COOKIE, &cookie)?;
        let zeros = [0u8; crate::cookie::MAX_COOKIE_LEN];
        for _ in 0..placeholders {
            write_field(
                &mut w,
                field_type::COOKIE_PLACEHOLDER,
                zeros
                    .get(..cookie.len())
                    .ok_or(ClientError::BufferTooSmall)?,
            )?;
        }
        let auth_offset = w.position();
        let body_len = Authenticator::body_len(NONCE_LEN, TAG_LEN);
        w.put_u16(field_type::AUTHENTICATOR)?;
        w.put_u16(u16::try_from(4 + body_len).map_err(|_| ClientError::BufferTooSmall)?)?;
        w.put_u16(NONCE_LEN as u16)?;
        w.put_u16(TAG_LEN as u16)?;
        w.put(nonce)?;
        w.reserve(TAG_LEN)?;
        let len = w.position();
        let (ad, rest) = out.split_at_mut(auth_offset);
        let tag = rest
            .get_mut(8 + NONCE_LEN..8 + NONCE_LEN + TAG_LEN)
            .ok_or(ClientError::BufferTooSmall)?;
        self.keys
            .c2s
            .seal(ad, nonce, tag)
            .map_err(|_| ClientError::BufferTooSmall)?;
        let mut unique_id = [0u8; UNIQUE_ID_LEN];
        unique_id.copy_from_slice(uid);
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
        let header = NtpHeader::decode(&mut Reader::new(reply)).ok_or(ClientError::Malformed)?;
        if header.mode != Mode::Server || header.origin != pending.transmit {
            return Err(ClientError::Unsolicited);
        }
        let rest = reply.get(HEADER_LEN..).unwrap_or(&[]);
        let mut uid_ok = false;
        let mut auth = None;
        for field in Fields::new(rest, HEADER_LEN) {
            let field = field.map_err(|_| ClientError::Malformed)?;
            match field.field_type {
                field_type::UNIQUE_IDENTIFIER => uid_ok = field.body == pending.unique_id,
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
        let mut buf = a.ciphertext.to_vec();
        let plain = self
            .keys
            .s2c
            .open(ad, a.nonce, &mut buf)
            .map_err(|_| ClientError::BadAuthenticator)?;
        let mut cookies = 0;
        for field in Fields::new(plain, 0) {
            let field = field.map_err(|_| ClientError::Malformed)?;
            if field.field_type == field_type::COOKIE {
                let c = field.body.get(..self.cookie_len).unwrap_or(field.body);
                self.cookies.push_back(c.to_vec());
                cookies += 1;
            }
        }
        Ok(Verified { header, cookies })
    }

    /// Length of a request built with `placeholders` placeholders.
    pub fn request_len(&self, placeholders: usize) -> usize {
        HEADER_LEN
            + field_len(UNIQUE_ID_LEN)
            + (1 + placeholders) * field_len(self.cookie_len)
            + 4
            + Authenticator::body_len(NONCE_LEN, TAG_LEN)
    }
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
