//! Whole exchanges between the in-memory client and server, every NAK and
//! drop path, and known-answer vectors for a cookie and an NTS request/reply.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::*;
use nts_proto::client::{ClientError, NtsClient, Pending};
use nts_proto::cookie::{cookie_len, open_cookie, MAX_COOKIE_LEN};
use nts_proto::ef::{field_type, Authenticator, Fields};
use nts_proto::packet::Mode;
use nts_proto::reader::Reader;
use nts_proto::{
    Action, AeadAlgorithm, AeadKey, DropReason, Leap, NakReason, NtpHeader, NtpTimestamp,
    ReplyKind, Server, SessionKeys, SingleKey,
};

const TYPE_UID: u16 = field_type::UNIQUE_IDENTIFIER;
const TYPE_COOKIE: u16 = field_type::COOKIE;
const TYPE_PLACEHOLDER: u16 = field_type::COOKIE_PLACEHOLDER;
const TYPE_AUTH: u16 = field_type::AUTHENTICATOR;

/// Runs `handle` with a 2048-byte reply buffer; returns the action and the
/// reply bytes (empty when ignored).
fn serve(ring: &SingleKey, request: &[u8], rng: &mut Counter) -> (Action, Vec<u8>) {
    let sys = system();
    let server = Server {
        keys: ring,
        system: &sys,
    };
    let mut reply = [0u8; 2048];
    let action = server.handle(T2, request, &mut reply, rng);
    let bytes = match action {
        Action::Reply { len, .. } => {
            assert!(
                len <= request.len(),
                "amplification: {len} > {}",
                request.len()
            );
            reply[..len].to_vec()
        }
        Action::Ignore(_) => Vec::new(),
    };
    (action, bytes)
}

fn fields(pkt: &[u8]) -> Vec<(u16, Vec<u8>)> {
    Fields::new(&pkt[48..], 48)
        .map(|f| f.map(|f| (f.field_type, f.body.to_vec())).unwrap())
        .collect()
}

/// Decrypts an NTS reply with `s2c` and returns the cookie bodies inside.
fn reply_cookies(reply: &[u8], s2c: &AeadKey) -> Vec<Vec<u8>> {
    let auth = Fields::new(&reply[48..], 48)
        .map(Result::unwrap)
        .find(|f| f.field_type == TYPE_AUTH)
        .unwrap();
    let a = Authenticator::decode(auth.body).unwrap();
    let mut buf = a.ciphertext.to_vec();
    let plain = s2c.open(&reply[..auth.offset], a.nonce, &mut buf).unwrap();
    Fields::new(plain, 0)
        .map(Result::unwrap)
        .map(|f| {
            assert_eq!(f.field_type, TYPE_COOKIE);
            f.body.to_vec()
        })
        .collect()
}

fn client_with(alg: AeadAlgorithm, ring: &SingleKey, n: u8) -> (NtsClient, SessionKeys) {
    let keys = session(alg);
    let cookies = (0..n).map(|i| cookie(ring, &keys, i)).collect();
    (NtsClient::new(keys.clone(), cookies), keys)
}

fn full_exchange(alg: AeadAlgorithm) {
    let ring = one_key();
    let sys = system();
    let (mut client, keys) = client_with(alg, &ring, 2);
    let mut rng = Counter::default();
    let mut scratch = [0u8; MAX_COOKIE_LEN];
    // Enough rounds to spend both cookies from NTS-KE and then only cookies
    // the server issued.
    for round in 0..10u8 {
        let target = 3;
        let placeholders = target - client.cookies_left();
        let transmit = NtpTimestamp(T1.0 + u64::from(round));
        let mut out = [0u8; 2048];
        let (len, pending) = client
            .build_request(transmit, &[round; 48], target, &mut out)
            .unwrap();
        assert_eq!(len, client.request_len(placeholders));
        let request = &out[..len];
        let (action, reply) = serve(&ring, request, &mut rng);
        assert_eq!(
            action,
            Action::Reply {
                len: reply.len(),
                kind: ReplyKind::Nts
            }
        );
        let v = client.verify_reply(&reply, &pending).unwrap();
        assert_eq!(v.cookies, 1 + placeholders);
        assert_eq!(client.cookies_left(), target);

        let h = v.header;
        assert_eq!(h.mode, Mode::Server);
        assert_eq!(h.version, 4);
        assert_eq!(h.origin, transmit);
        assert_eq!((h.receive, h.transmit), (T2, T2));
        assert_eq!(h.leap, sys.leap);
        assert_eq!(h.stratum, sys.stratum);
        assert_eq!(h.precision, sys.precision);
        assert_eq!(h.reference_id, sys.reference_id);
        assert_eq!(h.reference_time, sys.reference_time);
        assert_eq!(h.root_delay, sys.root_delay);
        assert_eq!(h.root_dispersion, sys.root_dispersion);

        let new = reply_cookies(&reply, &keys.s2c);
        assert_eq!(new.len(), 1 + placeholders);
        for c in &new {
            assert_eq!(c.len(), cookie_len(alg));
            assert_eq!(&c[..4], &KEY_ID.to_be_bytes());
            assert_eq!(open_cookie(&ring, c, &mut scratch), Ok(keys.clone()));
        }
        if let [a, b, ..] = new.as_slice() {
            assert_ne!(a, b, "each cookie has its own nonce");
        }
    }
}

