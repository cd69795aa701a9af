//! The server's whole NTS-KE request path without TLS: bytes fed to the
//! incremental parser in chunks the input chooses, the response the server
//! would send (cookies sealed with fixed keys), and the client's reading of
//! that response. Invariants: chunking never changes the outcome (up to End
//! of Message); every response decodes; an Error response carries the code
//! of the failure; a success carries eight cookies of the chosen AEAD.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::ke::{
    parse_client_response, KeClientError, KeRequest, KeRequestError, KeResponse, RequestParser,
    PROTOCOL_NTPV4,
};
use nts_proto::AeadAlgorithm;
use nts_proto_fuzz::{cookie, one_key};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, request)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let whole = KeRequest::parse(request);
    let mut parser = RequestParser::new();
    let mut fed = Err(KeRequestError::Incomplete);
    let mut used = 0;
    for piece in request.chunks(chunk) {
        used += piece.len();
        fed = parser.feed(piece);
        if fed != Err(KeRequestError::Incomplete) {
            break;
        }
    }
    // The server stops reading at End of Message: what comes after it in a
    // later read is never seen, so only a request read to its end compares.
    if used == request.len() {
        assert_eq!(fed, whole, "chunks of {chunk}");
    }
    let ring = one_key();
    let response = match &fed {
        Err(KeRequestError::Incomplete) => return,
        Err(e) => KeResponse::error(e.error_code()),
        Ok(req) if !req.wants_ntpv4() => KeResponse::default().encode(),
        Ok(req) => match req.select_aead(&AeadAlgorithm::ALL) {
            None => KeResponse {
                protocol: Some(PROTOCOL_NTPV4),
                ..Default::default()
            }
            .encode(),
            Some(alg) => KeResponse {
                protocol: Some(PROTOCOL_NTPV4),
                aead: Some(alg),
                cookies: (0..8).map(|i| cookie(&ring, alg, i)).collect(),
                server: None,
                port: Some(1123),
                compliant_128gcm_export: req.echoes_compliant_export(alg),
            }
            .encode(),
        },
    };
    // A reply is never longer than a KE response can be for one request.
    assert!(response.len() < 2048, "{} bytes", response.len());
    match (&fed, parse_client_response(&response)) {
        (Err(e), Err(KeClientError::ServerError(code))) => assert_eq!(code, e.error_code()),
        (Ok(req), Ok(got)) => {
            assert_eq!(Some(got.aead), req.select_aead(&AeadAlgorithm::ALL));
            assert_eq!(got.cookies.len(), 8);
            assert_eq!(got.port, Some(1123));
            // Record 1024 comes back only with AEAD 30 and only when sent.
            assert_eq!(
                got.compliant_128gcm_export,
                got.aead == AeadAlgorithm::AesGcmSiv128 && req.compliant_128gcm_export
            );
        }
        (Ok(req), Err(KeClientError::NoProtocol)) => assert!(!req.wants_ntpv4()),
        (Ok(req), Err(KeClientError::NoAead)) => {
            assert_eq!(req.select_aead(&AeadAlgorithm::ALL), None)
        }
        (fed, read) => panic!("request {fed:?} answered with a response read as {read:?}"),
    }
});
