//! NTP timestamp formats (RFC 5905, section 6).

/// Seconds between the NTP era 0 epoch (1900) and the Unix epoch (1970).
pub const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// 64-bit NTP timestamp: 32 bits of seconds, 32 bits of fraction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    /// Converts Unix time (seconds, nanoseconds) to an NTP timestamp in the
    /// era that contains it; the era number is dropped as on the wire.
    pub fn from_unix(secs: u64, nanos: u32) -> Self {
        let s = secs.wrapping_add(NTP_UNIX_OFFSET) & 0xffff_ffff;
        let frac = (u64::from(nanos) << 32) / 1_000_000_000;
        Self((s << 32) | (frac & 0xffff_ffff))
    }

    /// Nanoseconds since the start of the timestamp's era (a monotonic
    /// count within an era, for rate keeping; not Unix time).
    pub fn as_nanos(self) -> u64 {
        let secs = self.0 >> 32;
        let frac = self.0 & 0xffff_ffff;
        secs * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)
    }

    /// Signed difference `self - earlier` in seconds, era-safe for
    /// timestamps within 68 years of each other.
    pub fn seconds_since(self, earlier: NtpTimestamp) -> f64 {
        let diff = self.0.wrapping_sub(earlier.0) as i64;
        diff as f64 / 4_294_967_296.0
    }
}

/// 32-bit NTP short format (16.16 seconds), used for root delay and dispersion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NtpShort(pub u32);

impl NtpShort {
    /// Converts seconds, saturating at the format's range.
    pub fn from_seconds(s: f64) -> Self {
        let v = (s * 65536.0).clamp(0.0, f64::from(u32::MAX));
        Self(v as u32)
    }

    pub fn seconds(self) -> f64 {
        f64::from(self.0) / 65536.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_epoch_maps_to_ntp_offset() {
        assert_eq!(NtpTimestamp::from_unix(0, 0).0 >> 32, NTP_UNIX_OFFSET);
        let half = NtpTimestamp::from_unix(0, 500_000_000);
        assert_eq!(half.0 & 0xffff_ffff, 0x8000_0000);
    }

    #[test]
    fn nanoseconds_within_the_era() {
        assert_eq!(NtpTimestamp(0).as_nanos(), 0);
        assert_eq!(
            NtpTimestamp((3 << 32) | 0x8000_0000).as_nanos(),
            3_500_000_000
        );
        assert_eq!(NtpTimestamp(u64::MAX).as_nanos(), 4_294_967_295_999_999_999);
    }

    #[test]
    fn difference_survives_era_rollover() {
        let before = NtpTimestamp(0xffff_ffff_0000_0000);
        let after = NtpTimestamp(0x0000_0001_0000_0000);
        assert_eq!(after.seconds_since(before), 2.0);
        assert_eq!(before.seconds_since(after), -2.0);
    }

    #[test]
    fn short_format_round_trips() {
        assert_eq!(NtpShort::from_seconds(1.5).0, 0x0001_8000);
        assert_eq!(NtpShort::from_seconds(-1.0).0, 0);
        assert_eq!(NtpShort(0x0002_4000).seconds(), 2.25);
    }
}
