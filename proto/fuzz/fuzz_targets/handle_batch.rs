//! `Server::handle_batch` against `Server::handle_timed` one datagram at a
//! time on the same requests, randomness and transmit times: the same
//! actions and the same reply bytes. Requests are raw bytes or edited valid
//! NTS requests of every AEAD, as in the `handle` target.
//!
//! Input: per datagram a mode byte, a length byte and that many bytes
//! (raw request if the mode is even, edits of a valid request if odd).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::{Action, AeadAlgorithm, Datagram, DropReason, NtpTimestamp, Server};
use nts_proto_fuzz::{mutate, one_key, system, valid_request, Counter, T2};

fuzz_target!(|data: &[u8]| {
    let mut requests: Vec<Vec<u8>> = Vec::new();
    let mut rest = data;
    while let [mode, len, tail @ ..] = rest {
        let take = usize::from(*len).min(tail.len());
        let (body, more) = tail.split_at(take);
        rest = more;
        if mode & 1 == 0 {
            requests.push(body.to_vec());
        } else {
            let alg = AeadAlgorithm::ALL[usize::from(mode >> 1) % AeadAlgorithm::ALL.len()];
            let (mut req, _, _) = valid_request(alg, usize::from(mode >> 3) % 8, *mode);
            mutate(&mut req, body);
            requests.push(req);
        }
        if requests.len() == 40 {
            break;
        }
    }
    if requests.is_empty() {
        return;
    }
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let transmit = |i: usize| NtpTimestamp(T2.0 + 1000 + i as u64);
    let seed = data.first().copied().unwrap_or(0);

    let mut rng = Counter(seed);
    let one: Vec<(Action, Vec<u8>)> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut reply = [0u8; 2048];
            let a = server.handle_timed(T2, || transmit(i), r, &mut reply, &mut rng);
            let bytes = match a {
                Action::Reply { len, .. } => reply[..len].to_vec(),
                Action::Ignore(_) => Vec::new(),
            };
            (a, bytes)
        })
        .collect();
    let after_one = rng.0;

    let mut rng = Counter(seed);
    let mut buffers = vec![[0u8; 2048]; requests.len()];
    let mut batch: Vec<Datagram<'_>> = requests
        .iter()
        .zip(buffers.iter_mut())
        .map(|(r, b)| Datagram {
            received: T2,
            request: r,
            reply: b,
        })
        .collect();
    let mut actions = vec![Action::Ignore(DropReason::TooShort); requests.len()];
    server.handle_batch(&mut batch, &mut actions, &mut rng, transmit);
    drop(batch);
    assert_eq!(rng.0, after_one, "randomness drawn differs");
    for (i, (a, bytes)) in one.iter().enumerate() {
        assert_eq!(&actions[i], a, "datagram {i}");
        if let Action::Reply { len, .. } = a {
            assert_eq!(&buffers[i][..*len], &bytes[..], "datagram {i}");
            assert!(*len <= requests[i].len(), "amplification");
        }
    }
});
