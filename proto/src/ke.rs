//! NTS-KE records (RFC 8915, section 4) and the request/response exchange.
//!
//! Records are a 2-byte type whose top bit is the critical flag, a 2-byte
//! body length and the body. A message is a run of records ending with End
//! of Message. Parsing works on whatever has been read so far and reports
//! `Incomplete` until the End of Message record has arrived, so the I/O layer
//! needs no framing of its own.

use crate::aead::AeadAlgorithm;
use crate::reader::Reader;

/// Record types from RFC 8915, section 4.1.
pub mod record_type {
    pub const END_OF_MESSAGE: u16 = 0;
    pub const NEXT_PROTOCOL: u16 = 1;
    pub const ERROR: u16 = 2;
    pub const WARNING: u16 = 3;
    pub const AEAD_ALGORITHM: u16 = 4;
    pub const NEW_COOKIE: u16 = 5;
    pub const SERVER: u16 = 6;
    pub const PORT: u16 = 7;
    /// chrony's private record "compliant AES-128-GCM-SIV export" (from the
    /// Private or Experimental range): sent empty and non-critical by a
    /// client that derives AEAD-30 keys with id 30 in the exporter context,
    /// echoed by a server that does the same. Without it both sides use id
    /// 15 in the context, as chrony 4.4 to 4.6.0 did.
    pub const COMPLIANT_128GCM_EXPORT: u16 = 1024;
}

/// Error codes (RFC 8915, section 4.1.3).
pub mod error_code {
    pub const UNRECOGNIZED_CRITICAL_RECORD: u16 = 0;
    pub const BAD_REQUEST: u16 = 1;
    pub const INTERNAL_SERVER_ERROR: u16 = 2;
}

/// Protocol id of NTPv4 in the Next Protocol record.
pub const PROTOCOL_NTPV4: u16 = 0;
const CRITICAL: u16 = 0x8000;

/// One decoded NTS-KE record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    EndOfMessage,
    NextProtocol(Vec<u16>),
    Error(u16),
    Warning(u16),
    Aead(Vec<u16>),
    NewCookie(Vec<u8>),
    Server(String),
    Port(u16),
    /// [`record_type::COMPLIANT_128GCM_EXPORT`]; its body is empty.
    Compliant128GcmExport,
    Unknown {
        critical: bool,
        record_type: u16,
        body: Vec<u8>,
    },
}

/// A record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// More bytes are needed (the stream may still deliver them).
    #[error("record incomplete")]
    Incomplete,
    /// The body does not fit the record type.
    #[error("record {0} has a malformed body")]
    Malformed(u16),
}