#[test]
fn full_exchange_aead_15() {
    assert_eq!(cookie_len(AeadAlgorithm::AesSivCmac256), 100);
    full_exchange(AeadAlgorithm::AesSivCmac256);
}

#[test]
fn full_exchange_aead_17() {
    assert_eq!(cookie_len(AeadAlgorithm::AesSivCmac512), 164);
    full_exchange(AeadAlgorithm::AesSivCmac512);
}

#[test]
fn seven_placeholders_get_eight_cookies() {
    for alg in AeadAlgorithm::ALL {
        let ring = one_key();
        let (mut client, keys) = client_with(alg, &ring, 1);
        let mut out = [0u8; 2048];
        let (len, pending) = client.build_request(T1, &[7; 48], 8, &mut out).unwrap();
        assert_eq!(len, client.request_len(7));
        let (action, reply) = serve(&ring, &out[..len], &mut Counter::default());
        assert!(matches!(action, Action::Reply { kind: ReplyKind::Nts, len: l } if l <= len));
        assert_eq!(client.verify_reply(&reply, &pending).unwrap().cookies, 8);
        assert_eq!(client.cookies_left(), 8);
        let cookies = reply_cookies(&reply, &keys.s2c);
        assert_eq!(cookies.len(), 8);
        assert!(cookies.iter().all(|c| c.len() == cookie_len(alg)));
    }
}

#[test]
fn short_placeholders_cap_the_cookie_count() {
    // Placeholders shorter than a cookie must not buy a larger reply.
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let c = cookie(&ring, &keys, 1);
    let mut req = header(first_byte(4, 3), T1);
    push_field(&mut req, TYPE_UID, &[5; 32]);
    push_field(&mut req, TYPE_COOKIE, &c);
    for _ in 0..7 {
        push_field(&mut req, TYPE_PLACEHOLDER, &[0; 12]);
    }
    push_authenticator(&mut req, &keys.c2s, &[9; 16], &[]);
    let (action, reply) = serve(&ring, &req, &mut Counter::default());
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Nts,
            ..
        }
    ));
    let n = reply_cookies(&reply, &keys.s2c).len();
    // 48 + 36 + 7 * 16 + 104 + 40 = 340 bytes of request; 124 fixed + 104 each.
    assert_eq!(req.len(), 340);
    assert_eq!(n, 2);
}

#[test]
fn encrypted_placeholders_are_counted() {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let c = cookie(&ring, &keys, 1);
    let mut req = header(first_byte(4, 3), T1);
    push_field(&mut req, TYPE_UID, &[5; 32]);
    push_field(&mut req, TYPE_COOKIE, &c);
    let mut inner = Vec::new();
    push_field(&mut inner, TYPE_PLACEHOLDER, &[0; 100]);
    push_field(&mut inner, TYPE_PLACEHOLDER, &[0; 100]);
    push_authenticator(&mut req, &keys.c2s, &[9; 16], &inner);
    let (action, reply) = serve(&ring, &req, &mut Counter::default());
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Nts,
            ..
        }
    ));
    assert_eq!(reply_cookies(&reply, &keys.s2c).len(), 3);
    assert_eq!(reply.len(), req.len());
}

#[test]
fn plain_ntp_gets_plain_reply() {
    let ring = one_key();
    let sys = system();
    for version in 1..=4u8 {
        let req = header(first_byte(version, 3), T1);
        let (action, reply) = serve(&ring, &req, &mut Counter::default());
        assert_eq!(
            action,
            Action::Reply {
                len: 48,
                kind: ReplyKind::Plain
            }
        );
        let h = NtpHeader::decode(&mut Reader::new(&reply)).unwrap();
        assert_eq!(h.mode, Mode::Server);
        assert_eq!(h.version, version);
        assert_eq!(h.origin, T1);
        assert_eq!((h.receive, h.transmit), (T2, T2));
        assert_eq!((h.stratum, h.leap), (sys.stratum, sys.leap));
        assert_eq!(h.reference_id, sys.reference_id);
    }
    // A v4 request with an extension field NTS does not know, or with a
    // Unique Identifier alone, is still plain NTP.
    for t in [0x2005u16, TYPE_UID] {
        let mut req = header(first_byte(4, 3), T1);
        push_field(&mut req, t, &[1; 32]);
        let (action, reply) = serve(&ring, &req, &mut Counter::default());
        assert_eq!(
            action,
            Action::Reply {
                len: 48,
                kind: ReplyKind::Plain
            }
        );
        assert_eq!(reply[0] & 7, 4);
        assert_eq!(&reply[24..32], &req[40..48]);
    }
}

