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
    cookie_len, open_cookie, prepare_cookie, CookieError, CookieKeys, SessionKeys,
    COOKIE_NONCE_LEN, MAX_COOKIE_LEN,
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

/// The saved timestamps of interleaved mode (RFC 9769), kept by the caller.
///
/// An interleaved client sets the origin timestamp of its request to the
/// receive timestamp of the server's previous reply to it. The server finds
/// the transmit timestamp it saved for that reply (the kernel's, taken when
/// the reply left) and sends it in this reply, so the client learns the
/// exact T3 of the previous exchange whatever the server's batching.
///
/// As in chrony, the server marks its timestamps so that only a request
/// that may be interleaved needs a lookup: every reply's receive timestamp
/// has its lowest bit set, every transmit timestamp has it cleared. A
/// request whose origin has the bit set, whose receive timestamp differs
/// from its transmit timestamp and whose version is 4 is in interleaved
/// form; any other request gets a basic reply without a lookup.
pub trait Interleave {
    /// Called once for an authenticated (or plain) request in interleaved
    /// form, before its reply is written. `origin` is the request's origin
    /// timestamp; the answer is the transmit timestamp saved under it, if
    /// there is one, and the pair is used up (RFC 9769: a saved timestamp
    /// goes out at most once). `receive` is the receive timestamp the reply
    /// to this request carries: the caller saves that reply's transmit
    /// timestamp under it once the reply has left.
    fn exchange(&mut self, origin: NtpTimestamp, receive: NtpTimestamp) -> Option<NtpTimestamp>;
}

/// No interleaved mode: every reply is basic and no timestamp is marked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Basic;

impl Interleave for Basic {
    fn exchange(&mut self, _: NtpTimestamp, _: NtpTimestamp) -> Option<NtpTimestamp> {
        None
    }
}

/// Whether the marks of interleaved mode are applied (see [`Interleave`]).
#[derive(Clone, Copy)]
struct Marks(bool);

impl Marks {
    /// A receive timestamp as the reply carries it: lowest bit set.
    fn receive(self, t: NtpTimestamp) -> NtpTimestamp {
        NtpTimestamp(if self.0 { t.0 | 1 } else { t.0 })
    }

    /// A transmit timestamp as the reply carries it: lowest bit clear, so
    /// it never equals a receive timestamp.
    fn transmit(self, t: NtpTimestamp) -> NtpTimestamp {
        NtpTimestamp(if self.0 { t.0 & !1 } else { t.0 })
    }
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

pub(crate) struct NtsFields<'a> {
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
        let exchange = Exchange {
            received,
            marks: Marks(false),
        };
        self.answer(exchange, transmit, &mut Basic, request, reply, rng)
    }

    /// [`Server::handle_timed`] with interleaved mode (RFC 9769): the
    /// reply's timestamps are marked, and a request in interleaved form
    /// that `saved` has a transmit timestamp for gets an interleaved reply
    /// (origin = the request's receive timestamp, transmit = the saved
    /// one). `transmit` is still called once, for the caller to save as
    /// this reply's transmit time until the kernel's is known. Basic
    /// requests, NAKs and everything else are answered as by
    /// `handle_timed`, and no reply is longer than its request.
    pub fn handle_interleaved(
        &self,
        received: NtpTimestamp,
        transmit: impl FnOnce() -> NtpTimestamp,
        saved: &mut impl Interleave,
        request: &[u8],
        reply: &mut [u8],
        rng: &mut impl Random,
    ) -> Action {
        let exchange = Exchange {
            received,
            marks: Marks(true),
        };
        self.answer(exchange, transmit, saved, request, reply, rng)
    }

    /// The action for one request: a reply, or why it is ignored.
    #[inline]
    fn answer(
        &self,
        exchange: Exchange,
        transmit: impl FnOnce() -> NtpTimestamp,
        saved: &mut impl Interleave,
        request: &[u8],
        reply: &mut [u8],
        rng: &mut impl Random,
    ) -> Action {
        match self.try_handle(exchange, transmit, saved, request, reply, rng) {
            Ok(action) => action,
            Err(reason) => Action::Ignore(reason),
        }
    }

    #[inline]
    fn try_handle(
        &self,
        exchange: Exchange,
        transmit: impl FnOnce() -> NtpTimestamp,
        saved: &mut impl Interleave,
        request: &[u8],
        reply: &mut [u8],
        rng: &mut impl Random,
    ) -> Result<Action, DropReason> {
        let marks = exchange.marks;
        let now = marks.receive(exchange.received);
        let mut nts = match self.classify(now, request, reply)? {
            Classified::Plain(mut response, form) => {
                let previous = interleave(&mut response, form, saved);
                let transmit = || marks.transmit(previous.unwrap_or(transmit()));
                return plain_reply(response, transmit, reply);
            }
            Classified::Nts(nts) => nts,
        };
        let mut cookie_scratch = [0u8; MAX_COOKIE_LEN];
        let opened = open_cookie(self.keys, nts.cookie, &mut cookie_scratch).map_err(nak_reason);
        let verified = opened.and_then(|keys| {
            let wanted = verify(request, &keys, &nts.fields, reply)?;
            Ok((keys, wanted))
        });
        match verified {
            Ok((keys, wanted)) => {
                // Only an authenticated request may use up a saved pair.
                let previous = interleave(&mut nts.response, nts.form, saved);
                let transmit = || marks.transmit(previous.unwrap_or(transmit()));
                let (key_id, master) = self.keys.sealing_key();
                let frame = frame_reply(&nts, &keys, wanted, key_id, reply, rng)
                    .map_err(|_| DropReason::BufferTooSmall)?;
                frame
                    .seal_cookies(master, reply)
                    .map_err(|_| DropReason::BufferTooSmall)?;
                frame
                    .seal(&keys, reply, transmit)
                    .map_err(|_| DropReason::BufferTooSmall)
            }
            Err(reason) => nak_reply(&nts, now, marks.transmit(transmit()), reason, reply),
        }
    }

    /// The checks every request goes through before any cryptography: a
    /// plain reply's header, or the NTS fields to authenticate.
    #[inline]
    pub(crate) fn classify<'r>(
        &self,
        now: NtpTimestamp,
        request: &'r [u8],
        reply: &[u8],
    ) -> Result<Classified<'r>, DropReason> {
        let header = NtpHeader::decode(&mut Reader::new(request)).ok_or(DropReason::TooShort)?;
        if header.mode != Mode::Client {
            return Err(DropReason::NotClient);
        }
        if !(1..=4).contains(&header.version) {
            return Err(DropReason::BadVersion);
        }
        let limit = request.len().min(reply.len());
        if limit < HEADER_LEN {
            return Err(DropReason::BufferTooSmall);
        }
        let fields = NtsFields::collect(request)?;
        let response = self.response_header(&header, now);
        let form = InterleavedForm::of(&header);
        if !fields.is_nts() {
            return Ok(Classified::Plain(response, form));
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
        Ok(Classified::Nts(NtsRequest {
            response,
            form,
            unique_id,
            cookie,
            fields,
            limit,
        }))
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
}

