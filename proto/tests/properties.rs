//! Property tests: the parsers never panic on arbitrary bytes, the server
//! never answers with more bytes than it received, and every codec round-trips.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::*;
use nts_proto::client::{NtsClient, Pending};
use nts_proto::cookie::{open_cookie, seal_cookie, MAX_COOKIE_LEN};
use nts_proto::ef::{field_len, write_field, Authenticator, Fields};
use nts_proto::ke::{self, KeRequest, Record};
use nts_proto::packet::Mode;
use nts_proto::reader::{Reader, Writer};
use nts_proto::{
    Action, AeadAlgorithm, AeadKey, Leap, NtpHeader, NtpShort, NtpTimestamp, Server, SessionKeys,
};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn alg() -> impl Strategy<Value = AeadAlgorithm> {
    prop_oneof![
        Just(AeadAlgorithm::AesSivCmac256),
        Just(AeadAlgorithm::AesSivCmac512)
    ]
}

/// A valid NTS request from the real client, its pending state and the
/// client that sent it.
fn valid_request(
    alg: AeadAlgorithm,
    placeholders: usize,
    random: [u8; 48],
) -> (Vec<u8>, Pending, NtsClient) {
    let ring = one_key();
    let keys = session(alg);
    let mut client = NtsClient::new(keys.clone(), vec![cookie(&ring, &keys, random[0])]);
    let mut out = [0u8; 2048];
    let (len, pending) = client
        .build_request(T1, &random, placeholders + 1, &mut out)
        .unwrap();
    (out[..len].to_vec(), pending, client)
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Extend(Vec<u8>),
    Splice(Index, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Set(i, x)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => bytes(200).prop_map(Mutation::Extend),
        1 => (any::<Index>(), bytes(40)).prop_map(|(i, b)| Mutation::Splice(i, b)),
    ]
}

fn apply(mut pkt: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip(i, x) if !pkt.is_empty() => {
                let i = i.index(pkt.len());
                pkt[i] ^= x;
            }
            Mutation::Set(i, x) if !pkt.is_empty() => {
                let i = i.index(pkt.len());
                pkt[i] = *x;
            }
            Mutation::Truncate(i) => pkt.truncate(i.index(pkt.len() + 1)),
            Mutation::Extend(b) => pkt.extend_from_slice(b),
            Mutation::Splice(i, b) => {
                let i = i.index(pkt.len() + 1);
                pkt.splice(i..i, b.iter().copied());
            }
            _ => {}
        }
        pkt.truncate(1500);
    }
    pkt
}

/// A valid request with a few mutations applied.
fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
    (alg(), 0..8usize, any::<[u8; 48]>(), vec(mutation(), 0..4))
        .prop_map(|(alg, p, random, m)| apply(valid_request(alg, p, random).0, &m))
}

/// Random bytes, random bytes behind a valid client header, or a mutated
/// valid request.
fn any_request() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(1500),
        bytes(1452).prop_map(|b| {
            let mut pkt = header(first_byte(4, 3), T1);
            pkt.extend_from_slice(&b);
            pkt
        }),
        mutated_request(),
    ]
}

/// Handles `request` with a 2048-byte buffer and checks the reply bound.
fn handle_checked(request: &[u8], rng: u8) -> Result<Option<Vec<u8>>, TestCaseError> {
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let mut reply = [0u8; 2048];
    match server.handle(T2, request, &mut reply, &mut Counter(rng)) {
        Action::Reply { len, .. } => {
            prop_assert!(len <= request.len(), "{len} > {}", request.len());
            prop_assert!(len >= 48);
            Ok(Some(reply[..len].to_vec()))
        }
        Action::Ignore(_) => Ok(None),
    }
}

fn leap(bits: u8) -> Leap {
    match bits & 3 {
        0 => Leap::NoWarning,
        1 => Leap::InsertSecond,
        2 => Leap::DeleteSecond,
        _ => Leap::Unsynchronized,
    }
}

fn mode(bits: u8) -> Mode {
    match bits & 7 {
        3 => Mode::Client,
        4 => Mode::Server,
        m => Mode::Other(m),
    }
}

