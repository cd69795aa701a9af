//! The whole server path with fixed keys and deterministic randomness, then
//! the client's verification of the reply. The server must never answer
//! with more bytes than it received.
//!
//! First byte even: the rest is the request. Odd: the rest edits a valid NTS
//! request from the real client (bits choose the AEAD and the placeholder
//! count), so the fuzzer reaches the authenticated paths. Every request is
//! also answered in interleaved mode, with a store that has a saved pair
//! for every origin, under the same rule.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::{Action, AeadAlgorithm, Interleave, NtpTimestamp, ReplyKind, Server};
use nts_proto_fuzz::{mutate, one_key, system, valid_request, Counter, T2};

/// A saved transmit timestamp for every origin (the worst case).
struct Always;

impl Interleave for Always {
    fn exchange(&mut self, origin: NtpTimestamp, _: NtpTimestamp) -> Option<NtpTimestamp> {
        Some(NtpTimestamp(origin.0.wrapping_add(12_345)))
    }
}

/// `handle_interleaved` never answers with more than it received.
fn interleaved(server: &Server<'_, nts_proto::SingleKey>, request: &[u8], mode: u8) {
    let mut reply = [0u8; 2048];
    let action = server.handle_interleaved(
        T2,
        || T2,
        &mut Always,
        request,
        &mut reply,
        &mut Counter(mode),
    );
    if let Action::Reply { len, .. } = action {
        assert!(
            len <= request.len(),
            "amplification: {len} > {}",
            request.len()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ring = one_key();
    let sys = system();
    let server = Server {
        keys: &ring,
        system: &sys,
    };
    let mut reply = [0u8; 2048];
    if mode & 1 == 0 {
        interleaved(&server, rest, mode);
        if let Action::Reply { len, .. } = server.handle(T2, rest, &mut reply, &mut Counter(mode)) {
            assert!(len <= rest.len(), "amplification: {len} > {}", rest.len());
        }
        return;
    }
    let alg = AeadAlgorithm::ALL[usize::from(mode >> 1) % AeadAlgorithm::ALL.len()];
    let placeholders = usize::from(mode >> 2) % 8;
    let (valid, mut client, pending) = valid_request(alg, placeholders, mode);
    let mut request = valid.clone();
    mutate(&mut request, rest);
    interleaved(&server, &request, mode);
    let action = server.handle(T2, &request, &mut reply, &mut Counter(mode));
    if let Action::Reply { len, kind } = action {
        assert!(
            len <= request.len(),
            "amplification: {len} > {}",
            request.len()
        );
        let verified = client.verify_reply(&reply[..len], &pending);
        if request == valid {
            assert_eq!(kind, ReplyKind::Nts);
            assert_eq!(verified.map(|v| v.cookies), Ok(placeholders + 1));
        }
    } else {
        assert_ne!(request, valid, "a valid request was dropped: {action:?}");
    }
});
