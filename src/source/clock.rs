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
//! No PostgreSQL here: pure arithmetic on microseconds since 1970-01-01 00:00:00 (naive).

pub const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

/// No time zone is more than 14 hours ahead of UTC: a newest action further ahead of the
/// source's `Date` is a bad row (a timestamp typed in the future), not evidence about its clock.
const MAX_AHEAD_US: i64 = 14 * 3600 * US_PER_SEC;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn number(s: &str) -> Option<i64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn at(y: i64, m: u32, d: u32, hh: i64, mi: i64, ss: i64) -> Option<i64> {
    let valid = (1..=12).contains(&m)
        && d >= 1
        && d <= days_in_month(y, m)
        && (0..24).contains(&hh)
        && (0..60).contains(&mi)
        && (0..61).contains(&ss);
    valid.then(|| days_from_civil(y, m, d) * US_PER_DAY + (hh * 3600 + mi * 60 + ss.min(59)) * US_PER_SEC)
}

/// A timestamp as GeoNature serialises `timestamp without time zone`
/// (`YYYY-MM-DD HH:MM:SS[.ffffff]`, also with `T`), in the source's own clock.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.split('-');
    let (y, m, day) = (number(d.next()?)?, number(d.next()?)?, number(d.next()?)?);
    if d.next().is_some() || !(1..=9999).contains(&y) {
        return None;
    }
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':');
    let (hh, mi) = (number(t.next()?)?, number(t.next()?)?);
    let ss = t.next().map_or(Some(0), number)?;
    if t.next().is_some() || frac.len() > 6 || (!frac.is_empty() && number(frac).is_none()) {
        return None;
    }
    let micros = if frac.is_empty() { 0 } else { number(frac)? * 10i64.pow(6 - frac.len() as u32) };
    Some(at(y, m as u32, day as u32, hh, mi, ss)? + micros)
}

/// The form gn2pg sends back in `filter_d_up_<updated>` and records in the run log.
pub fn format_timestamp(us: i64) -> String {
    let (y, m, d) = civil_from_days(us.div_euclid(US_PER_DAY));
    let rem = us.rem_euclid(US_PER_DAY);
    let secs = rem / US_PER_SEC;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:06}", secs / 3600, (secs / 60) % 60, secs % 60, rem % US_PER_SEC)
}

/// An HTTP `Date` (RFC 9110 IMF-fixdate, `Mon, 07 Dec 2026 16:15:25 GMT`), as UTC.
pub fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (_, rest) = s.trim().split_once(", ")?;
    let mut p = rest.split(' ');
    let day = number(p.next()?)?;
    let month_name = p.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as u32 + 1;
    let year = number(p.next()?)?;
    let time = p.next()?;
    if p.next()? != "GMT" || p.next().is_some() {
        return None;
    }
    let mut t = time.split(':');
    let (hh, mi, ss) = (number(t.next()?)?, number(t.next()?)?, number(t.next()?)?);
    if t.next().is_some() {
        return None;
    }
    at(year, month, day as u32, hh, mi, ss)
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
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        for bad in ["", "Mon, 07 Dec 2026 16:15:25", "07 Dec 2026 16:15:25 GMT", "Mon, 07 Foo 2026 16:15:25 GMT"] {
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