prop_compose! {
    fn ntp_header()(
        first in any::<u8>(),
        stratum in any::<u8>(),
        poll in any::<i8>(),
        precision in any::<i8>(),
        delay in any::<u32>(),
        dispersion in any::<u32>(),
        reference_id in any::<[u8; 4]>(),
        t in any::<[u64; 4]>(),
    ) -> NtpHeader {
        NtpHeader {
            leap: leap(first >> 6),
            version: (first >> 3) & 7,
            mode: mode(first),
            stratum,
            poll,
            precision,
            root_delay: NtpShort(delay),
            root_dispersion: NtpShort(dispersion),
            reference_id,
            reference_time: NtpTimestamp(t[0]),
            origin: NtpTimestamp(t[1]),
            receive: NtpTimestamp(t[2]),
            transmit: NtpTimestamp(t[3]),
        }
    }
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        Just(Record::EndOfMessage),
        vec(any::<u16>(), 0..20).prop_map(Record::NextProtocol),
        any::<u16>().prop_map(Record::Error),
        any::<u16>().prop_map(Record::Warning),
        vec(any::<u16>(), 0..20).prop_map(Record::Aead),
        bytes(1000).prop_map(Record::NewCookie),
        "[ -~]{0,64}".prop_map(Record::Server),
        any::<u16>().prop_map(Record::Port),
        (any::<bool>(), 8..0x8000u16, bytes(300)).prop_map(|(critical, record_type, body)| {
            Record::Unknown {
                critical,
                record_type,
                body,
            }
        }),
    ]
}

/// Records other than End of Message, so a list of them plus one End of
/// Message is a whole message.
fn body_record() -> impl Strategy<Value = Record> {
    record().prop_filter("not End of Message", |r| *r != Record::EndOfMessage)
}

fn session_keys() -> impl Strategy<Value = SessionKeys> {
    (alg(), any::<[u8; 64]>(), any::<[u8; 64]>()).prop_map(|(alg, c2s, s2c)| {
        let n = alg.key_len();
        SessionKeys {
            c2s: AeadKey::new(alg, &c2s[..n]).unwrap(),
            s2c: AeadKey::new(alg, &s2c[..n]).unwrap(),
        }
    })
}