/// Checks a NAK byte by byte against RFC 8915, section 5.7, and that the
/// client recognises it.
fn assert_nak(ring: &SingleKey, request: &[u8], uid: &[u8], reason: NakReason) {
    let (action, reply) = serve(ring, request, &mut Counter::default());
    assert_eq!(
        action,
        Action::Reply {
            len: reply.len(),
            kind: ReplyKind::Nak(reason)
        }
    );
    assert!(reply.len() <= request.len());
    assert_eq!(reply.len(), 48 + 4 + uid.len());
    assert_eq!(reply[0] & 7, 4, "mode 4");
    assert_eq!(reply[0] >> 6, 3, "leap 3");
    assert_eq!((reply[0] >> 3) & 7, 4, "version 4");
    assert_eq!(reply[1], 0, "stratum 0");
    assert_eq!(&reply[12..16], b"NTSN");
    assert_eq!(&reply[24..32], &request[40..48], "origin");
    let h = NtpHeader::decode(&mut Reader::new(&reply)).unwrap();
    assert_eq!(h.leap, Leap::Unsynchronized);
    assert_eq!(fields(&reply), vec![(TYPE_UID, uid.to_vec())]);

    // Our client only sends 32-byte identifiers.
    let Ok(unique_id) = <[u8; 32]>::try_from(uid) else {
        return;
    };
    let mut client = NtsClient::new(session(AeadAlgorithm::AesSivCmac256), vec![]);
    let pending = Pending {
        unique_id,
        transmit: NtpTimestamp(u64::from_be_bytes(request[40..48].try_into().unwrap())),
    };
    assert_eq!(client.verify_reply(&reply, &pending), Err(ClientError::Nak));
}

#[test]
fn nak_unknown_key() {
    let ring = one_key();
    let retired = one_key_with(KEY_ID + 1, MASTER);
    for alg in AeadAlgorithm::ALL {
        let (mut client, _) = client_with(alg, &retired, 1);
        let mut out = [0u8; 2048];
        let (len, pending) = client.build_request(T1, &[3; 48], 1, &mut out).unwrap();
        assert_nak(&ring, &out[..len], &[3; 32], NakReason::CookieUnknownKey);
        let (_, reply) = serve(&ring, &out[..len], &mut Counter::default());
        assert_eq!(client.verify_reply(&reply, &pending), Err(ClientError::Nak));
    }
}

#[test]
fn nak_tampered_cookie() {
    let ring = one_key();
    for alg in AeadAlgorithm::ALL {
        let last = nts_proto::cookie::cookie_len(alg) - 1;
        for at in [4, 20, 36, last] {
            let (mut client, _) = client_with(alg, &ring, 1);
            let mut out = [0u8; 2048];
            let (len, _) = client.build_request(T1, &[3; 48], 1, &mut out).unwrap();
            // The cookie body starts at 48 + 36 + 4.
            out[88 + at] ^= 0x01;
            assert_nak(&ring, &out[..len], &[3; 32], NakReason::CookieInvalid);
        }
    }
}

#[test]
fn nak_wrong_length_cookie() {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let good = cookie(&ring, &keys, 1);
    let uid = [6u8; 32];
    let mut long = good.clone();
    long.extend_from_slice(&[0; 4]);
    for c in [&long[..], &good[..96], &good[..20], &[0u8; 12][..]] {
        let req = nts_request(&keys, c, &uid, 0, &[9; 16]);
        assert_nak(&ring, &req, &uid, NakReason::CookieInvalid);
    }
}

#[test]
fn nak_tampered_authenticator() {
    let ring = one_key();
    for alg in AeadAlgorithm::ALL {
        let (mut client, _) = client_with(alg, &ring, 1);
        let mut out = [0u8; 2048];
        let (len, _) = client.build_request(T1, &[3; 48], 1, &mut out).unwrap();
        // Last byte of the tag, then a byte of the nonce, then of the header
        // (associated data).
        for at in [len - 1, len - 20, 2] {
            let mut req = out[..len].to_vec();
            req[at] ^= 0x80;
            assert_nak(&ring, &req, &[3; 32], NakReason::AuthFailed);
        }
    }
}

