//! Reading the system clock as NTP time (clock_gettime through the vDSO:
//! no syscall on the hot path).

use std::time::{SystemTime, UNIX_EPOCH};

use nts_proto::NtpTimestamp;

pub fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

pub fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
