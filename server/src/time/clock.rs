//! Reading the system clock as NTP time (clock_gettime through the vDSO:
//! no syscall on the hot path).

use std::time::{SystemTime, UNIX_EPOCH};

use nts_proto::NtpTimestamp;

pub(crate) fn now_ntp() -> NtpTimestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    NtpTimestamp::from_unix(d.as_secs(), d.subsec_nanos())
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Civil date (year, month, day) of Unix seconds, proleptic Gregorian
/// (Howard Hinnant's civil_from_days).
pub(crate) fn civil(secs: u64) -> (i64, u32, u32) {
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn utc(secs: u64) -> String {
    let (y, m, d) = civil(secs);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Leap seconds happen at the end of a month's last day (UTC), and a leap
/// warning is announced only on that day.
pub(crate) fn is_last_day_of_month(secs: u64) -> bool {
    civil(secs.saturating_add(86_400)).2 == 1
}

/// A leap-second warning as it should be served at `unix_now`: insert or
/// delete only on the last day of a month, no warning on other days; any
/// other indicator (no warning, unsynchronised) unchanged.
pub(crate) fn leap_warning_today(leap: nts_proto::Leap, unix_now: u64) -> nts_proto::Leap {
    use nts_proto::Leap;
    match leap {
        Leap::InsertSecond | Leap::DeleteSecond if !is_last_day_of_month(unix_now) => {
            Leap::NoWarning
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_317_028), "2026-11-22T03:10:28Z");
    }

    #[test]
    fn last_days_of_months() {
        // 2016-12-31 (a leap-second day) and 2015-06-30.
        assert!(is_last_day_of_month(1_483_228_799));
        assert!(is_last_day_of_month(1_435_622_400));
        assert!(!is_last_day_of_month(1_483_056_000)); // 2016-12-30
        assert!(is_last_day_of_month(951_782_400)); // 2000-02-29
    }

    #[test]
    fn leap_warnings_only_on_their_day() {
        use nts_proto::Leap;
        assert_eq!(
            leap_warning_today(Leap::InsertSecond, 1_483_142_400),
            Leap::InsertSecond
        );
        assert_eq!(
            leap_warning_today(Leap::DeleteSecond, 1_483_056_000),
            Leap::NoWarning
        );
        assert_eq!(
            leap_warning_today(Leap::Unsynchronized, 1_483_056_000),
            Leap::Unsynchronized
        );
    }
}