fn u16_list(body: &[u8], record_type: u16) -> Result<Vec<u16>, RecordError> {
    if body.len() % 2 != 0 {
        return Err(RecordError::Malformed(record_type));
    }
    Ok(body
        .chunks_exact(2)
        .map(|c| {
            u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .collect())
}

fn single_u16(body: &[u8], record_type: u16) -> Result<u16, RecordError> {
    let mut r = Reader::new(body);
    match (r.u16(), r.is_empty()) {
        (Some(v), true) => Ok(v),
        _ => Err(RecordError::Malformed(record_type)),
    }
}

impl Record {
    /// Decodes one record; `Incomplete` if `r` ends inside it.
    pub fn decode(r: &mut Reader<'_>) -> Result<Record, RecordError> {
        let raw_type = r.u16().ok_or(RecordError::Incomplete)?;
        let len = r.u16().ok_or(RecordError::Incomplete)?;
        let body = r.take(usize::from(len)).ok_or(RecordError::Incomplete)?;
        let critical = raw_type & CRITICAL != 0;
        let t = raw_type & !CRITICAL;
        use record_type::*;
        Ok(match t {
            END_OF_MESSAGE if body.is_empty() => Record::EndOfMessage,
            END_OF_MESSAGE => return Err(RecordError::Malformed(t)),
            NEXT_PROTOCOL => Record::NextProtocol(u16_list(body, t)?),
            ERROR => Record::Error(single_u16(body, t)?),
            WARNING => Record::Warning(single_u16(body, t)?),
            AEAD_ALGORITHM => Record::Aead(u16_list(body, t)?),
            NEW_COOKIE => Record::NewCookie(body.to_vec()),
            SERVER => Record::Server(
                std::str::from_utf8(body)
                    .ok()
                    .filter(|s| s.is_ascii())
                    .ok_or(RecordError::Malformed(t))?
                    .to_owned(),
            ),
            PORT => Record::Port(single_u16(body, t)?),
            // chrony answers a non-empty one with Bad Request.
            COMPLIANT_128GCM_EXPORT if body.is_empty() => Record::Compliant128GcmExport,
            COMPLIANT_128GCM_EXPORT => return Err(RecordError::Malformed(t)),
            _ => Record::Unknown {
                critical,
                record_type: t,
                body: body.to_vec(),
            },
        })
    }

    /// Appends the record. Records 0-3 are always sent critical (RFC 8915,
    /// section 4.1); chrony refuses a Next Protocol record without the bit.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use record_type::*;
        let mut put = |t: u16, critical: bool, body: &[u8]| {
            let t = if critical { t | CRITICAL } else { t };
            out.extend_from_slice(&t.to_be_bytes());
            // Bodies are bounded by the callers (names, cookies, short lists).
            let len = u16::try_from(body.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(body.get(..usize::from(len)).unwrap_or(body));
        };
        let list = |v: &[u16]| v.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
        match self {
            Record::EndOfMessage => put(END_OF_MESSAGE, true, &[]),
            Record::NextProtocol(p) => put(NEXT_PROTOCOL, true, &list(p)),
            Record::Error(c) => put(ERROR, true, &c.to_be_bytes()),
            Record::Warning(c) => put(WARNING, true, &c.to_be_bytes()),
            Record::Aead(a) => put(AEAD_ALGORITHM, false, &list(a)),
            Record::NewCookie(c) => put(NEW_COOKIE, false, c),
            Record::Server(s) => put(SERVER, false, s.as_bytes()),
            Record::Port(p) => put(PORT, false, &p.to_be_bytes()),
            Record::Compliant128GcmExport => put(COMPLIANT_128GCM_EXPORT, false, &[]),
            Record::Unknown {
                critical,
                record_type,
                body,
            } => put(*record_type & !CRITICAL, *critical, body),
        }
    }
}

/// Decodes a whole message: the records up to and including End of Message.
/// Bytes after End of Message are malformed input.
pub fn decode_message(buf: &[u8]) -> Result<Vec<Record>, RecordError> {
    let mut r = Reader::new(buf);
    let mut records = Vec::new();
    loop {
        let rec = Record::decode(&mut r)?;
        let end = rec == Record::EndOfMessage;
        records.push(rec);
        if end {
            if r.is_empty() {
                return Ok(records);
            }
            return Err(RecordError::Malformed(record_type::END_OF_MESSAGE));
        }
    }
}

pub fn encode_message(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        r.encode(&mut out);
    }
    out
}

/// What the server makes of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeRequest {
    pub protocols: Vec<u16>,
    /// The client's AEAD ids in its order of preference.
    pub aeads: Vec<u16>,
    /// The client sent chrony's record 1024: it derives AES-128-GCM-SIV
    /// keys with the compliant exporter context.
    pub compliant_128gcm_export: bool,
}

/// Why a request must be answered with an Error record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeRequestError {
    #[error("request incomplete")]
    Incomplete,
    #[error("unrecognized critical record type {0}")]
    UnrecognizedCritical(u16),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
}

impl KeRequestError {
    /// The Error record code that answers this failure (RFC 8915, 4.1.3).
    pub fn error_code(self) -> u16 {
        match self {
            KeRequestError::UnrecognizedCritical(_) => error_code::UNRECOGNIZED_CRITICAL_RECORD,
            _ => error_code::BAD_REQUEST,
        }
    }
}

/// A client request parsed as its bytes arrive: each record is decoded
/// once, when it is complete, so a client that trickles its request in tiny
/// TLS records costs work in proportion to its bytes, not to their square.
#[derive(Debug, Default)]
pub struct RequestParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already decoded as whole records.
    done: usize,
    protocols: Option<Vec<u16>>,
    aeads: Option<Vec<u16>>,
    compliant_128gcm_export: bool,
    ended: bool,
}

