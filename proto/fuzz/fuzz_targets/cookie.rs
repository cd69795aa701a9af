//! Opening cookies with fixed master keys: raw bytes, and edits of a valid
//! cookie (which must never authenticate).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::cookie::{open_cookie, MAX_COOKIE_LEN};
use nts_proto::AeadAlgorithm;
use nts_proto_fuzz::{cookie, mutate, one_key, session};

fuzz_target!(|data: &[u8]| {
    let ring = one_key();
    let mut scratch = [0u8; MAX_COOKIE_LEN];
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            assert!(open_cookie(&ring, rest, &mut scratch).is_err());
        }
        1 => {
            let alg = AeadAlgorithm::ALL[usize::from(mode / 3) % 2];
            let good = cookie(&ring, alg, mode);
            let mut c = good.clone();
            mutate(&mut c, rest);
            match open_cookie(&ring, &c, &mut scratch) {
                Ok(keys) => {
                    assert_eq!(c, good, "an edited cookie authenticated");
                    assert_eq!(keys, session(alg));
                }
                Err(_) => assert_ne!(c, good),
            }
        }
        _ => {
            // Scratch buffers of any size.
            let n = usize::from(rest.first().copied().unwrap_or(0));
            let mut small = vec![0u8; n];
            let _ = open_cookie(&ring, rest, &mut small);
        }
    }
});