// Never panics.
proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn header_decode_is_total_and_lossless(b in bytes(100)) {
        match NtpHeader::decode(&mut Reader::new(&b)) {
            Some(h) => prop_assert_eq!(&h.to_bytes()[..], &b[..48]),
            None => prop_assert!(b.len() < 48),
        }
    }

    #[test]
    fn fields_iteration_is_total(b in bytes(600), typed in any::<bool>()) {
        // Half the time, make the input start with a plausible field header.
        let mut b = b;
        if typed && b.len() >= 4 {
            let len = u16::try_from(b.len().min(0xfffc) & !3).unwrap();
            b[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let mut rebuilt = Vec::new();
        let mut errors = 0;
        for f in Fields::new(&b, 48) {
            prop_assert_eq!(errors, 0, "nothing after an error");
            match f {
                Ok(f) => {
                    prop_assert_eq!(f.offset, 48 + rebuilt.len());
                    prop_assert!(f.body.len() >= 12 && f.body.len() % 4 == 0);
                    rebuilt.extend_from_slice(&f.field_type.to_be_bytes());
                    rebuilt.extend_from_slice(&u16::try_from(f.body.len() + 4).unwrap().to_be_bytes());
                    rebuilt.extend_from_slice(f.body);
                }
                Err(_) => errors += 1,
            }
        }
        // The fields that parsed are exactly a prefix of the input, and the
        // whole input unless an error stopped the iteration.
        prop_assert_eq!(&b[..rebuilt.len()], &rebuilt[..]);
        prop_assert_eq!(errors == 0, rebuilt.len() == b.len());
    }

    #[test]
    fn authenticator_decode_is_total(b in bytes(300)) {
        if let Some(a) = Authenticator::decode(&b) {
            prop_assert!(Authenticator::body_len(a.nonce.len(), a.ciphertext.len()) <= b.len());
        }
    }

    #[test]
    fn ke_decoders_are_total(b in bytes(600)) {
        let mut r = Reader::new(&b);
        while Record::decode(&mut r).is_ok() {}
        if let Ok(records) = ke::decode_message(&b) {
            prop_assert_eq!(records.last(), Some(&Record::EndOfMessage));
            // Decoding normalises (critical bits of known types), so a second
            // pass must give the same records.
            prop_assert_eq!(ke::decode_message(&ke::encode_message(&records)), Ok(records));
        }
        let _ = KeRequest::parse(&b);
        let _ = ke::parse_client_response(&b);
    }

    #[test]
    fn ke_decoders_are_total_on_record_soup(records in vec(record(), 0..8), cut in any::<Index>()) {
        // Valid records in any order, cut anywhere: exercises the message
        // logic rather than the framing.
        let b = ke::encode_message(&records);
        for b in [&b[..], &b[..cut.index(b.len() + 1)]] {
            let _ = ke::decode_message(b);
            let _ = KeRequest::parse(b);
            let _ = ke::parse_client_response(b);
        }
    }

    /// The server's incremental request parser, fed in pieces of any size,
    /// decides as the whole-message parser does (the property the
    /// `ke_request` fuzz target checks too).
    #[test]
    fn ke_request_parsing_does_not_depend_on_chunking(
        records in vec(record(), 0..8),
        raw in bytes(64),
        chunk in 1..40usize,
        soup in any::<bool>(),
    ) {
        let b = if soup { ke::encode_message(&records) } else { raw };
        let whole = KeRequest::parse(&b);
        let mut p = ke::RequestParser::new();
        let mut got = Err(ke::KeRequestError::Incomplete);
        let mut used = 0;
        for piece in b.chunks(chunk) {
            used += piece.len();
            got = p.feed(piece);
            if got != Err(ke::KeRequestError::Incomplete) {
                break;
            }
        }
        if used == b.len() {
            prop_assert_eq!(got, whole);
        }
    }

    #[test]
    fn open_cookie_is_total(b in bytes(300), scratch_len in 0..200usize) {
        let ring = one_key();
        let mut scratch = vec![0u8; scratch_len];
        let _ = open_cookie(&ring, &b, &mut scratch);
        let mut scratch = [0u8; MAX_COOKIE_LEN];
        // Random bytes never authenticate (a 2^-128 chance aside).
        prop_assert!(open_cookie(&ring, &b, &mut scratch).is_err());
    }

    #[test]
    fn verify_reply_is_total(b in bytes(1500), alg in alg(), uid in any::<[u8; 32]>()) {
        let mut client = NtsClient::new(session(alg), vec![vec![0; 100]]);
        let pending = Pending { unique_id: uid, transmit: T1 };
        prop_assert!(client.verify_reply(&b, &pending).is_err());
    }
}

// The server: never panics, never amplifies.
proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn handle_never_panics_nor_amplifies(request in any_request(), rng in any::<u8>()) {
        handle_checked(&request, rng)?;
    }

    /// With interleaved mode and a store that has a pair for every
    /// origin, still no panic and no reply longer than its request, in
    /// any buffer.
    #[test]
    fn interleaved_handle_never_panics_nor_amplifies(
        request in any_request(),
        n in 0..1600usize,
        saved in any::<u64>(),
    ) {
        struct Always(u64);
        impl nts_proto::Interleave for Always {
            fn exchange(&mut self, _: NtpTimestamp, _: NtpTimestamp) -> Option<NtpTimestamp> {
                Some(NtpTimestamp(self.0))
            }
        }
        let ring = one_key();
        let sys = system();
        let server = Server { keys: &ring, system: &sys };
        let mut reply = vec![0u8; n];
        let action = server.handle_interleaved(
            T2, || T2, &mut Always(saved), &request, &mut reply, &mut Counter(0));
        if let Action::Reply { len, .. } = action {
            prop_assert!(len <= request.len().min(n));
        }
    }

    #[test]
    fn handle_respects_small_reply_buffers(request in any_request(), n in 0..1600usize) {
        let ring = one_key();
        let sys = system();
        let server = Server { keys: &ring, system: &sys };
        let mut reply = vec![0u8; n];
        if let Action::Reply { len, .. } = server.handle(T2, &request, &mut reply, &mut Counter(0)) {
            prop_assert!(len <= request.len().min(n));
        }
    }

    #[test]
    fn client_survives_mutated_replies(
        alg in alg(),
        placeholders in 0..8usize,
        random in any::<[u8; 48]>(),
        mutations in vec(mutation(), 1..4),
    ) {
        let (request, pending, mut client) = valid_request(alg, placeholders, random);
        let reply = handle_checked(&request, random[1])?.unwrap();
        let mutated = apply(reply.clone(), &mutations);
        let accepted = client.verify_reply(&mutated, &pending);
        if mutated.len() >= reply.len() && mutated[..reply.len()] != reply[..] {
            // A change inside the authenticated reply must be caught; bytes
            // appended after it are ignored.
            prop_assert!(accepted.is_err());
        }
        prop_assert_eq!(client.verify_reply(&reply, &pending).map(|v| v.cookies), Ok(placeholders + 1));
    }
}