/// The receive time of a request and whether interleaved mode marks the
/// reply's timestamps.
#[derive(Clone, Copy)]
struct Exchange {
    received: NtpTimestamp,
    marks: Marks,
}

/// A request in interleaved form (see [`Interleave`]): its origin and
/// receive timestamps.
#[derive(Clone, Copy)]
pub(crate) struct InterleavedForm {
    origin: NtpTimestamp,
    receive: NtpTimestamp,
}

impl InterleavedForm {
    fn of(request: &NtpHeader) -> Option<InterleavedForm> {
        (request.version == 4 && request.origin.0 & 1 == 1 && request.receive != request.transmit)
            .then_some(InterleavedForm {
                origin: request.origin,
                receive: request.receive,
            })
    }
}

/// Asks `saved` for the transmit timestamp of the previous reply to a
/// request in interleaved form; when there is one, the reply becomes
/// interleaved: its origin is the request's receive timestamp (RFC 9769,
/// section 2), which is how the client tells it from a basic reply.
#[inline]
fn interleave(
    response: &mut NtpHeader,
    form: Option<InterleavedForm>,
    saved: &mut impl Interleave,
) -> Option<NtpTimestamp> {
    let form = form?;
    let previous = saved.exchange(form.origin, response.receive)?;
    response.origin = form.receive;
    Some(previous)
}

/// What [`Server::classify`] made of a request.
pub(crate) enum Classified<'r> {
    /// No NTS fields: answer with this header.
    Plain(NtpHeader, Option<InterleavedForm>),
    Nts(NtsRequest<'r>),
}

/// An NTS request that passed the checks that need no key.
pub(crate) struct NtsRequest<'r> {
    /// The reply's header (a NAK takes its poll and origin from it).
    response: NtpHeader,
    form: Option<InterleavedForm>,
    unique_id: &'r [u8],
    pub(crate) cookie: &'r [u8],
    fields: NtsFields<'r>,
    /// The reply's length limit: the request's, or the buffer's if shorter.
    limit: usize,
}

pub(crate) fn nak_reason(e: CookieError) -> NakReason {
    match e {
        CookieError::UnknownKey => NakReason::CookieUnknownKey,
        _ => NakReason::CookieInvalid,
    }
}

