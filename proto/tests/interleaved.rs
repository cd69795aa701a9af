//! The server's side of interleaved mode (RFC 9769), rule by rule: which
//! requests get an interleaved reply, what it carries, and that a saved
//! pair goes out once.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use std::collections::HashMap;

use common::*;
use nts_proto::client::{NtsClient, Pending};
use nts_proto::ef::field_type;
use nts_proto::reader::Reader;
use nts_proto::{
    Action, AeadAlgorithm, Basic, Interleave, NtpHeader, NtpTimestamp, ReplyKind, Server,
};

/// Saved transmit timestamps in a map, as the worker's table keeps them:
/// each used once. Records every lookup.
#[derive(Default)]
struct Saved {
    pairs: HashMap<u64, NtpTimestamp>,
    asked: Vec<(NtpTimestamp, NtpTimestamp)>,
}

impl Interleave for Saved {
    fn exchange(&mut self, origin: NtpTimestamp, receive: NtpTimestamp) -> Option<NtpTimestamp> {
        self.asked.push((origin, receive));
        self.pairs.remove(&origin.0)
    }
}

/// A previous reply's receive timestamp (marked: lowest bit set) and the
/// kernel's transmit timestamp of that reply.
const PREV_RX: NtpTimestamp = NtpTimestamp(0xe9a0_1233_0000_1001);
const PREV_TX: NtpTimestamp = NtpTimestamp(0xe9a0_1233_0000_2002);
/// The client's receive time of the previous reply (its T4).
const CLIENT_RX: NtpTimestamp = NtpTimestamp(0xe9a0_1233_0001_0000);
const T3: NtpTimestamp = NtpTimestamp(0xe9a0_1234_8000_4000);

/// A plain request with the given origin, receive and transmit fields.
fn request(
    version: u8,
    origin: NtpTimestamp,
    receive: NtpTimestamp,
    transmit: NtpTimestamp,
) -> Vec<u8> {
    let mut h = header(first_byte(version, 3), transmit);
    h[24..32].copy_from_slice(&origin.0.to_be_bytes());
    h[32..40].copy_from_slice(&receive.0.to_be_bytes());
    h
}

fn decode(reply: &[u8]) -> NtpHeader {
    NtpHeader::decode(&mut Reader::new(reply)).unwrap()
}

fn answer(saved: &mut Saved, req: &[u8]) -> (Action, Vec<u8>) {
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let mut out = vec![0u8; 2048];
    let action =
        server.handle_interleaved(T2, || T3, saved, req, &mut out, &mut Counter::default());
    let len = match action {
        Action::Reply { len, .. } => len,
        Action::Ignore(_) => 0,
    };
    out.truncate(len);
    (action, out)
}

fn saved_pair() -> Saved {
    let mut s = Saved::default();
    s.pairs.insert(PREV_RX.0, PREV_TX);
    s
}

/// Every reply marks its timestamps: receive odd, transmit even, so they
/// never match and only an odd origin needs a lookup.
#[test]
fn every_reply_marks_receive_odd_and_transmit_even() {
    let mut saved = Saved::default();
    let (_, out) = answer(
        &mut saved,
        &request(4, NtpTimestamp(0), NtpTimestamp(0), T1),
    );
    let h = decode(&out);
    assert_eq!(h.receive, NtpTimestamp(T2.0 | 1));
    assert_eq!(h.transmit, NtpTimestamp(T3.0 & !1));
    assert_eq!(h.origin, T1);
}

/// A basic request (origin zero, or even, or a client that copies its
/// transmit timestamp into the receive field) is never interleaved, and
/// costs no lookup, even when a pair is saved under its origin.
#[test]
fn a_basic_request_never_gets_an_interleaved_reply() {
    for (version, origin, receive) in [
        (4, NtpTimestamp(0), CLIENT_RX),
        (4, NtpTimestamp(PREV_RX.0 & !1), CLIENT_RX),
        (4, PREV_RX, T1),
        (3, PREV_RX, CLIENT_RX),
    ] {
        let mut saved = saved_pair();
        saved.pairs.insert(origin.0, PREV_TX);
        let (action, out) = answer(&mut saved, &request(version, origin, receive, T1));
        assert!(matches!(
            action,
            Action::Reply {
                kind: ReplyKind::Plain,
                len: 48
            }
        ));
        let h = decode(&out);
        assert_eq!(
            (h.origin, h.transmit),
            (T1, NtpTimestamp(T3.0 & !1)),
            "v{version} {origin:?}"
        );
        assert!(saved.asked.is_empty(), "looked up: {:?}", saved.asked);
        assert!(saved.pairs.contains_key(&PREV_RX.0), "a pair was used up");
    }
}

