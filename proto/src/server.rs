//! The server's one entry point: request bytes in, an [`Action`] out.
//!
//! ```text
//! request ─ header ─ mode 3? ─ no EFs ──────────────────────────────> plain reply
//!                            └ Cookie EF ─ open cookie ─ verify auth ─> NTS reply
//!                                             └── fails ───────────────> NTS NAK
//! anything malformed ───────────────────────────────────────────────> ignore
//! ```
//!
//! No reply is ever longer than its request (RFC 8915, section 5.7: no
//! amplification), nothing is allocated, and time and randomness come in as
//! arguments so the function is deterministic under test.

use crate::aead::TAG_LEN;
use crate::cookie::{
    cookie_len, open_cookie, seal_cookie, CookieError, CookieKeys, COOKIE_NONCE_LEN, MAX_COOKIE_LEN,
};
use crate::ef::{field_len, field_type, reserve_field, write_field, Authenticator, Fields};
use crate::packet::{Leap, Mode, NtpHeader, HEADER_LEN};
use crate::reader::{BufferTooSmall, Reader, Writer};
use crate::time::{NtpShort, NtpTimestamp};

/// RFC 8915, section 5.3: the Unique Identifier is at least 32 octets.
pub const MIN_UNIQUE_ID_LEN: usize = 32;
/// Nonces shorter than this are refused with AES-SIV (RFC 8915, section
/// 5.6); AES-GCM-SIV takes exactly 12 ([`crate::AeadAlgorithm::accepts_nonce_len`]).
pub const MIN_NONCE_LEN: usize = 16;
/// The longest nonce the server puts in a reply (AES-SIV's 16 bytes).
const MAX_REPLY_NONCE_LEN: usize = 16;

/// What the server says about its own clock, published by the time source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemInfo {
    pub leap: Leap,
    pub stratum: u8,
    pub precision: i8,
    pub root_delay: NtpShort,
    pub root_dispersion: NtpShort,
    pub reference_id: [u8; 4],
    pub reference_time: NtpTimestamp,
}

impl SystemInfo {
    /// An unsynchronised clock: leap indicator 3 (alarm) and stratum 16,
    /// both of which mean "unsynchronised" in RFC 5905, section 7.3.
    pub fn unsynchronized() -> Self {
        Self {
            leap: Leap::Unsynchronized,
            stratum: 16,
            precision: -20,
            root_delay: NtpShort(0),
            root_dispersion: NtpShort(0),
            reference_id: [0; 4],
            reference_time: NtpTimestamp(0),
        }
    }
}

/// Source of random bytes for nonces.
pub trait Random {
    fn fill(&mut self, dest: &mut [u8]);
}

/// Why a request was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Shorter than an NTP header.
    TooShort,
    /// Not a client (mode 3) packet.
    NotClient,
    /// Version outside 1..=4, or NTS fields in a packet that is not NTPv4.
    BadVersion,
    /// Extension fields that do not parse.
    Malformed,
    /// NTS fields without exactly one Unique Identifier and one Cookie.
    MalformedNts,
    /// The reply buffer is too small (a caller bug, counted not panicked).
    BufferTooSmall,
}

/// Why an NTS NAK was sent (RFC 8915, section 5.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NakReason {
    /// The cookie names a key that is unknown or no longer accepted.
    CookieUnknownKey,
    /// The cookie has a wrong length or fails authentication.
    CookieInvalid,
    /// The authenticator is missing, malformed, has a short nonce or a bad tag.
    AuthFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyKind {
    Plain,
    Nts,
    Nak(NakReason),
}

/// The outcome of [`Server::handle`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Ignore(DropReason),
    /// Send the first `len` bytes of the reply buffer back to the peer.
    Reply {
        len: usize,
        kind: ReplyKind,
    },
}

/// The NTS/NTP server core, borrowed per packet from lock-free snapshots.
#[derive(Debug)]
pub struct Server<'a, K> {
    pub keys: &'a K,
    pub system: &'a SystemInfo,
}

struct NtsFields<'a> {
    unique_id: Option<&'a [u8]>,
    cookie: Option<&'a [u8]>,
    placeholders: usize,
    /// The authenticator body and its offset in the packet.
    authenticator: Option<(&'a [u8], usize)>,
}