#[test]
fn nak_wrong_c2s_key() {
    let ring = one_key();
    for alg in AeadAlgorithm::ALL {
        let keys = session(alg);
        let c = cookie(&ring, &keys, 1);
        let wrong = SessionKeys {
            c2s: AeadKey::new(alg, &vec![0x99; alg.key_len()]).unwrap(),
            s2c: keys.s2c.clone(),
        };
        let mut client = NtsClient::new(wrong, vec![c]);
        let mut out = [0u8; 2048];
        let (len, pending) = client.build_request(T1, &[4; 48], 1, &mut out).unwrap();
        assert_nak(&ring, &out[..len], &[4; 32], NakReason::AuthFailed);
        let (_, reply) = serve(&ring, &out[..len], &mut Counter::default());
        assert_eq!(client.verify_reply(&reply, &pending), Err(ClientError::Nak));
    }
}

#[test]
fn nak_missing_or_malformed_authenticator() {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let c = cookie(&ring, &keys, 1);
    let uid = [8u8; 32];

    let mut missing = header(first_byte(4, 3), T1);
    push_field(&mut missing, TYPE_UID, &uid);
    push_field(&mut missing, TYPE_COOKIE, &c);
    assert_nak(&ring, &missing, &uid, NakReason::AuthFailed);

    // Only a placeholder and no authenticator.
    let mut only_placeholder = missing.clone();
    push_field(&mut only_placeholder, TYPE_PLACEHOLDER, &[0; 100]);
    assert_nak(&ring, &only_placeholder, &uid, NakReason::AuthFailed);

    // Nonce length running past the body.
    let mut bad_body = missing.clone();
    push_field(
        &mut bad_body,
        TYPE_AUTH,
        &[0x01, 0x00, 0x00, 0x10, 0, 0, 0, 0],
    );
    assert_nak(&ring, &bad_body, &uid, NakReason::AuthFailed);

    // Ciphertext shorter than a tag.
    let mut no_tag = missing.clone();
    let mut body = vec![0, 16, 0, 8];
    body.extend_from_slice(&[1; 24]);
    push_field(&mut no_tag, TYPE_AUTH, &body);
    assert_nak(&ring, &no_tag, &uid, NakReason::AuthFailed);

    // Correctly sealed, but the encrypted fields do not parse.
    let mut bad_inner = missing.clone();
    push_authenticator(
        &mut bad_inner,
        &keys.c2s,
        &[9; 16],
        &[0, 0, 0, 12, 0, 0, 0, 0],
    );
    assert_nak(&ring, &bad_inner, &uid, NakReason::AuthFailed);
}

#[test]
fn nak_short_nonce() {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let c = cookie(&ring, &keys, 1);
    let uid = [10u8; 32];
    for n in [0usize, 1, 8, 12, 15] {
        let req = nts_request(&keys, &c, &uid, 0, &vec![7; n]);
        assert_nak(&ring, &req, &uid, NakReason::AuthFailed);
    }
    // 16 is enough, and longer nonces are accepted.
    for n in [16usize, 17, 32] {
        let req = nts_request(&keys, &c, &uid, 0, &vec![7; n]);
        let (action, _) = serve(&ring, &req, &mut Counter::default());
        assert!(
            matches!(
                action,
                Action::Reply {
                    kind: ReplyKind::Nts,
                    ..
                }
            ),
            "{n}"
        );
    }
}

#[test]
fn nak_echoes_long_unique_identifier() {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let uid = [0x5a; 64];
    let req = nts_request(&keys, &[0; 100], &uid, 0, &[9; 16]);
    assert_nak(&ring, &req, &uid, NakReason::CookieUnknownKey);
}

fn assert_drop(ring: &SingleKey, request: &[u8], reason: DropReason) {
    let (action, _) = serve(ring, request, &mut Counter::default());
    assert_eq!(action, Action::Ignore(reason), "{}", hex::encode(request));
}