// Round trips.
proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn header_round_trips(h in ntp_header()) {
        let mut buf = [0u8; 60];
        let mut w = Writer::new(&mut buf);
        h.encode(&mut w).unwrap();
        prop_assert_eq!(w.position(), 48);
        prop_assert_eq!(NtpHeader::decode(&mut Reader::new(&buf)), Some(h));
        let mut short = [0u8; 47];
        prop_assert!(h.encode(&mut Writer::new(&mut short)).is_err());
    }

    #[test]
    fn record_round_trips(r in record()) {
        let mut out = Vec::new();
        r.encode(&mut out);
        let mut reader = Reader::new(&out);
        prop_assert_eq!(Record::decode(&mut reader), Ok(r));
        prop_assert!(reader.is_empty());
        // Every prefix is incomplete, never an error or another record.
        for n in 0..out.len() {
            prop_assert_eq!(
                Record::decode(&mut Reader::new(&out[..n])),
                Err(ke::RecordError::Incomplete)
            );
        }
    }

    #[test]
    fn message_round_trips(mut records in vec(body_record(), 0..10)) {
        records.push(Record::EndOfMessage);
        let b = ke::encode_message(&records);
        prop_assert_eq!(ke::decode_message(&b), Ok(records));
    }

    #[test]
    fn extension_fields_round_trip(fields in vec((any::<u16>(), bytes(300)), 0..6)) {
        let mut buf = vec![0xa5u8; 2000];
        let mut w = Writer::new(&mut buf);
        for (t, body) in &fields {
            write_field(&mut w, *t, body).unwrap();
        }
        let n = w.position();
        prop_assert_eq!(n, fields.iter().map(|(_, b)| field_len(b.len())).sum::<usize>());
        let parsed: Vec<_> = Fields::new(&buf[..n], 48).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(parsed.len(), fields.len());
        for (f, (t, body)) in parsed.iter().zip(&fields) {
            prop_assert_eq!(f.field_type, *t);
            prop_assert_eq!(f.body.len(), field_len(body.len()) - 4);
            prop_assert_eq!(&f.body[..body.len()], &body[..]);
            prop_assert!(f.body[body.len()..].iter().all(|&b| b == 0), "zero padding");
        }
    }

    #[test]
    fn cookie_round_trips(
        keys in session_keys(),
        master in any::<[u8; 32]>(),
        key_id in any::<u32>(),
        nonce in any::<[u8; 16]>(),
        flip in any::<(Index, u8)>(),
    ) {
        let ring = one_key_with(key_id, master);
        let mut out = [0u8; MAX_COOKIE_LEN];
        let n = seal_cookie(key_id, ring.key(), &nonce, &keys, &mut out).unwrap();
        prop_assert_eq!(n, nts_proto::cookie::cookie_len(keys.algorithm()));
        let cookie = &out[..n];
        let mut scratch = [0u8; MAX_COOKIE_LEN];
        prop_assert_eq!(open_cookie(&ring, cookie, &mut scratch), Ok(keys.clone()));
        // The scratch buffer (tag, then plaintext) does not keep the keys.
        prop_assert!(scratch[16..n - 20].iter().all(|&b| b == 0));
        let mut bad = cookie.to_vec();
        let (at, x) = flip;
        bad[at.index(n)] ^= x.max(1);
        prop_assert!(open_cookie(&ring, &bad, &mut scratch).is_err());
        // Too small an output buffer is an error, not a panic.
        let mut small = vec![0u8; n - 1];
        prop_assert!(seal_cookie(key_id, ring.key(), &nonce, &keys, &mut small).is_err());
    }
}