impl<'a> NtsFields<'a> {
    fn collect(request: &'a [u8]) -> Result<Self, DropReason> {
        let mut f = NtsFields {
            unique_id: None,
            cookie: None,
            placeholders: 0,
            authenticator: None,
        };
        let rest = request.get(HEADER_LEN..).unwrap_or(&[]);
        for field in Fields::new(rest, HEADER_LEN) {
            let field = field.map_err(|_| DropReason::Malformed)?;
            match field.field_type {
                field_type::UNIQUE_IDENTIFIER if f.unique_id.is_none() => {
                    f.unique_id = Some(field.body)
                }
                field_type::COOKIE if f.cookie.is_none() => f.cookie = Some(field.body),
                field_type::UNIQUE_IDENTIFIER | field_type::COOKIE => {
                    return Err(DropReason::MalformedNts)
                }
                field_type::COOKIE_PLACEHOLDER => f.placeholders += 1,
                field_type::AUTHENTICATOR => {
                    // Fields after the authenticator are unauthenticated; we
                    // ignore them rather than act on them (RFC 8915, 5.6).
                    f.authenticator = Some((field.body, field.offset));
                    break;
                }
                _ => {}
            }
        }
        Ok(f)
    }

    fn is_nts(&self) -> bool {
        self.cookie.is_some() || self.authenticator.is_some() || self.placeholders > 0
    }
}

impl<K: CookieKeys> Server<'_, K> {
    /// Answers one request, with `now` as both receive and transmit time.
    /// `reply` must be at least as long as `request` for a full reply; the
    /// reply never exceeds `request.len()`.
    pub fn handle(
        &self,
        now: NtpTimestamp,
        request: &[u8],
        reply: &mut [u8],
        rng: &mut impl Random,
    ) -> Action {
        self.handle_timed(now, || now, request, reply, rng)
    }

    /// Answers one request received at `received` (the kernel's timestamp).
    /// `transmit` is called once, as late as possible: after every other
    /// byte of the reply is written and, for NTS, just before the reply is
    /// sealed, since the authenticator covers the transmit timestamp.
    pub fn handle_timed(
        &self,
        received: NtpTimestamp,
        transmit: impl FnOnce() -> NtpTimestamp,
        request: &[u8],
        reply: &mut [u8],
        rng: &mut impl Random,
    ) -> Action {
        match self.try_handle(received, transmit, request, reply, rng) {
            Ok(action) => action,
            Err(reason) => Action::Ignore(reason),
        }
    }

    fn try_handle(
        &self,
        now: NtpTimestamp,
        transmit: impl FnOnce() -> NtpTimestamp,
        request: &[u8],
        reply: &mut [u8],
        rng: &mut impl Random,
    ) -> Result<Action, DropReason> {
        let header = NtpHeader::decode(&mut Reader::new(request)).ok_or(DropReason::TooShort)?;
        if header.mode != Mode::Client {
            return Err(DropReason::NotClient);
        }
        if !(1..=4).contains(&header.version) {
            return Err(DropReason::BadVersion);
        }
        let limit = request.len().min(reply.len());
        let reply = reply.get_mut(..limit).ok_or(DropReason::BufferTooSmall)?;
        let fields = NtsFields::collect(request)?;
        let mut response = self.response_header(&header, now);
        if !fields.is_nts() {
            let out: &mut [u8; HEADER_LEN] = reply
                .get_mut(..HEADER_LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(DropReason::BufferTooSmall)?;
            response.transmit = transmit();
            *out = response.to_bytes();
            return Ok(Action::Reply {
                len: HEADER_LEN,
                kind: ReplyKind::Plain,
            });
        }
        if header.version != 4 {
            return Err(DropReason::BadVersion);
        }
        let (Some(unique_id), Some(cookie)) = (fields.unique_id, fields.cookie) else {
            return Err(DropReason::MalformedNts);
        };
        if unique_id.len() < MIN_UNIQUE_ID_LEN {
            return Err(DropReason::MalformedNts);
        }
        match self.authenticate(request, cookie, &fields, reply) {
            Ok((keys, wanted)) => {
                let len = nts_reply(
                    &response, unique_id, &keys, wanted, self.keys, reply, rng, transmit,
                )
                .map_err(|_| DropReason::BufferTooSmall)?;
                Ok(Action::Reply {
                    len,
                    kind: ReplyKind::Nts,
                })
            }
            Err(reason) => {
                let len = nak(&header, now, transmit(), unique_id, reply)
                    .map_err(|_| DropReason::BufferTooSmall)?;
                Ok(Action::Reply {
                    len,
                    kind: ReplyKind::Nak(reason),
                })
            }
        }
    }

    fn response_header(&self, request: &NtpHeader, now: NtpTimestamp) -> NtpHeader {
        let s = self.system;
        NtpHeader {
            leap: s.leap,
            version: request.version,
            mode: Mode::Server,
            stratum: s.stratum,
            poll: request.poll,
            precision: s.precision,
            root_delay: s.root_delay,
            root_dispersion: s.root_dispersion,
            reference_id: s.reference_id,
            reference_time: s.reference_time,
            origin: request.transmit,
            receive: now,
            transmit: now,
        }
    }

    /// Opens the cookie and verifies the authenticator. On success returns the
    /// session keys and the number of cookies the client asked for. Uses
    /// `scratch` (the reply buffer) to decrypt.
    fn authenticate(
        &self,
        request: &[u8],
        cookie: &[u8],
        fields: &NtsFields<'_>,
        scratch: &mut [u8],
    ) -> Result<(crate::cookie::SessionKeys, usize), NakReason> {
        let mut cookie_scratch = [0u8; MAX_COOKIE_LEN];
        let keys = open_cookie(self.keys, cookie, &mut cookie_scratch).map_err(|e| match e {
            CookieError::UnknownKey => NakReason::CookieUnknownKey,
            _ => NakReason::CookieInvalid,
        })?;
        let (body, offset) = fields.authenticator.ok_or(NakReason::AuthFailed)?;
        let auth = Authenticator::decode(body).ok_or(NakReason::AuthFailed)?;
        if !keys.algorithm().accepts_nonce_len(auth.nonce.len()) {
            return Err(NakReason::AuthFailed);
        }
        let ad = request.get(..offset).ok_or(NakReason::AuthFailed)?;
        let buf = scratch
            .get_mut(..auth.ciphertext.len())
            .ok_or(NakReason::AuthFailed)?;
        buf.copy_from_slice(auth.ciphertext);
        let plaintext = keys
            .c2s
            .open(ad, auth.nonce, buf)
            .map_err(|_| NakReason::AuthFailed)?;
        // Placeholders may also travel encrypted (RFC 8915, section 5.7).
        let mut wanted = 1 + fields.placeholders;
        for field in Fields::new(plaintext, 0) {
            match field {
                Ok(f) if f.field_type == field_type::COOKIE_PLACEHOLDER => wanted += 1,
                Ok(_) => {}
                Err(_) => return Err(NakReason::AuthFailed),
            }
        }
        Ok((keys, wanted))
    }
}