#[test]
fn drop_paths() {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let c = cookie(&ring, &keys, 1);
    let uid = [11u8; 32];
    let good = nts_request(&keys, &c, &uid, 0, &[9; 16]);
    let (action, _) = serve(&ring, &good, &mut Counter::default());
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Nts,
            ..
        }
    ));

    for n in [0, 1, 47] {
        assert_drop(&ring, &good[..n], DropReason::TooShort);
    }
    for mode in [0u8, 1, 2, 4, 5, 6, 7] {
        assert_drop(
            &ring,
            &header(first_byte(4, mode), T1),
            DropReason::NotClient,
        );
        let mut nts = good.clone();
        nts[0] = first_byte(4, mode);
        assert_drop(&ring, &nts, DropReason::NotClient);
    }
    for version in [0u8, 5, 6, 7] {
        assert_drop(
            &ring,
            &header(first_byte(version, 3), T1),
            DropReason::BadVersion,
        );
        let mut nts = good.clone();
        nts[0] = first_byte(version, 3);
        assert_drop(&ring, &nts, DropReason::BadVersion);
    }
    for version in 1..=3u8 {
        let mut nts = good.clone();
        nts[0] = first_byte(version, 3);
        assert_drop(&ring, &nts, DropReason::BadVersion);
    }

    // Bad extension field lengths: below 16, not a multiple of 4, past the end.
    for len in [0u16, 4, 12, 17, 18, 19, 2000] {
        let mut bad = good.clone();
        bad[50..52].copy_from_slice(&len.to_be_bytes());
        assert_drop(&ring, &bad, DropReason::Malformed);
    }
    // Truncated: a field cut short, and trailing bytes shorter than a field header.
    assert_drop(&ring, &good[..good.len() - 4], DropReason::Malformed);
    assert_drop(&ring, &good[..50], DropReason::Malformed);
    let mut plain_trailing = header(first_byte(4, 3), T1);
    plain_trailing.extend_from_slice(&[0; 3]);
    assert_drop(&ring, &plain_trailing, DropReason::Malformed);

    // Cookie without a Unique Identifier.
    let mut no_uid = header(first_byte(4, 3), T1);
    push_field(&mut no_uid, TYPE_COOKIE, &c);
    push_authenticator(&mut no_uid, &keys.c2s, &[9; 16], &[]);
    assert_drop(&ring, &no_uid, DropReason::MalformedNts);

    // Unique Identifier and authenticator but no cookie.
    let mut no_cookie = header(first_byte(4, 3), T1);
    push_field(&mut no_cookie, TYPE_UID, &uid);
    push_authenticator(&mut no_cookie, &keys.c2s, &[9; 16], &[]);
    assert_drop(&ring, &no_cookie, DropReason::MalformedNts);

    // A cookie after the authenticator is not authenticated, so it does not count.
    let mut late_cookie = header(first_byte(4, 3), T1);
    push_field(&mut late_cookie, TYPE_UID, &uid);
    push_authenticator(&mut late_cookie, &keys.c2s, &[9; 16], &[]);
    push_field(&mut late_cookie, TYPE_COOKIE, &c);
    assert_drop(&ring, &late_cookie, DropReason::MalformedNts);

    // Two Unique Identifiers; two cookies.
    let mut two_uids = header(first_byte(4, 3), T1);
    push_field(&mut two_uids, TYPE_UID, &uid);
    push_field(&mut two_uids, TYPE_UID, &uid);
    push_field(&mut two_uids, TYPE_COOKIE, &c);
    push_authenticator(&mut two_uids, &keys.c2s, &[9; 16], &[]);
    assert_drop(&ring, &two_uids, DropReason::MalformedNts);
    let mut two_cookies = header(first_byte(4, 3), T1);
    push_field(&mut two_cookies, TYPE_UID, &uid);
    push_field(&mut two_cookies, TYPE_COOKIE, &c);
    push_field(&mut two_cookies, TYPE_COOKIE, &c);
    push_authenticator(&mut two_cookies, &keys.c2s, &[9; 16], &[]);
    assert_drop(&ring, &two_cookies, DropReason::MalformedNts);

    // Unique Identifier shorter than 32 bytes (12 is the shortest a field holds).
    for n in [12usize, 16, 28] {
        let req = nts_request(&keys, &c, &vec![1; n], 0, &[9; 16]);
        assert_drop(&ring, &req, DropReason::MalformedNts);
    }
    let req = nts_request(&keys, &c, &[1; 32], 0, &[9; 16]);
    assert!(matches!(
        serve(&ring, &req, &mut Counter::default()).0,
        Action::Reply {
            kind: ReplyKind::Nts,
            ..
        }
    ));
}

#[test]
fn small_reply_buffer_is_counted_not_panicked() {
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let req = nts_request(&keys, &cookie(&ring, &keys, 1), &[1; 32], 0, &[9; 16]);
    let mut rng = Counter::default();
    for n in [0usize, 10, 47, 48, 100, 200] {
        let mut reply = vec![0u8; n];
        match server.handle(T2, &req, &mut reply, &mut rng) {
            Action::Reply { len, .. } => assert!(len <= n),
            Action::Ignore(r) => assert_eq!(r, DropReason::BufferTooSmall),
        }
    }
    let mut reply = [0u8; 47];
    assert_eq!(
        server.handle(T2, &header(first_byte(4, 3), T1), &mut reply, &mut rng),
        Action::Ignore(DropReason::BufferTooSmall)
    );
}