/// A request in interleaved form whose origin names a saved pair gets the
/// interleaved reply: origin = the request's receive timestamp, receive =
/// this request's, transmit = the saved one; and the server saves under
/// this reply's receive timestamp.
#[test]
fn a_saved_pair_gives_an_interleaved_reply() {
    let mut saved = saved_pair();
    let (action, out) = answer(&mut saved, &request(4, PREV_RX, CLIENT_RX, T1));
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Plain,
            len: 48
        }
    ));
    let h = decode(&out);
    assert_eq!(h.origin, CLIENT_RX);
    assert_eq!(h.receive, NtpTimestamp(T2.0 | 1));
    assert_eq!(h.transmit, PREV_TX);
    assert_eq!(saved.asked, [(PREV_RX, NtpTimestamp(T2.0 | 1))]);
}

/// A pair is used once: the same request again gets a basic reply.
#[test]
fn a_pair_is_used_once() {
    let mut saved = saved_pair();
    let req = request(4, PREV_RX, CLIENT_RX, T1);
    let (_, first) = answer(&mut saved, &req);
    assert_eq!(decode(&first).transmit, PREV_TX);
    let (_, again) = answer(&mut saved, &req);
    let h = decode(&again);
    assert_eq!((h.origin, h.transmit), (T1, NtpTimestamp(T3.0 & !1)));
}

/// An origin the server never saved (stale: dropped from the table, or
/// made up) gets a basic reply.
#[test]
fn an_unknown_or_stale_origin_gets_a_basic_reply() {
    let mut saved = saved_pair();
    let stale = NtpTimestamp(PREV_RX.0 - 0x1_0000_0000);
    let (_, out) = answer(&mut saved, &request(4, stale, CLIENT_RX, T1));
    let h = decode(&out);
    assert_eq!((h.origin, h.transmit), (T1, NtpTimestamp(T3.0 & !1)));
    assert_eq!(saved.asked.len(), 1, "it was looked up");
}

/// Without interleaved mode (`handle_timed`), nothing is marked and
/// nothing is looked up: the replies are today's.
#[test]
fn basic_mode_marks_nothing() {
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let mut out = [0u8; 64];
    let req = request(4, PREV_RX, CLIENT_RX, T1);
    let a = server.handle_timed(T2, || T3, &req, &mut out, &mut Counter::default());
    assert!(matches!(a, Action::Reply { len: 48, .. }));
    let h = decode(&out[..48]);
    assert_eq!((h.origin, h.receive, h.transmit), (T1, T2, T3));
    assert_eq!(Basic.exchange(PREV_RX, T2), None);
}

/// An NTS request in interleaved form, built field by field like chrony's
/// `nts xleave` requests.
fn nts_interleaved(origin: NtpTimestamp, auth_ok: bool) -> (Vec<u8>, NtsClient) {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let cookie = cookie(&ring, &keys, 0x33);
    let mut pkt = request(4, origin, CLIENT_RX, T1);
    push_field(&mut pkt, field_type::UNIQUE_IDENTIFIER, &[0xa0; 32]);
    push_field(&mut pkt, field_type::COOKIE, &cookie);
    let sign = if auth_ok {
        keys.c2s.clone()
    } else {
        session(AeadAlgorithm::AesSivCmac512).c2s
    };
    push_authenticator(&mut pkt, &sign, &[0xc0; 16], &[]);
    (pkt, NtsClient::new(keys, vec![cookie]))
}

/// NTS: the interleaved reply authenticates, with the request's receive
/// timestamp as origin and the saved transmit timestamp, and is no longer
/// than its request.
#[test]
fn an_nts_request_gets_an_authenticated_interleaved_reply() {
    let (req, mut client) = nts_interleaved(PREV_RX, true);
    let mut saved = saved_pair();
    let (action, out) = answer(&mut saved, &req);
    let Action::Reply {
        kind: ReplyKind::Nts,
        len,
    } = action
    else {
        panic!("{action:?}");
    };
    assert!(len <= req.len());
    let pending = Pending {
        unique_id: [0xa0; 32],
        transmit: CLIENT_RX,
    };
    let v = client.verify_reply(&out, &pending).expect("authenticated");
    assert_eq!(v.header.transmit, PREV_TX);
    assert_eq!(v.header.receive, NtpTimestamp(T2.0 | 1));
    assert_eq!(v.cookies, 1);
}

/// A request that fails authentication gets its NAK, never interleaved,
/// and cannot use up the pair saved for the real client.
#[test]
fn an_unauthenticated_request_uses_up_nothing() {
    let (req, _) = nts_interleaved(PREV_RX, false);
    let mut saved = saved_pair();
    let (action, out) = answer(&mut saved, &req);
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Nak(_),
            ..
        }
    ));
    assert!(out.len() <= req.len());
    assert_eq!(decode(&out).origin, T1);
    assert!(saved.asked.is_empty());
    assert!(saved.pairs.contains_key(&PREV_RX.0));
}