impl RequestParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes received so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Adds `bytes` and decodes every record they complete. `Incomplete`
    /// until End of Message has arrived; then the request, or the reason
    /// it must be answered with an Error record. Bytes after End of Message
    /// are malformed input.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<KeRequest, KeRequestError> {
        if self.ended {
            return Err(KeRequestError::BadRequest("data after End of Message"));
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let rest = self.buf.get(self.done..).unwrap_or_default();
            let mut r = Reader::new(rest);
            let rec = match Record::decode(&mut r) {
                Ok(rec) => rec,
                Err(RecordError::Incomplete) => return Err(KeRequestError::Incomplete),
                Err(RecordError::Malformed(_)) => {
                    return Err(KeRequestError::BadRequest("malformed record"))
                }
            };
            self.done += rest.len() - r.remaining();
            if rec == Record::EndOfMessage {
                self.ended = true;
                if self.done != self.buf.len() {
                    return Err(KeRequestError::BadRequest("malformed record"));
                }
                return self.finish();
            }
            self.record(rec)?;
        }
    }

    fn record(&mut self, rec: Record) -> Result<(), KeRequestError> {
        match rec {
            // 4.1.2: Next Protocol MUST appear exactly once. With no
            // protocol id it asks for nothing: chrony's server answers
            // Bad Request, and so do we.
            Record::NextProtocol(p) if p.is_empty() => {
                Err(KeRequestError::BadRequest("empty Next Protocol"))
            }
            Record::NextProtocol(p) if self.protocols.is_none() => {
                self.protocols = Some(p);
                Ok(())
            }
            Record::NextProtocol(_) => Err(KeRequestError::BadRequest("repeated Next Protocol")),
            // 4.1.5: AEAD Algorithm at most once.
            Record::Aead(a) if self.aeads.is_none() => {
                self.aeads = Some(a);
                Ok(())
            }
            Record::Aead(_) => Err(KeRequestError::BadRequest("repeated AEAD Algorithm")),
            Record::Compliant128GcmExport => {
                self.compliant_128gcm_export = true;
                Ok(())
            }
            Record::Error(_) | Record::Warning(_) => {
                Err(KeRequestError::BadRequest("client sent Error or Warning"))
            }
            Record::Unknown {
                critical: true,
                record_type,
                ..
            } => Err(KeRequestError::UnrecognizedCritical(record_type)),
            // Server and Port are requests the server may ignore; New
            // Cookie and unknown non-critical records are ignored.
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<KeRequest, KeRequestError> {
        let protocols = self
            .protocols
            .take()
            .ok_or(KeRequestError::BadRequest("no Next Protocol record"))?;
        let aeads = self.aeads.take().unwrap_or_default();
        if protocols.contains(&PROTOCOL_NTPV4) && aeads.is_empty() {
            return Err(KeRequestError::BadRequest(
                "NTPv4 requested without AEAD Algorithm",
            ));
        }
        Ok(KeRequest {
            protocols,
            aeads,
            compliant_128gcm_export: self.compliant_128gcm_export,
        })
    }
}

impl KeRequest {
    /// Parses a whole client request (RFC 8915, sections 4.1.2 and 4.1.5).
    pub fn parse(buf: &[u8]) -> Result<KeRequest, KeRequestError> {
        RequestParser::new().feed(buf)
    }

    /// The first of the client's AEADs that the server supports, honouring
    /// the client's order (RFC 8915, section 4.1.5).
    pub fn select_aead(&self, supported: &[AeadAlgorithm]) -> Option<AeadAlgorithm> {
        self.aeads
            .iter()
            .filter_map(|&id| AeadAlgorithm::from_id(id))
            .find(|a| supported.contains(a))
    }

    pub fn wants_ntpv4(&self) -> bool {
        self.protocols.contains(&PROTOCOL_NTPV4)
    }

    /// Whether the response to this request carries record 1024: only when
    /// AES-128-GCM-SIV is chosen and the client sent the record, as chrony's
    /// server does. A client that did not send it derives its keys with id
    /// 15 in the exporter context, so the server must too, and must not
    /// claim otherwise.
    pub fn echoes_compliant_export(&self, aead: AeadAlgorithm) -> bool {
        aead == AeadAlgorithm::AesGcmSiv128 && self.compliant_128gcm_export
    }
}

/// A successful server response, before encoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeResponse {
    /// `None` answers a request whose protocols we do not speak (empty record).
    pub protocol: Option<u16>,
    /// `None` is the empty AEAD record: no algorithm in common.
    pub aead: Option<AeadAlgorithm>,
    pub cookies: Vec<Vec<u8>>,
    pub server: Option<String>,
    pub port: Option<u16>,
    /// Send record 1024 after the AEAD record ([`KeRequest::echoes_compliant_export`]).
    pub compliant_128gcm_export: bool,
}

