//! History stamps: `YYYYmmdd-HHMMSS` in UTC, as OM names its snapshots.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::OmError;

/// The stamp of `t` in UTC (`20140102-030405`), for years 1970 to 9999.
pub fn format_stamp(t: SystemTime) -> Result<String, OmError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| {
            OmError::Invalid(
                "the time is before 1970: pass the current time (SystemTime::now())".into(),
            )
        })?
        .as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil(days);
    if y > 9999 {
        return Err(OmError::Invalid(
            "the time is after the year 9999: pass the current time (SystemTime::now())".into(),
        ));
    }
    Ok(format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    ))
}

/// True when `s` has the form of a stamp (8 digits, `-`, 6 digits).
pub(crate) fn is_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..].iter().all(u8::is_ascii_digit)
}

/// The (year, month, day) of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar: days are counted in 400-year eras that
/// start on March 1st, so that the leap day ends a year.
fn civil(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March (0) to February (11).
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> String {
        format_stamp(UNIX_EPOCH + Duration::from_secs(secs)).expect("a stamp")
    }

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(at(0), "19700101-000000");
        assert_eq!(at(951_782_400), "20000229-000000");
        assert_eq!(at(951_868_799), "20000229-235959");
        assert_eq!(at(951_868_800), "20000301-000000");
        assert_eq!(at(1_700_000_000), "20231114-221320");
        assert_eq!(at(4_102_444_799), "20991231-235959");
        assert!(is_stamp(&at(1_700_000_000)));
        assert!(!is_stamp("2023111-2213200"));
        assert!(!is_stamp("20231114-22132"));
    }

    #[test]
    fn refuses_times_outside_the_format() {
        assert!(format_stamp(UNIX_EPOCH - Duration::from_secs(1)).is_err());
        assert!(format_stamp(UNIX_EPOCH + Duration::from_secs(253_402_300_800)).is_err());
        assert!(format_stamp(UNIX_EPOCH + Duration::from_secs(253_402_300_799)).is_ok());
    }
}
