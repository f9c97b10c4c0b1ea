//! The source's clock, for incremental windows that advance with time and not only with data.
//!
//! An incremental window must end where the source's clock stood when the run started: a row
//! committed after the run read its key range then carries a later timestamp (minus the
//! overlap, for transactions that commit late). Reading that clock is not direct:
//! - the HTTP `Date` header of the source's answers is UTC (the web server's clock);
//! - `derniere_action` is a naive timestamp in the database server's local time (its time zone,
//!   its own clock, possibly skewed).
//!
//! So gn2pg learns the offset between the two from evidence: a row whose `derniere_action` is
//! `d`, served in an answer dated `D`, existed when that answer was made, so the offset is at
//! least `d - D` (minus a second: `Date` has whole seconds). The newest action of the export,
//! read once per run, gives the tightest such bound when the source is active. The window end
//! is then `Date at run start + the largest recent lower bound`: never ahead of the source's
//! true clock (no row lost), and moving on with `Date` while the source is quiet (a bulk
//! update is re-read only while it lies within the overlap of a run's start).
//!
//! Limits, documented in the README: a clock that jumps back (a daylight-saving fall-back in
//! local time) makes old evidence too high for as long as it is kept (48 hours); without a
//! `Date` header the engine falls back to the newest timestamp seen minus the overlap.
//! No PostgreSQL here: arithmetic on naive microseconds since 2000-01-01 00:00:00.

use crate::encode::rows::{timestamp_micros, timestamp_text};

pub const US_PER_SEC: i64 = 1_000_000;

/// No time zone is more than 14 hours ahead of UTC: a newest action further ahead of the
/// source's `Date` is a bad row (a timestamp typed in the future), not evidence about its clock.
const MAX_AHEAD_US: i64 = 14 * 3600 * US_PER_SEC;

/// A timestamp as GeoNature serialises `timestamp without time zone`
/// (`YYYY-MM-DD HH:MM:SS[.ffffff]`, also with `T`), in the source's own clock: microseconds
/// since 2000-01-01 00:00:00, as the loader reads them.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    timestamp_micros(s.trim())
}

/// The form gn2pg sends back in `filter_d_up_<updated>` and records in the run log.
pub fn format_timestamp(us: i64) -> String {
    timestamp_text(us)
}

/// An HTTP `Date` (RFC 9110 IMF-fixdate, `Mon, 07 Dec 2026 16:15:25 GMT`), as UTC, on the same
/// scale as [`parse_timestamp`].
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (_, rest) = s.trim().split_once(", ")?;
    let mut p = rest.split(' ');
    let (day, month_name, year, time) = (p.next()?, p.next()?, p.next()?, p.next()?);
    if p.next()? != "GMT" || p.next().is_some() || day.len() != 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let month = MONTHS.iter().position(|m| *m == month_name)? + 1;
    timestamp_micros(&format!("{year}-{month:02}-{day} {time}"))
}

/// What one answer proves about the offset between the source's timestamps and UTC: the
/// newest action it reports (`newest`, source clock) existed when it was dated (`date`, UTC).
/// None when either is unreadable, or when the newest action lies impossibly far ahead.
pub fn offset_evidence(newest: &str, date: &str) -> Option<i64> {
    let d = parse_timestamp(newest)?;
    let dated = parse_http_date(date)?;
    // `Date` drops the fraction of its second: the answer may be up to a second younger.
    let offset = d - dated - US_PER_SEC;
    (offset <= MAX_AHEAD_US).then_some(offset)
}

/// The source's clock when the run started (`started`, the `Date` of its first answer), from
/// the lower bounds on the offset gathered recently. None without evidence.
pub fn window_end(started: i64, offsets: &[i64]) -> Option<i64> {
    offsets.iter().copied().filter(|o| *o <= MAX_AHEAD_US).max().map(|o| started.saturating_add(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_in_the_source_format() {
        let t = parse_timestamp("2024-02-29 23:59:07.000123").unwrap();
        assert_eq!(format_timestamp(t), "2024-02-29 23:59:07.000123");
        assert_eq!(parse_timestamp("2024-02-29T23:59:07.000123"), Some(t));
        assert_eq!(format_timestamp(parse_timestamp("2023-05-12 08:30:00").unwrap()), "2023-05-12 08:30:00.000000");
        assert_eq!(parse_timestamp("2023-05-12 08:30:00.5").unwrap() % US_PER_SEC, 500_000);
        assert_eq!(parse_timestamp("2023-05-12"), parse_timestamp("2023-05-12 00:00:00"));
        assert_eq!(format_timestamp(parse_timestamp("1969-12-31 23:59:59.5").unwrap()), "1969-12-31 23:59:59.500000");
        for bad in ["", "yesterday", "2023-02-30 10:00:00", "2023-05-12 25:00:00", "2023-05-12 10:00:00.1234567"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_dates_are_utc() {
        let d = parse_http_date("Mon, 07 Dec 2026 16:15:25 GMT").unwrap();
        assert_eq!(format_timestamp(d), "2026-12-07 16:15:25.000000");
        assert_eq!(parse_http_date("Sat, 01 Jan 2000 00:00:00 GMT"), Some(0));
        for bad in [
            "",
            "Mon, 07 Dec 2026 16:15:25",
            "07 Dec 2026 16:15:25 GMT",
            "Mon, 07 Foo 2026 16:15:25 GMT",
            "Mon, 31 Feb 2026 16:15:25 GMT",
            "Mon, 07 Dec 2026 16:15 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn evidence_is_a_lower_bound_of_the_offset() {
        // A source in UTC+2 whose newest change is 10 minutes old when answered.
        let e = offset_evidence("2026-07-01 14:20:00", "Wed, 01 Jul 2026 12:30:00 GMT").unwrap();
        assert_eq!(e, (2 * 3600 - 600 - 1) * US_PER_SEC);
        // A database clock two hours behind its web server.
        let e = offset_evidence("2026-07-01 10:30:00.250", "Wed, 01 Jul 2026 12:30:00 GMT").unwrap();
        assert_eq!(e, -2 * 3600 * US_PER_SEC + 250_000 - US_PER_SEC);
        // A row typed in 2099 says nothing about the clock.
        assert_eq!(offset_evidence("2099-01-01 00:00:00", "Wed, 01 Jul 2026 12:30:00 GMT"), None);
        assert_eq!(offset_evidence("2026-07-01 10:30:00", "not a date"), None);
    }

    #[test]
    fn the_window_end_follows_the_clock_and_the_best_evidence() {
        let start = parse_http_date("Wed, 01 Jul 2026 12:30:00 GMT").unwrap();
        let loose = -(400 * 86_400) * US_PER_SEC;
        let tight = (2 * 3600 - 5) * US_PER_SEC;
        let end = window_end(start, &[loose, tight]).unwrap();
        assert_eq!(format_timestamp(end), "2026-07-01 14:29:55.000000");
        // A quiet source: the same evidence a day later moves the window end by a day.
        let later = window_end(start + 86_400 * US_PER_SEC, &[tight]).unwrap();
        assert_eq!(later - end, 86_400 * US_PER_SEC);
        assert_eq!(window_end(start, &[]), None);
        assert_eq!(window_end(start, &[MAX_AHEAD_US + 1]), None);
    }
}
