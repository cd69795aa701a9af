//! `Server::handle_batch` against `Server::handle_timed` one datagram at a
//! time: the same actions and the same reply bytes for the same requests,
//! randomness and transmit times, for every batch size from 1 to 64, with
//! AEADs 15, 17 and 30 mixed, plain and malformed requests, NAKs of every
//! cause, and cookies whose key needs the one-by-one path.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

mod common;

use common::*;
use nts_proto::client::NtsClient;
use nts_proto::{
    Action, AeadAlgorithm, CookieKeys, Datagram, MasterKey, NtpTimestamp, ReplyKind, Server,
};

/// A ring with two ids: `A` opens with one key (the batched path), `B`
/// with two, the right one second (the one-by-one path).
struct TwoIds {
    a: MasterKey,
    b: [MasterKey; 2],
}

const A: u32 = 7;
const B: u32 = 9;

impl CookieKeys for TwoIds {
    fn sealing_key(&self) -> (u32, &MasterKey) {
        (A, &self.a)
    }
    fn opening_keys(&self, id: u32) -> &[MasterKey] {
        match id {
            A => std::slice::from_ref(&self.a),
            B => &self.b,
            _ => &[],
        }
    }
}

fn ring() -> TwoIds {
    TwoIds {
        a: MasterKey::from_bytes(&[0x42; 32]),
        b: [
            MasterKey::from_bytes(&[0x01; 32]),
            MasterKey::from_bytes(&[0x02; 32]),
        ],
    }
}

/// A small deterministic generator for choosing requests.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

/// Every kind of request a batch may hold.
fn pool(ring: &TwoIds) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let single = |id: u32, key: &MasterKey| nts_proto::SingleKey::new(id, key.clone());
    for (i, alg) in AeadAlgorithm::ALL.into_iter().enumerate() {
        let keys = session(alg);
        for (id, key) in [(A, &ring.a), (B, &ring.b[1])] {
            let sealer = single(id, key);
            let cookies: Vec<Vec<u8>> = (0..8).map(|s| cookie(&sealer, &keys, s)).collect();
            for placeholders in [0usize, 1, 3, 7] {
                let mut client = NtsClient::new(keys.clone(), cookies.clone());
                let mut buf = [0u8; 2048];
                let random = [i as u8 * 16 + placeholders as u8; 48];
                let (len, _) = client
                    .build_request(T1, &random, placeholders + 1, &mut buf)
                    .unwrap();
                out.push(buf[..len].to_vec());
            }
        }
        // NAKs: unknown key id, tampered cookie, tampered authenticator,
        // a key under id B that opens with neither of its keys.
        let sealer = single(A, &ring.a);
        let good = cookie(&sealer, &keys, 1);
        let mut unknown = good.clone();
        unknown[..4].copy_from_slice(&77u32.to_be_bytes());
        let mut tampered = good.clone();
        tampered[30] ^= 4;
        let nonce = &[5u8; 16][..alg.nonce_len()];
        out.push(nts_request(&keys, &unknown, &[3; 32], 0, nonce));
        out.push(nts_request(&keys, &tampered, &[3; 32], 1, nonce));
        let mut bad_auth = nts_request(&keys, &good, &[3; 32], 0, nonce);
        let last = bad_auth.len() - 1;
        bad_auth[last] ^= 1;
        out.push(bad_auth);
        let wrong_b = cookie(&single(B, &MasterKey::from_bytes(&[0x03; 32])), &keys, 2);
        out.push(nts_request(&keys, &wrong_b, &[3; 32], 0, nonce));
        // AES-SIV with a nonce shorter than 16 bytes (AES-GCM-SIV cannot
        // seal with another length than 12 at all).
        if alg != AeadAlgorithm::AesGcmSiv128 {
            out.push(nts_request(&keys, &good, &[3; 32], 0, &[5u8; 12]));
        }
    }
    // Plain NTP, v4 and v3; a short packet, a server packet, bad fields.
    out.push(header(first_byte(4, 3), T1));
    out.push(header(first_byte(3, 3), T1));
    out.push(vec![0x23; 20]);
    out.push(header(first_byte(4, 4), T1));
    let mut malformed = header(first_byte(4, 3), T1);
    malformed.extend_from_slice(&[0x01, 0x04, 0x00, 0x03]);
    out.push(malformed);
    // NTS fields in a v3 packet; a cookie without a unique identifier.
    let mut v3 = header(first_byte(3, 3), T1);
    push_field(&mut v3, nts_proto::ef::field_type::COOKIE, &[0; 100]);
    out.push(v3);
    out
}

fn transmit_of(i: usize) -> NtpTimestamp {
    NtpTimestamp(0xe9a0_1234_9000_0000 + i as u64 * 977)
}

fn received_of(i: usize) -> NtpTimestamp {
    NtpTimestamp(T2.0 + i as u64 * 13)
}