/// Offset of the transmit timestamp in the NTP header.
const TRANSMIT_OFFSET: usize = 40;

/// Writes an authenticated reply carrying up to `wanted` new cookies, as many
/// as fit in `reply` (whose length is already capped at the request's).
#[allow(clippy::too_many_arguments)]
fn nts_reply<K: CookieKeys>(
    header: &NtpHeader,
    unique_id: &[u8],
    keys: &crate::cookie::SessionKeys,
    wanted: usize,
    ring: &K,
    reply: &mut [u8],
    rng: &mut impl Random,
    transmit: impl FnOnce() -> NtpTimestamp,
) -> Result<usize, BufferTooSmall> {
    let mut w = Writer::new(reply);
    header.encode(&mut w)?;
    write_field(&mut w, field_type::UNIQUE_IDENTIFIER, unique_id)?;
    let auth_offset = w.position();
    let limit = reply.len();
    let alg = keys.algorithm();
    let nonce_len = alg.nonce_len();
    let one_cookie = field_len(cookie_len(alg));
    let fixed = auth_offset + 4 + Authenticator::body_len(nonce_len, TAG_LEN);
    let fit = limit.saturating_sub(fixed) / one_cookie;
    let count = wanted.min(fit);
    let ct_len = TAG_LEN + count * one_cookie;
    let body_len = Authenticator::body_len(nonce_len, ct_len);
    let total = auth_offset + 4 + body_len;

    let (ad, rest) = reply.split_at_mut(auth_offset);
    let mut w = Writer::new(rest);
    w.put_u16(field_type::AUTHENTICATOR)?;
    w.put_u16(u16::try_from(4 + body_len).map_err(|_| BufferTooSmall)?)?;
    w.put_u16(u16::try_from(nonce_len).map_err(|_| BufferTooSmall)?)?;
    w.put_u16(u16::try_from(ct_len).map_err(|_| BufferTooSmall)?)?;
    let mut nonce_buf = [0u8; MAX_REPLY_NONCE_LEN];
    let nonce = nonce_buf.get_mut(..nonce_len).ok_or(BufferTooSmall)?;
    rng.fill(nonce);
    let nonce = &*nonce;
    w.put(nonce)?;
    let sealed = w.reserve(ct_len)?;
    {
        let text = sealed
            .get_mut(alg.text_range(ct_len))
            .ok_or(BufferTooSmall)?;
        let mut cw = Writer::new(text);
        let (key_id, master) = ring.sealing_key();
        let clen = cookie_len(alg);
        for _ in 0..count {
            let mut cookie_nonce = [0u8; COOKIE_NONCE_LEN];
            rng.fill(&mut cookie_nonce);
            let body = reserve_field(&mut cw, field_type::COOKIE, clen)?;
            seal_cookie(key_id, master, &cookie_nonce, keys, body).map_err(|_| BufferTooSmall)?;
            body.get_mut(clen..).unwrap_or_default().fill(0);
        }
    }
    // The reply key is expanded before the transmit timestamp is read.
    keys.s2c
        .with_cipher(|sealer| {
            ad.get_mut(TRANSMIT_OFFSET..HEADER_LEN)
                .ok_or(BufferTooSmall)?
                .copy_from_slice(&transmit().0.to_be_bytes());
            sealer.seal(ad, nonce, sealed).map_err(|_| BufferTooSmall)
        })
        .map_err(|_| BufferTooSmall)??;
    Ok(total)
}

