//! NTS-KE records and both ends of the key exchange.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::ke::{self, KeRequest, Record};
use nts_proto::reader::Reader;
use nts_proto::AeadAlgorithm;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    while let Ok(rec) = Record::decode(&mut r) {
        // A decoded record re-encodes to something that decodes the same.
        let mut out = Vec::new();
        rec.encode(&mut out);
        assert_eq!(Record::decode(&mut Reader::new(&out)), Ok(rec));
    }
    if let Ok(records) = ke::decode_message(data) {
        assert_eq!(records.last(), Some(&Record::EndOfMessage));
        assert_eq!(
            ke::decode_message(&ke::encode_message(&records)),
            Ok(records)
        );
    }
    if let Ok(req) = KeRequest::parse(data) {
        let _ = req.select_aead(&AeadAlgorithm::ALL);
        assert!(!req.wants_ntpv4() || !req.aeads.is_empty());
    }
    if let Ok(resp) = ke::parse_client_response(data) {
        assert!(!resp.cookies.is_empty());
    }
});