impl KeResponse {
    pub fn encode(&self) -> Vec<u8> {
        let mut records = vec![Record::NextProtocol(self.protocol.into_iter().collect())];
        if self.protocol.is_some() {
            records.push(Record::Aead(
                self.aead.map(AeadAlgorithm::id).into_iter().collect(),
            ));
            if self.compliant_128gcm_export && self.aead == Some(AeadAlgorithm::AesGcmSiv128) {
                records.push(Record::Compliant128GcmExport);
            }
        }
        if let Some(s) = &self.server {
            records.push(Record::Server(s.clone()));
        }
        if let Some(p) = self.port {
            records.push(Record::Port(p));
        }
        records.extend(self.cookies.iter().cloned().map(Record::NewCookie));
        records.push(Record::EndOfMessage);
        encode_message(&records)
    }

    /// An Error response (RFC 8915, section 4.1.3).
    pub fn error(code: u16) -> Vec<u8> {
        encode_message(&[Record::Error(code), Record::EndOfMessage])
    }
}

/// The client's view of a server response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeClientResult {
    pub aead: AeadAlgorithm,
    /// The server echoed record 1024: AEAD-30 keys use the compliant
    /// exporter context ([`exporter_aead`]).
    pub compliant_128gcm_export: bool,
    pub cookies: Vec<Vec<u8>>,
    pub server: Option<String>,
    pub port: Option<u16>,
}

/// Why a client gives up on a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeClientError {
    #[error("response incomplete")]
    Incomplete,
    #[error("malformed response: {0}")]
    Malformed(RecordError),
    #[error("server sent Error record {0}")]
    ServerError(u16),
    #[error("server sent Warning record {0}")]
    ServerWarning(u16),
    #[error("server does not offer NTPv4")]
    NoProtocol,
    #[error("no AEAD algorithm in common")]
    NoAead,
    #[error("server sent no cookies")]
    NoCookies,
    #[error("unrecognized critical record type {0}")]
    UnrecognizedCritical(u16),
}

/// A client request offering NTPv4 and `aeads` in preference order, with
/// record 1024 when AES-128-GCM-SIV is among them (as chrony 4.6.1 and
/// later send it).
pub fn client_request(aeads: &[AeadAlgorithm]) -> Vec<u8> {
    let mut records = vec![
        Record::NextProtocol(vec![PROTOCOL_NTPV4]),
        Record::Aead(aeads.iter().map(|a| a.id()).collect()),
    ];
    if aeads.contains(&AeadAlgorithm::AesGcmSiv128) {
        records.push(Record::Compliant128GcmExport);
    }
    records.push(Record::EndOfMessage);
    encode_message(&records)
}

/// Interprets a server response (RFC 8915, section 4.1).
pub fn parse_client_response(buf: &[u8]) -> Result<KeClientResult, KeClientError> {
    let records = decode_message(buf).map_err(|e| match e {
        RecordError::Incomplete => KeClientError::Incomplete,
        other => KeClientError::Malformed(other),
    })?;
    let (mut protocol_ok, mut aead, mut cookies, mut server, mut port) =
        (false, None, Vec::new(), None, None);
    let mut compliant = false;
    for rec in records {
        match rec {
            Record::Error(c) => return Err(KeClientError::ServerError(c)),
            Record::Warning(c) => return Err(KeClientError::ServerWarning(c)),
            Record::NextProtocol(p) => protocol_ok = p == [PROTOCOL_NTPV4],
            Record::Aead(a) => aead = a.first().copied().and_then(AeadAlgorithm::from_id),
            Record::NewCookie(c) => cookies.push(c),
            Record::Server(s) => server = Some(s),
            Record::Port(p) => port = Some(p),
            Record::Compliant128GcmExport => compliant = true,
            Record::Unknown {
                critical: true,
                record_type,
                ..
            } => return Err(KeClientError::UnrecognizedCritical(record_type)),
            _ => {}
        }
    }
    if !protocol_ok {
        return Err(KeClientError::NoProtocol);
    }
    let aead = aead.ok_or(KeClientError::NoAead)?;
    if cookies.is_empty() {
        return Err(KeClientError::NoCookies);
    }
    Ok(KeClientResult {
        aead,
        compliant_128gcm_export: compliant,
        cookies,
        server,
        port,
    })
}