#[test]
fn batches_give_the_bytes_of_one_by_one() {
    let ring = ring();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let pool = pool(&ring);
    let mut lcg = Lcg(1);
    let mut kinds = std::collections::HashSet::new();
    for size in 1..=64usize {
        for round in 0..3 {
            let requests: Vec<&[u8]> = (0..size)
                .map(|_| &pool[lcg.next() % pool.len()][..])
                .collect();
            // Every fourth round, a reply buffer shorter than its request.
            let reply_len = |i: usize| {
                if round == 2 && i % 5 == 4 {
                    requests[i].len() / 2
                } else {
                    2048
                }
            };

            let mut rng = Counter(round as u8);
            let mut one: Vec<(Action, Vec<u8>)> = Vec::new();
            for (i, req) in requests.iter().enumerate() {
                let mut reply = vec![0u8; reply_len(i)];
                let a = server.handle_timed(
                    received_of(i),
                    || transmit_of(i),
                    req,
                    &mut reply,
                    &mut rng,
                );
                let bytes = match a {
                    Action::Reply { len, .. } => reply[..len].to_vec(),
                    Action::Ignore(_) => Vec::new(),
                };
                one.push((a, bytes));
            }

            let mut rng = Counter(round as u8);
            let mut buffers: Vec<Vec<u8>> = (0..size).map(|i| vec![0u8; reply_len(i)]).collect();
            let mut batch: Vec<Datagram<'_>> = requests
                .iter()
                .zip(buffers.iter_mut())
                .enumerate()
                .map(|(i, (req, reply))| Datagram {
                    received: received_of(i),
                    request: req,
                    reply,
                })
                .collect();
            let mut actions = vec![Action::Ignore(nts_proto::DropReason::TooShort); size];
            let mut calls = vec![0u32; size];
            server.handle_batch(&mut batch, &mut actions, &mut rng, |i| {
                calls[i] += 1;
                transmit_of(i)
            });
            drop(batch);
            for (i, (a, bytes)) in one.iter().enumerate() {
                assert_eq!(&actions[i], a, "size {size} round {round} datagram {i}");
                if let Action::Reply { len, kind } = actions[i] {
                    assert_eq!(&buffers[i][..len], &bytes[..], "size {size} datagram {i}");
                    assert_eq!(calls[i], 1, "one transmit read per reply");
                    kinds.insert(format!("{kind:?}"));
                    assert!(len <= requests[i].len());
                } else {
                    kinds.insert(format!("{a:?}"));
                }
            }
            assert_eq!(
                rng.0,
                {
                    let mut r = Counter(round as u8);
                    for (i, req) in requests.iter().enumerate() {
                        let mut reply = vec![0u8; reply_len(i)];
                        let _ = server.handle_timed(
                            received_of(i),
                            || transmit_of(i),
                            req,
                            &mut reply,
                            &mut r,
                        );
                    }
                    r.0
                },
                "the batch draws as much randomness as one by one"
            );
        }
    }
    // Every outcome was met somewhere.
    for kind in [
        format!("{:?}", ReplyKind::Plain),
        format!("{:?}", ReplyKind::Nts),
        format!(
            "{:?}",
            ReplyKind::Nak(nts_proto::NakReason::CookieUnknownKey)
        ),
        format!("{:?}", ReplyKind::Nak(nts_proto::NakReason::CookieInvalid)),
        format!("{:?}", ReplyKind::Nak(nts_proto::NakReason::AuthFailed)),
    ] {
        assert!(kinds.contains(&kind), "{kind} never occurred: {kinds:?}");
    }
    assert!(kinds.iter().any(|k| k.starts_with("Ignore")), "{kinds:?}");
}

/// The replies of a batch are real replies: the client accepts them.
#[test]
fn batch_replies_verify_for_every_aead() {
    let ring = ring();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let sealer = nts_proto::SingleKey::new(A, ring.a.clone());
    let mut clients: Vec<NtsClient> = AeadAlgorithm::ALL
        .into_iter()
        .cycle()
        .take(12)
        .map(|alg| {
            let keys = session(alg);
            NtsClient::new(
                keys.clone(),
                (0..2).map(|s| cookie(&sealer, &keys, s)).collect(),
            )
        })
        .collect();
    let mut requests = Vec::new();
    let mut pendings = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut buf = [0u8; 2048];
        let (len, p) = c
            .build_request(NtpTimestamp(i as u64 + 1), &[i as u8; 48], 8, &mut buf)
            .unwrap();
        requests.push(buf[..len].to_vec());
        pendings.push(p);
    }
    let mut buffers = vec![vec![0u8; 2048]; requests.len()];
    let mut batch: Vec<Datagram<'_>> = requests
        .iter()
        .zip(buffers.iter_mut())
        .map(|(r, b)| Datagram {
            received: T2,
            request: r,
            reply: b,
        })
        .collect();
    let mut actions = vec![Action::Ignore(nts_proto::DropReason::TooShort); requests.len()];
    server.handle_batch(&mut batch, &mut actions, &mut Counter(9), |_| T2);
    drop(batch);
    for ((c, (a, buf)), p) in clients
        .iter_mut()
        .zip(actions.iter().zip(&buffers))
        .zip(&pendings)
    {
        let Action::Reply {
            len,
            kind: ReplyKind::Nts,
        } = *a
        else {
            panic!("{a:?}");
        };
        let v = c.verify_reply(&buf[..len], p).unwrap();
        assert_eq!(v.cookies, 7);
    }
}