/// A RATE kiss-o'-death (RFC 5905, section 7.4) answering a plain client
/// request received at `received`, for a server that limits rates: stratum
/// 0, reference id `RATE`, leap 3, the request's transmit time as origin.
/// 48 bytes, never longer than the request; `None` for anything that is not
/// a client request or a buffer too small.
pub fn rate_kod(request: &[u8], received: NtpTimestamp, reply: &mut [u8]) -> Option<usize> {
    let header = NtpHeader::decode(&mut Reader::new(request))?;
    if header.mode != Mode::Client || !(1..=4).contains(&header.version) {
        return None;
    }
    let kod = NtpHeader {
        leap: Leap::Unsynchronized,
        version: header.version,
        mode: Mode::Server,
        stratum: 0,
        poll: header.poll,
        precision: 0,
        root_delay: NtpShort(0),
        root_dispersion: NtpShort(0),
        reference_id: *b"RATE",
        reference_time: NtpTimestamp(0),
        origin: header.transmit,
        receive: received,
        transmit: received,
    };
    let out: &mut [u8; HEADER_LEN] = reply.get_mut(..HEADER_LEN)?.try_into().ok()?;
    *out = kod.to_bytes();
    Some(HEADER_LEN)
}

/// An NTS NAK: a kiss-o'-death `NTSN` echoing the Unique Identifier, with no
/// cookie and no authenticator (RFC 8915, section 5.7).
fn nak(
    request: &NtpHeader,
    now: NtpTimestamp,
    transmit: NtpTimestamp,
    unique_id: &[u8],
    reply: &mut [u8],
) -> Result<usize, BufferTooSmall> {
    let header = NtpHeader {
        leap: Leap::Unsynchronized,
        version: 4,
        mode: Mode::Server,
        stratum: 0,
        poll: request.poll,
        precision: 0,
        root_delay: NtpShort(0),
        root_dispersion: NtpShort(0),
        reference_id: *b"NTSN",
        reference_time: NtpTimestamp(0),
        origin: request.transmit,
        receive: now,
        transmit,
    };
    let mut w = Writer::new(reply);
    header.encode(&mut w)?;
    write_field(&mut w, field_type::UNIQUE_IDENTIFIER, unique_id)?;
    Ok(w.position())
}