/// ALPN protocol id of NTS-KE (RFC 8915, section 4).
pub const ALPN_NTSKE: &[u8] = b"ntske/1";

/// TLS exporter label and context (RFC 8915, section 5.1).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-network-time-security";

/// The AEAD whose id goes into the exporter context for keys of
/// `negotiated`: itself, except AES-128-GCM-SIV without record 1024, whose
/// keys (16 bytes each) are exported with id 15 in the context, as chrony
/// 4.4 to 4.6.0 derive them (chrony's server does the same for clients
/// that do not send the record).
pub fn exporter_aead(negotiated: AeadAlgorithm, compliant_128gcm_export: bool) -> AeadAlgorithm {
    if negotiated == AeadAlgorithm::AesGcmSiv128 && !compliant_128gcm_export {
        AeadAlgorithm::AesSivCmac256
    } else {
        negotiated
    }
}

/// Exporter context: protocol id, AEAD id, then 0 for c2s or 1 for s2c.
pub fn exporter_context(aead: AeadAlgorithm, server_to_client: bool) -> [u8; 5] {
    let [p0, p1] = PROTOCOL_NTPV4.to_be_bytes();
    let [a0, a1] = aead.id().to_be_bytes();
    [p0, p1, a0, a1, u8::from(server_to_client)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_client_request_bytes() {
        let req = client_request(&[AeadAlgorithm::AesSivCmac512, AeadAlgorithm::AesSivCmac256]);
        assert_eq!(
            hex::encode(&req),
            "80010002000000040004001100 0f80000000".replace(' ', "")
        );
        let parsed = KeRequest::parse(&req).unwrap();
        assert_eq!(
            parsed.select_aead(&AeadAlgorithm::ALL),
            Some(AeadAlgorithm::AesSivCmac512)
        );
        assert_eq!(
            parsed.select_aead(&[AeadAlgorithm::AesSivCmac256]),
            Some(AeadAlgorithm::AesSivCmac256)
        );
    }

    #[test]
    fn request_errors_map_to_codes() {
        let eom = [0x80, 0, 0, 0];
        let unknown_critical = [
            &[0x80, 0x63, 0, 0][..],
            &[0x80, 1, 0, 2, 0, 0],
            &[0, 4, 0, 2, 0, 15],
            &eom,
        ]
        .concat();
        let e = KeRequest::parse(&unknown_critical).unwrap_err();
        assert_eq!(e, KeRequestError::UnrecognizedCritical(0x63));
        assert_eq!(e.error_code(), 0);
        let no_next_protocol = [&[0, 4, 0, 2, 0, 15][..], &eom].concat();
        assert_eq!(
            KeRequest::parse(&no_next_protocol)
                .unwrap_err()
                .error_code(),
            1
        );
        // A Next Protocol record with no protocol id (chrony: Bad Request).
        let empty_next_protocol = [&[0x80, 1, 0, 0][..], &[0, 4, 0, 2, 0, 15], &eom].concat();
        assert_eq!(
            KeRequest::parse(&empty_next_protocol),
            Err(KeRequestError::BadRequest("empty Next Protocol"))
        );
        let no_aead = [&[0x80, 1, 0, 2, 0, 0][..], &eom].concat();
        assert_eq!(KeRequest::parse(&no_aead).unwrap_err().error_code(), 1);
        let odd_list = [&[0x80, 1, 0, 1, 0][..], &eom].concat();
        assert_eq!(KeRequest::parse(&odd_list).unwrap_err().error_code(), 1);
        let trailing = [&[0x80, 1, 0, 2, 0, 0][..], &[0, 4, 0, 2, 0, 15], &eom, &[0]].concat();
        assert_eq!(KeRequest::parse(&trailing).unwrap_err().error_code(), 1);
        assert_eq!(KeRequest::parse(&eom[..3]), Err(KeRequestError::Incomplete));
        // An unknown non-critical record is ignored.
        let extra = [
            &[0x80, 1, 0, 2, 0, 0][..],
            &[0, 0x63, 0, 1, 9],
            &[0, 4, 0, 2, 0, 15],
            &eom,
        ]
        .concat();
        assert!(KeRequest::parse(&extra).is_ok());
    }

    /// Fed in pieces of any size, the parser gives what it gives for the
    /// whole request, and errors surface as soon as their record is in.
    #[test]
    fn incremental_parsing_matches_whole_parsing() {
        let eom = [0x80u8, 0, 0, 0];
        let padding: Vec<u8> = [0u8, 0x63, 0, 8]
            .iter()
            .chain([1u8; 8].iter())
            .copied()
            .collect();
        let requests: Vec<Vec<u8>> = vec![
            [
                &[0x80u8, 1, 0, 2, 0, 0][..],
                &[0, 4, 0, 4, 0, 17, 0, 15],
                &eom,
            ]
            .concat(),
            [
                &[0x80u8, 1, 0, 2, 0, 0][..],
                &padding.repeat(100),
                &[0, 4, 0, 2, 0, 15],
                &eom,
            ]
            .concat(),
            [&[0x80u8, 0x63, 0, 0][..], &eom].concat(),
            [&[0x80u8, 1, 0, 0][..], &eom].concat(),
            [&[0, 4, 0, 2, 0, 15][..], &eom].concat(),
        ];
        for req in &requests {
            let whole = KeRequest::parse(req);
            for chunk in [1, 3, 4, 7, 1000] {
                let mut p = RequestParser::new();
                let mut got = Err(KeRequestError::Incomplete);
                for c in req.chunks(chunk) {
                    got = p.feed(c);
                    if got != Err(KeRequestError::Incomplete) {
                        break;
                    }
                }
                assert_eq!(got, whole, "chunks of {chunk}: {req:02x?}");
            }
        }
        // The request ends at End of Message: bytes in the same read are
        // malformed, bytes after it are refused too.
        let ok = [&[0x80u8, 1, 0, 2, 0, 0][..], &[0, 4, 0, 2, 0, 15], &eom].concat();
        assert!(RequestParser::new()
            .feed(&[&ok[..], &[9]].concat())
            .is_err());
        let mut p = RequestParser::new();
        assert!(p.feed(&ok).is_ok());
        assert!(p.feed(&[9]).is_err());
        let mut p = RequestParser::new();
        assert_eq!(p.feed(&[0x80, 0x63]), Err(KeRequestError::Incomplete));
        assert_eq!(
            p.feed(&[0, 0]),
            Err(KeRequestError::UnrecognizedCritical(0x63))
        );
    }

    #[test]
    fn no_common_aead_gives_empty_record() {
        let req = KeRequest::parse(&encode_message(&[
            Record::NextProtocol(vec![0]),
            Record::Aead(vec![31, 16, 1]),
            Record::EndOfMessage,
        ]))
        .unwrap();
        assert_eq!(req.select_aead(&AeadAlgorithm::ALL), None);
        let resp = KeResponse {
            protocol: Some(0),
            ..Default::default()
        };
        assert_eq!(
            hex::encode(resp.encode()),
            "80010002000000040000 80000000".replace(' ', "")
        );
        assert_eq!(
            parse_client_response(&resp.encode()),
            Err(KeClientError::NoAead)
        );
    }

    #[test]
    fn response_round_trip_and_client_view() {
        let resp = KeResponse {
            protocol: Some(0),
            aead: Some(AeadAlgorithm::AesSivCmac256),
            cookies: vec![vec![1; 100], vec![2; 100]],
            server: Some("ntp.example.".into()),
            port: Some(1123),
            compliant_128gcm_export: false,
        };
        let got = parse_client_response(&resp.encode()).unwrap();
        assert_eq!(got.aead, AeadAlgorithm::AesSivCmac256);
        assert_eq!(got.cookies.len(), 2);
        assert_eq!(got.server.as_deref(), Some("ntp.example."));
        assert_eq!(got.port, Some(1123));
        assert_eq!(
            parse_client_response(&KeResponse::error(1)),
            Err(KeClientError::ServerError(1))
        );
    }

    /// chrony's private record 1024 (nts_ke_server.c): an empty body sets
    /// the compliant export, a body is Bad Request, the critical bit does
    /// not matter; the server echoes it only with AEAD 30 and only when
    /// asked, and the client request carries it exactly when it offers 30.
    #[test]
    fn compliant_128gcm_export_record() {
        let gcm = AeadAlgorithm::AesGcmSiv128;
        let siv = AeadAlgorithm::AesSivCmac256;
        // A chrony 4.6.1+ request: NTPv4, AEADs [30, 15], record 1024.
        let req = client_request(&[gcm, siv]);
        assert_eq!(
            hex::encode(&req),
            "8001000200000004000400 1e000f 04000000 80000000".replace(' ', "")
        );
        let parsed = KeRequest::parse(&req).unwrap();
        assert!(parsed.compliant_128gcm_export);
        assert_eq!(parsed.select_aead(&AeadAlgorithm::ALL), Some(gcm));
        assert!(parsed.echoes_compliant_export(gcm));
        assert!(!parsed.echoes_compliant_export(siv));
        // Critical, it is still the same record.
        let critical =
            hex::decode("8001000200008004000400 1e000f 84000000 80000000".replace(' ', ""))
                .unwrap();
        assert!(KeRequest::parse(&critical).unwrap().compliant_128gcm_export);
        // With a body: Bad Request, as chrony answers.
        let bodied =
            hex::decode("8001000200008004000400 1e000f 040000020000 80000000".replace(' ', ""))
                .unwrap();
        assert_eq!(
            KeRequest::parse(&bodied).map_err(KeRequestError::error_code),
            Err(error_code::BAD_REQUEST)
        );
        // A chrony 4.4-4.6.0 request: [30, 15] without the record.
        let old = encode_message(&[
            Record::NextProtocol(vec![PROTOCOL_NTPV4]),
            Record::Aead(vec![30, 15]),
            Record::EndOfMessage,
        ]);
        let parsed = KeRequest::parse(&old).unwrap();
        assert!(!parsed.compliant_128gcm_export);
        assert!(!parsed.echoes_compliant_export(gcm));
        // Offering no 30, no record.
        assert!(
            !KeRequest::parse(&client_request(&[siv]))
                .unwrap()
                .compliant_128gcm_export
        );

        let response = |aead, compliant| KeResponse {
            protocol: Some(0),
            aead: Some(aead),
            cookies: vec![vec![7; 68]],
            compliant_128gcm_export: compliant,
            ..Default::default()
        };
        let with = response(gcm, true).encode();
        assert_eq!(hex::encode(&with[..16]), "80010002000000040002001e04000000");
        let got = parse_client_response(&with).unwrap();
        assert!(got.compliant_128gcm_export);
        let without = response(gcm, false).encode();
        assert!(
            !parse_client_response(&without)
                .unwrap()
                .compliant_128gcm_export
        );
        assert_eq!(without.len() + 4, with.len());
        // Never with another AEAD, whatever the flag says.
        let siv_resp = response(siv, true).encode();
        assert!(
            !parse_client_response(&siv_resp)
                .unwrap()
                .compliant_128gcm_export
        );
        assert_eq!(siv_resp.len(), without.len());
    }

    /// The exporter context of each kind of AEAD-30 session: id 30 with the
    /// record, id 15 without (what chrony 4.4-4.6.0 clients derive), and
    /// the AES-SIV ids unchanged either way.
    #[test]
    fn exporter_context_of_aead_30() {
        let gcm = AeadAlgorithm::AesGcmSiv128;
        assert_eq!(
            exporter_context(exporter_aead(gcm, true), false),
            [0, 0, 0, 30, 0]
        );
        assert_eq!(
            exporter_context(exporter_aead(gcm, true), true),
            [0, 0, 0, 30, 1]
        );
        assert_eq!(
            exporter_context(exporter_aead(gcm, false), false),
            [0, 0, 0, 15, 0]
        );
        assert_eq!(
            exporter_context(exporter_aead(gcm, false), true),
            [0, 0, 0, 15, 1]
        );
        for alg in [AeadAlgorithm::AesSivCmac256, AeadAlgorithm::AesSivCmac512] {
            for compliant in [false, true] {
                assert_eq!(exporter_aead(alg, compliant), alg);
            }
        }
    }

    #[test]
    fn exporter_context_bytes() {
        assert_eq!(
            exporter_context(AeadAlgorithm::AesSivCmac256, false),
            [0, 0, 0, 15, 0]
        );
        assert_eq!(
            exporter_context(AeadAlgorithm::AesSivCmac512, true),
            [0, 0, 0, 17, 1]
        );
    }
}