/// The plain reply: the header with the transmit time read last.
#[inline]
pub(crate) fn plain_reply(
    mut response: NtpHeader,
    transmit: impl FnOnce() -> NtpTimestamp,
    reply: &mut [u8],
) -> Result<Action, DropReason> {
    let out: &mut [u8; HEADER_LEN] = reply
        .get_mut(..HEADER_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or(DropReason::BufferTooSmall)?;
    response.transmit = transmit();
    *out = response.to_bytes();
    Ok(Action::Reply {
        len: HEADER_LEN,
        kind: ReplyKind::Plain,
    })
}

/// The NAK of `nts` for `reason`.
#[inline]
pub(crate) fn nak_reply(
    nts: &NtsRequest<'_>,
    now: NtpTimestamp,
    transmit: NtpTimestamp,
    reason: NakReason,
    reply: &mut [u8],
) -> Result<Action, DropReason> {
    let reply = reply
        .get_mut(..nts.limit)
        .ok_or(DropReason::BufferTooSmall)?;
    let len = nak(&nts.response, now, transmit, nts.unique_id, reply)
        .map_err(|_| DropReason::BufferTooSmall)?;
    Ok(Action::Reply {
        len,
        kind: ReplyKind::Nak(reason),
    })
}

/// Verifies the authenticator of `request` under the session keys of its
/// cookie and returns the number of cookies the client asked for. Uses
/// `scratch` (the reply buffer) to decrypt.
#[inline]
pub(crate) fn verify(
    request: &[u8],
    keys: &SessionKeys,
    fields: &NtsFields<'_>,
    scratch: &mut [u8],
) -> Result<usize, NakReason> {
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
    Ok(wanted)
}

/// Offset of the transmit timestamp in the NTP header.
const TRANSMIT_OFFSET: usize = 40;

/// An NTS reply written but for its seals: everything is in place, the new
/// cookies in the clear ([`crate::cookie::prepare_cookie`]) and the
/// authenticator's tag empty.
pub(crate) struct Frame {
    total: usize,
    auth_offset: usize,
    nonce: [u8; MAX_REPLY_NONCE_LEN],
    nonce_len: usize,
    /// Where the sealed part (tag and encrypted fields) is.
    sealed_at: usize,
    sealed_len: usize,
    /// Where the first cookie field is, the distance between fields, how
    /// many there are and how long each body is.
    cookies_at: usize,
    cookie_stride: usize,
    cookie_count: usize,
    cookie_len: usize,
}

/// Writes the frame of an authenticated reply carrying up to `wanted` new
/// cookies, as many as fit in the request's length; draws the reply nonce,
/// then each cookie's nonce, from `rng`.
#[inline]
pub(crate) fn frame_reply(
    nts: &NtsRequest<'_>,
    keys: &SessionKeys,
    wanted: usize,
    key_id: u32,
    reply: &mut [u8],
    rng: &mut impl Random,
) -> Result<Frame, BufferTooSmall> {
    let reply = reply.get_mut(..nts.limit).ok_or(BufferTooSmall)?;
    let mut w = Writer::new(reply);
    nts.response.encode(&mut w)?;
    write_field(&mut w, field_type::UNIQUE_IDENTIFIER, nts.unique_id)?;
    let auth_offset = w.position();
    let limit = reply.len();
    let alg = keys.algorithm();
    let nonce_len = alg.nonce_len();
    let clen = cookie_len(alg);
    let one_cookie = field_len(clen);
    let fixed = auth_offset + 4 + Authenticator::body_len(nonce_len, TAG_LEN);
    let fit = limit.saturating_sub(fixed) / one_cookie;
    let count = wanted.min(fit);
    let ct_len = TAG_LEN + count * one_cookie;
    let body_len = Authenticator::body_len(nonce_len, ct_len);
    let total = auth_offset + 4 + body_len;

    let rest = reply.get_mut(auth_offset..).ok_or(BufferTooSmall)?;
    let mut w = Writer::new(rest);
    w.put_u16(field_type::AUTHENTICATOR)?;
    w.put_u16(u16::try_from(4 + body_len).map_err(|_| BufferTooSmall)?)?;
    w.put_u16(u16::try_from(nonce_len).map_err(|_| BufferTooSmall)?)?;
    w.put_u16(u16::try_from(ct_len).map_err(|_| BufferTooSmall)?)?;
    let mut nonce = [0u8; MAX_REPLY_NONCE_LEN];
    let n = nonce.get_mut(..nonce_len).ok_or(BufferTooSmall)?;
    rng.fill(n);
    w.put(n)?;
    let sealed_at = auth_offset + w.position();
    let sealed = w.reserve(ct_len)?;
    let text_at = alg.text_range(ct_len).start;
    let text = sealed
        .get_mut(alg.text_range(ct_len))
        .ok_or(BufferTooSmall)?;
    let mut cw = Writer::new(text);
    for _ in 0..count {
        let mut cookie_nonce = [0u8; COOKIE_NONCE_LEN];
        rng.fill(&mut cookie_nonce);
        let body = reserve_field(&mut cw, field_type::COOKIE, clen)?;
        prepare_cookie(key_id, &cookie_nonce, keys, body).map_err(|_| BufferTooSmall)?;
        body.get_mut(clen..).unwrap_or_default().fill(0);
    }
    Ok(Frame {
        total,
        auth_offset,
        nonce,
        nonce_len,
        sealed_at,
        sealed_len: ct_len,
        cookies_at: sealed_at + text_at,
        cookie_stride: one_cookie,
        cookie_count: count,
        cookie_len: clen,
    })
}

impl Frame {
    /// Seals the new cookies in place under `master`. A cookie that is not
    /// where the frame put it is an error, never skipped: no cookie leaves
    /// unsealed (it would carry the session keys in the clear).
    pub(crate) fn seal_cookies(
        &self,
        master: &crate::cookie::MasterKey,
        reply: &mut [u8],
    ) -> Result<(), BufferTooSmall> {
        let end = self
            .cookie_count
            .checked_mul(self.cookie_stride)
            .and_then(|n| n.checked_add(self.cookies_at))
            .ok_or(BufferTooSmall)?;
        let fields = reply.get_mut(self.cookies_at..end).ok_or(BufferTooSmall)?;
        for field in fields.chunks_mut(self.cookie_stride.max(1)) {
            let cookie = field
                .get_mut(4..4 + self.cookie_len)
                .ok_or(BufferTooSmall)?;
            crate::cookie::seal_prepared(master, cookie).map_err(|_| BufferTooSmall)?;
        }
        Ok(())
    }

    /// Writes the transmit timestamp and seals the reply under the s2c
    /// key, which is expanded before the timestamp is read.
    #[inline]
    pub(crate) fn seal(
        &self,
        keys: &SessionKeys,
        reply: &mut [u8],
        transmit: impl FnOnce() -> NtpTimestamp,
    ) -> Result<Action, BufferTooSmall> {
        let (ad, rest) = reply
            .split_at_mut_checked(self.auth_offset)
            .ok_or(BufferTooSmall)?;
        let sealed = rest
            .get_mut(self.sealed_at - self.auth_offset..)
            .and_then(|r| r.get_mut(..self.sealed_len))
            .ok_or(BufferTooSmall)?;
        let nonce = self.nonce.get(..self.nonce_len).ok_or(BufferTooSmall)?;
        keys.s2c
            .with_cipher(|sealer| {
                ad.get_mut(TRANSMIT_OFFSET..HEADER_LEN)
                    .ok_or(BufferTooSmall)?
                    .copy_from_slice(&transmit().0.to_be_bytes());
                sealer.seal(ad, nonce, sealed).map_err(|_| BufferTooSmall)
            })
            .map_err(|_| BufferTooSmall)??;
        Ok(Action::Reply {
            len: self.total,
            kind: ReplyKind::Nts,
        })
    }
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
    response: &NtpHeader,
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
        poll: response.poll,
        precision: 0,
        root_delay: NtpShort(0),
        root_dispersion: NtpShort(0),
        reference_id: *b"NTSN",
        reference_time: NtpTimestamp(0),
        origin: response.origin,
        receive: now,
        transmit,
    };
    let mut w = Writer::new(reply);
    header.encode(&mut w)?;
    write_field(&mut w, field_type::UNIQUE_IDENTIFIER, unique_id)?;
    Ok(w.position())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cookie_count: usize) -> Frame {
        Frame {
            total: 0,
            auth_offset: 0,
            nonce: [0; MAX_REPLY_NONCE_LEN],
            nonce_len: 16,
            sealed_at: 0,
            sealed_len: 0,
            cookies_at: 8,
            cookie_stride: 104,
            cookie_count,
            cookie_len: 100,
        }
    }

    /// Sealing the new cookies fails closed: a reply too short to hold
    /// every cookie the frame promises is an error, and nothing is left
    /// half sealed in silence.
    #[test]
    fn cookies_that_do_not_fit_are_an_error_never_skipped() {
        let master = crate::cookie::MasterKey::from_bytes(&[0x42; 32]);
        let mut reply = [0u8; 8 + 2 * 104];
        assert!(frame(2).seal_cookies(&master, &mut reply).is_ok());
        assert_ne!(
            reply[8 + 4 + 20..8 + 4 + 36],
            [0; 16],
            "the first tag is written"
        );
        assert_ne!(
            reply[112 + 4 + 20..112 + 4 + 36],
            [0; 16],
            "the second tag is written"
        );
        let mut short = [0u8; 8 + 2 * 104 - 1];
        assert!(frame(2).seal_cookies(&master, &mut short).is_err());
        assert!(frame(usize::MAX).seal_cookies(&master, &mut reply).is_err());
    }
}
