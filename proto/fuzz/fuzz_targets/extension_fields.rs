//! Extension field framing (RFC 7822) and the NTS Authenticator body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::ef::{Authenticator, Fields};

fuzz_target!(|data: &[u8]| {
    let mut consumed = 0;
    let mut failed = false;
    for field in Fields::new(data, 0) {
        assert!(!failed, "the iterator stops after an error");
        match field {
            Ok(f) => {
                assert_eq!(f.offset, consumed);
                assert!(f.body.len() >= 12 && f.body.len() % 4 == 0);
                assert_eq!(&data[f.offset + 4..f.offset + 4 + f.body.len()], f.body);
                consumed += 4 + f.body.len();
                if let Some(a) = Authenticator::decode(f.body) {
                    assert!(
                        Authenticator::body_len(a.nonce.len(), a.ciphertext.len()) <= f.body.len()
                    );
                }
            }
            Err(_) => failed = true,
        }
    }
    assert_eq!(failed, consumed != data.len());
    // The body decoder on its own, without framing.
    let _ = Authenticator::decode(data);
});