#[test]
fn client_rejects_unsolicited_and_forged_replies() {
    let ring = one_key();
    let (mut client, _) = client_with(AeadAlgorithm::AesSivCmac256, &ring, 2);
    let mut out = [0u8; 2048];
    let (len, pending) = client.build_request(T1, &[1; 48], 2, &mut out).unwrap();
    let (_, reply) = serve(&ring, &out[..len], &mut Counter::default());

    let mut other_uid = pending.clone();
    other_uid.unique_id[0] ^= 1;
    assert_eq!(
        client.verify_reply(&reply, &other_uid),
        Err(ClientError::Unsolicited)
    );
    let mut other_time = pending.clone();
    other_time.transmit = NtpTimestamp(1);
    assert_eq!(
        client.verify_reply(&reply, &other_time),
        Err(ClientError::Unsolicited)
    );
    // Stratum, root dispersion, reply nonce, last tag byte.
    for at in [1, 10, 95, reply.len() - 1] {
        let mut forged = reply.clone();
        forged[at] ^= 1;
        assert_eq!(
            client.verify_reply(&forged, &pending),
            Err(ClientError::BadAuthenticator),
            "{at}"
        );
    }
    assert_eq!(
        client.verify_reply(&reply[..47], &pending),
        Err(ClientError::Malformed)
    );
    // A plain reply is not an NTS reply.
    let plain = serve(
        &ring,
        &header(first_byte(4, 3), T1),
        &mut Counter::default(),
    )
    .1;
    assert_eq!(
        client.verify_reply(&plain, &pending),
        Err(ClientError::Unsolicited)
    );
    assert!(client.verify_reply(&reply, &pending).is_ok());
}

/// A cookie for fixed inputs, byte for byte: a change to the format or the
/// sealing would invalidate every cookie in the field after an upgrade.
#[test]
fn cookie_known_answer() {
    let ring = one_key();
    let cases = [
        (AeadAlgorithm::AesSivCmac256, COOKIE_15),
        (AeadAlgorithm::AesSivCmac512, COOKIE_17),
    ];
    for (alg, expected) in cases {
        let keys = session(alg);
        let c = cookie(&ring, &keys, 0x33);
        assert_eq!(hex::encode(&c), expected);
        // key id || nonce || tag || E(c2s || s2c)
        assert_eq!(c.len(), 4 + 16 + 16 + 2 * alg.key_len());
        assert_eq!(&c[..4], &[1, 2, 3, 4]);
        assert_eq!(&c[4..20], &[0x33; 16]);
        let master = AeadKey::new(AeadAlgorithm::AesSivCmac256, &MASTER).unwrap();
        let mut sealed = c[20..].to_vec();
        let plain = master.open(&c[..4], &c[4..20], &mut sealed).unwrap();
        let k = alg.key_len();
        assert_eq!(&plain[..k], vec![0x11; k].as_slice());
        assert_eq!(&plain[k..], vec![0x22; k].as_slice());
        let mut scratch = [0u8; MAX_COOKIE_LEN];
        assert_eq!(open_cookie(&ring, &c, &mut scratch), Ok(keys));
    }
}

const COOKIE_15: &str = concat!(
    // key id, nonce
    "0102030433333333333333333333333333333333",
    // SIV tag, then E(c2s || s2c)
    "e3808d2edd11358e59124948d00259e68f18f83921756acfc8570e834d60801b",
    "68facec7ad603a6abeb0ce322a274b5f01c0afad308845676c506c11e60ae266",
    "2fcb1dfe5f642b3231f469b8159cea9e",
);
const COOKIE_17: &str = concat!(
    // key id, nonce
    "0102030433333333333333333333333333333333",
    // SIV tag, then E(c2s || s2c)
    "29cf113088d4ca2ccb70f57fe3cdb9fd10216dab55ddff1fe34f9d3f945f2aec",
    "fb79eebedee88f6e5f21a0d7cf5b867c4e235edf72220877837fa32df1834541",
    "15163f30494908de89db0a122438cc47ddf321eb1af8aacc18858a6874af311f",
    "5890fcc0590877876958d216056fb75e4d54843cfd9ab42e01d62d77a1678bd4",
    "f4afbcc9dfd2bd5b80264e7827e10316",
);

