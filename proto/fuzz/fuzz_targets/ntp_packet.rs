//! The NTP header and the extension fields behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nts_proto::ef::Fields;
use nts_proto::packet::HEADER_LEN;
use nts_proto::reader::Reader;
use nts_proto::NtpHeader;

fuzz_target!(|data: &[u8]| {
    match NtpHeader::decode(&mut Reader::new(data)) {
        Some(h) => {
            // Every header bit survives a decode/encode round trip.
            assert_eq!(&h.to_bytes()[..], &data[..HEADER_LEN]);
            for f in Fields::new(&data[HEADER_LEN..], HEADER_LEN).flatten() {
                assert!(f.offset >= HEADER_LEN && f.offset < data.len());
            }
        }
        None => assert!(data.len() < HEADER_LEN),
    }
});
