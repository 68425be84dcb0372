//! Budget periods, aligned to the UTC calendar.
//!
//! A monthly budget resets at 00:00 UTC on the first of the month, not thirty
//! days after the first request, so spend lines up with invoices.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// How long a budget's window lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// From hh:00 to the next hour.
    Hour,
    /// From 00:00 UTC to the next midnight.
    Day,
    /// From Monday 00:00 UTC.
    Week,
    /// From the first of the month, 00:00 UTC.
    Month,
}

impl Period {
    /// Parses `hour`, `day`, `week` or `month`.
    pub fn parse(text: &str) -> Option<Period> {
        match text {
            "hour" => Some(Period::Hour),
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    /// The start of the window containing `now_ms` (Unix milliseconds).
    pub fn window_start(self, now_ms: i64) -> i64 {
        let now = to_datetime(now_ms);
        let date = now.date_naive();
        let start = match self {
            Period::Hour => {
                return now_ms - now_ms.rem_euclid(3_600_000);
            }
            Period::Day => date,
            Period::Week => date - Duration::days(i64::from(date.weekday().num_days_from_monday())),
            Period::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap_or(date),
        };
        midnight_ms(start)
    }

    /// The start of the next window after the one containing `now_ms`.
    pub fn next_window(self, now_ms: i64) -> i64 {
        let start = self.window_start(now_ms);
        match self {
            Period::Hour => start + 3_600_000,
            Period::Day => start + 86_400_000,
            Period::Week => start + 7 * 86_400_000,
            Period::Month => {
                let date = to_datetime(start).date_naive();
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                NaiveDate::from_ymd_opt(year, month, 1).map_or(start + 31 * 86_400_000, midnight_ms)
            }
        }
    }
}

fn to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn midnight_ms(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .map_or(0, |dt| dt.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn windows_follow_the_calendar() {
        let now = ms("2026-12-03T13:45:10Z"); // a Thursday
        assert_eq!(Period::Hour.window_start(now), ms("2026-12-03T13:00:00Z"));
        assert_eq!(Period::Day.window_start(now), ms("2026-12-03T00:00:00Z"));
        assert_eq!(Period::Week.window_start(now), ms("2026-11-30T00:00:00Z"));
        assert_eq!(Period::Month.window_start(now), ms("2026-12-01T00:00:00Z"));
        assert_eq!(Period::Month.next_window(now), ms("2027-01-01T00:00:00Z"));
        assert_eq!(Period::Week.next_window(now), ms("2026-12-07T00:00:00Z"));
    }

    #[test]
    fn months_have_their_real_lengths() {
        let feb = ms("2028-02-15T00:00:00Z");
        assert_eq!(Period::Month.next_window(feb), ms("2028-03-01T00:00:00Z"));
        assert_eq!(
            Period::Month.window_start(ms("2028-03-01T00:00:00Z")),
            ms("2028-03-01T00:00:00Z")
        );
    }
}