// Cross-checked against an independent AES-SIV (Python `cryptography`,
// OpenSSL) building the same packets from RFC 8915 alone.
const KAT_REQUEST: &str = concat!(
    // header: LI 0, v4, mode 3; transmit T1
    "2300000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000e9a0123456789abc",
    // Unique Identifier (0x0104, 36)
    "01040024a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babb",
    "bcbdbebf",
    // Cookie (0x0204, 104)
    "020400680102030433333333333333333333333333333333e3808d2edd11358e",
    "59124948d00259e68f18f83921756acfc8570e834d60801b68facec7ad603a6a",
    "beb0ce322a274b5f01c0afad308845676c506c11e60ae2662fcb1dfe5f642b32",
    "31f469b8159cea9e",
    // Cookie Placeholder (0x0304, 104)
    "0304006800000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000",
    // Authenticator (0x0404, 40): nonce len 16, ciphertext len 16, nonce, tag
    "0404002800100010c0c1c2c3c4c5c6c7c8c9cacbcccdcecfa421093816ededf6",
    "d2d0f8a8fcd13e5d",
);
const KAT_REPLY: &str = concat!(
    // header: LI 1, v4, mode 4, stratum 2, precision -23, GPS; origin T1, rx/tx T2
    "640200e9000001230000045647505300e9a0000000000000e9a0123456789abc",
    "e9a0123480000000e9a0123480000000",
    // Unique Identifier (0x0104, 36)
    "01040024a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babb",
    "bcbdbebf",
    // Authenticator (0x0404, 248): nonce len 16, ciphertext len 224, nonce,
    "040400f8001000e0",
    // then tag and two encrypted Cookie fields
    "000102030405060708090a0b0c0d0e0f227f8c11ee78df02eb86a33b6046d81a",
    "83e0007ca434cae5dd83af8bae209163fd0094f516c2036ea5ec0f09534c7792",
    "7244608e4332c9f2e2b1d43d3fc3e02b90372e4e8abeefc9b55da64555307d37",
    "4c6d5824726aeb0b8ac19ab849d94b0a676d57ce5db4f60ec39ff886ad445b00",
    "6d742dfb17501355ad246d62292dbb22a9b8a79d1515f93c3d9730f6d279e3e1",
    "758359513e0f205e7511b97ed0ece5af212c76d687af66fa34b938c53be39f4c",
    "c80012672d1f54154b7a70096ca163ff974fdf172d50b186b66716858555bf40",
    "042128470f7d36aaa3b3a11e667ce2e2",
);

