//! Civil dates from Unix time, for run names and chat templates' `strftime_now`. Hand-written because this is all
//! the host needs of a date library: the proleptic Gregorian calendar in UTC (Howard Hinnant's days-to-civil
//! algorithm).

/// A UTC date and time of day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UtcDateTime {
    /// Year (e.g. 2026).
    pub year: i64,
    /// Month, 1-12.
    pub month: i64,
    /// Day of the month, 1-31.
    pub day: i64,
    /// Hours, minutes and seconds.
    pub hour: i64,
    pub minute: i64,
    pub second: i64,
    /// Days since 1970-01-01 (negative before it).
    pub days_since_epoch: i64,
}

impl UtcDateTime {
    /// The date and time `secs` seconds after the Unix epoch.
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        UtcDateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            days_since_epoch: days,
        }
    }

    /// Now, from the system clock (the epoch if the clock is before it).
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        Self::from_unix(secs as i64)
    }

    /// `YYYYmmdd-HHMMSS`, as in default run names.
    pub fn compact(&self) -> String {
        format!("{:04}{:02}{:02}-{:02}{:02}{:02}", self.year, self.month, self.day, self.hour, self.minute, self.second)
    }

    /// 0 for Monday through 6 for Sunday.
    pub fn weekday_from_monday(&self) -> usize {
        // 1970-01-01 was a Thursday.
        (self.days_since_epoch + 3).rem_euclid(7) as usize
    }

    /// Whether the year is a leap year.
    pub fn is_leap_year(&self) -> bool {
        (self.year % 4 == 0 && self.year % 100 != 0) || self.year % 400 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        let d = UtcDateTime::from_unix(0);
        assert_eq!((d.year, d.month, d.day, d.weekday_from_monday()), (1970, 1, 1, 3));
        // 2000-02-29 12:34:56 UTC, a leap day on a Tuesday.
        let d = UtcDateTime::from_unix(951_827_696);
        assert_eq!((d.year, d.month, d.day, d.hour, d.minute, d.second), (2000, 2, 29, 12, 34, 56));
        assert_eq!(d.weekday_from_monday(), 1);
        assert!(d.is_leap_year());
        assert_eq!(d.compact(), "20000229-123456");
        let d = UtcDateTime::from_unix(-86_400);
        assert_eq!((d.year, d.month, d.day), (1969, 12, 31));
    }
}