/// The known-answer exchange: AEAD 15, one cookie (nonce 0x33..), one
/// placeholder, unique id 0xa0..0xbf, request nonce 0xc0..0xcf, transmit T1,
/// server time T2, server randomness counting up from 0.
fn kat_exchange() -> (Vec<u8>, Vec<u8>, NtsClient, Pending) {
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let mut client = NtsClient::new(
        keys,
        vec![cookie(&ring, &session(AeadAlgorithm::AesSivCmac256), 0x33)],
    );
    let random: [u8; 48] = std::array::from_fn(|i| 0xa0 + i as u8);
    let mut out = [0u8; 2048];
    let (len, pending) = client.build_request(T1, &random, 2, &mut out).unwrap();
    let request = out[..len].to_vec();
    let (action, reply) = serve(&ring, &request, &mut Counter::default());
    assert_eq!(
        action,
        Action::Reply {
            len: 332,
            kind: ReplyKind::Nts
        }
    );
    (request, reply, client, pending)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[test]
fn nts_exchange_known_answer() {
    let (request, reply, mut client, pending) = kat_exchange();
    assert_eq!(hex::encode(&request), KAT_REQUEST);
    assert_eq!(hex::encode(&reply), KAT_REPLY);
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let ring = one_key();

    // The request, decoded by hand.
    assert_eq!(request.len(), 48 + 36 + 104 + 104 + 40);
    assert_eq!(request[0], 0x23, "LI 0, version 4, mode 3");
    assert!(request[1..40].iter().all(|&b| b == 0));
    assert_eq!(&request[40..48], &T1.0.to_be_bytes());
    assert_eq!((be16(&request, 48), be16(&request, 50)), (0x0104, 36));
    assert_eq!(&request[52..84], pending.unique_id.as_slice());
    assert_eq!((be16(&request, 84), be16(&request, 86)), (0x0204, 104));
    assert_eq!(hex::encode(&request[88..188]), COOKIE_15);
    assert_eq!((be16(&request, 188), be16(&request, 190)), (0x0304, 104));
    assert!(request[192..292].iter().all(|&b| b == 0));
    assert_eq!((be16(&request, 292), be16(&request, 294)), (0x0404, 40));
    assert_eq!((be16(&request, 296), be16(&request, 298)), (16, 16));
    let nonce: Vec<u8> = (0xc0..0xd0).collect();
    assert_eq!(&request[300..316], nonce.as_slice());
    // The tag covers everything before the authenticator and no plaintext.
    let mut tag = request[316..332].to_vec();
    assert_eq!(
        keys.c2s
            .open(&request[..292], &nonce, &mut tag)
            .map(|p| p.len()),
        Ok(0)
    );

    // The reply, decoded by hand.
    assert_eq!(reply.len(), 48 + 36 + 8 + 16 + 16 + 2 * 104);
    assert_eq!(reply[0], 0x64, "LI 1, version 4, mode 4");
    assert_eq!(
        &reply[1..4],
        &[2, 0, 0xe9],
        "stratum 2, poll 0, precision -23"
    );
    assert_eq!(&reply[4..12], &[0, 0, 1, 0x23, 0, 0, 4, 0x56]);
    assert_eq!(&reply[12..16], b"GPS\0");
    assert_eq!(&reply[16..24], &system().reference_time.0.to_be_bytes());
    assert_eq!(&reply[24..32], &T1.0.to_be_bytes(), "origin");
    assert_eq!(&reply[32..40], &T2.0.to_be_bytes(), "receive");
    assert_eq!(&reply[40..48], &T2.0.to_be_bytes(), "transmit");
    assert_eq!((be16(&reply, 48), be16(&reply, 50)), (0x0104, 36));
    assert_eq!(&reply[52..84], &request[52..84]);
    assert_eq!((be16(&reply, 84), be16(&reply, 86)), (0x0404, 248));
    let n = 2;
    assert_eq!((be16(&reply, 88), be16(&reply, 90)), (16, 16 + 104 * n));
    // Server randomness: reply nonce 0x00.., then one nonce per cookie.
    let reply_nonce: Vec<u8> = (0..16).collect();
    assert_eq!(&reply[92..108], reply_nonce.as_slice());
    let mut ct = reply[108..].to_vec();
    let plain = keys.s2c.open(&reply[..84], &reply_nonce, &mut ct).unwrap();
    assert_eq!(plain.len(), 104 * n as usize);
    let mut scratch = [0u8; MAX_COOKIE_LEN];
    for (i, f) in plain.chunks(104).enumerate() {
        assert_eq!((be16(f, 0), be16(f, 2)), (0x0204, 104));
        let c = &f[4..];
        assert_eq!(&c[..4], &KEY_ID.to_be_bytes());
        let cookie_nonce: Vec<u8> = (16 * (i as u8 + 1)..16 * (i as u8 + 2)).collect();
        assert_eq!(&c[4..20], cookie_nonce.as_slice());
        assert_eq!(open_cookie(&ring, c, &mut scratch), Ok(keys.clone()));
    }

    let v = client.verify_reply(&reply, &pending).unwrap();
    assert_eq!(v.cookies, 2);
    assert_eq!(client.cookies_left(), 2);
}

#[test]
fn late_fields_after_authenticator_are_ignored() {
    // Fields after the authenticator are unauthenticated; the server ignores
    // them (and trailing bytes) rather than act on them.
    let ring = one_key();
    let keys = session(AeadAlgorithm::AesSivCmac256);
    let c = cookie(&ring, &keys, 1);
    let good = nts_request(&keys, &c, &[1; 32], 0, &[9; 16]);
    let mut late = good.clone();
    push_field(&mut late, TYPE_PLACEHOLDER, &[0; 100]);
    let (action, reply) = serve(&ring, &late, &mut Counter::default());
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Nts,
            ..
        }
    ));
    assert_eq!(reply_cookies(&reply, &keys.s2c).len(), 1);
    let mut trailing = good;
    trailing.extend_from_slice(&[0, 0]);
    let (action, _) = serve(&ring, &trailing, &mut Counter::default());
    assert!(matches!(
        action,
        Action::Reply {
            kind: ReplyKind::Nts,
            ..
        }
    ));
}

/// `handle_timed` keeps the kernel receive time and reads the transmit time
/// last: for NTS before sealing, so the authenticated reply carries it.
#[test]
fn transmit_time_is_read_last_and_authenticated() {
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let t3 = NtpTimestamp(T2.0 + 0x1234);
    let mut rng = Counter::default();

    let plain = header(first_byte(4, 3), T1);
    let mut out = [0u8; 2048];
    let action = server.handle_timed(T2, || t3, &plain, &mut out, &mut rng);
    assert!(matches!(action, Action::Reply { len: 48, .. }));
    let h = nts_proto::NtpHeader::decode(&mut Reader::new(&out[..48])).unwrap();
    assert_eq!((h.receive, h.transmit, h.origin), (T2, t3, T1));

    let (mut client, _) = client_with(AeadAlgorithm::AesSivCmac256, &ring, 1);
    let (len, pending) = client.build_request(T1, &[7; 48], 1, &mut out).unwrap();
    let request = out[..len].to_vec();
    let mut reply = [0u8; 2048];
    let Action::Reply {
        len,
        kind: ReplyKind::Nts,
    } = server.handle_timed(T2, || t3, &request, &mut reply, &mut rng)
    else {
        panic!("no NTS reply");
    };
    let v = client.verify_reply(&reply[..len], &pending).unwrap();
    assert_eq!((v.header.receive, v.header.transmit), (T2, t3));
}
