//! Cron expressions as pg_cron 1.4.2 reads them (its parser is Vixie cron's `entry.c`), and the
//! next time one fires. No PostgreSQL here: `gn2pg_schedule` validates with it before asking
//! pg_cron, and `gn2pg.flow_status` shows the next run time with it (pg_cron 1.4.2 has no such
//! function, and its jobs live in another database anyway).
//!
//! Wording: a *field* is one of the five space-separated parts (minute hour day-of-month month
//! day-of-week); an *item* is one comma-separated element of a field (`*`, `5`, `1-5`, `*/15`,
//! `8-18/2`, or a name such as `mon` or `jan`). Times are UTC: pg_cron 1.4.2 has no time zone.

use crate::calendar::{civil_from_days, days_from_civil};
use std::fmt;

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Vixie cron: when either day field starts with `*`, a day must match both fields; when
    /// both are restricted, matching either is enough (`0 0 1 * mon` = the 1st and every Monday).
    day_star: bool,
    weekday_star: bool,
    /// `@reboot`: runs when pg_cron starts, never on a clock.
    reboot: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    what: &'static str,
    low: u32,
    high: u32,
    /// Names for `low..`, e.g. `jan` = 1.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field { what: "minute", low: 0, high: 59, names: &[] },
    Field { what: "hour", low: 0, high: 23, names: &[] },
    Field { what: "day of month", low: 1, high: 31, names: &[] },
    Field { what: "month", low: 1, high: 12, names: &MONTHS },
    // 7 is Sunday too.
    Field { what: "day of week", low: 0, high: 7, names: &WEEKDAYS },
];

fn number(f: &Field, s: &str) -> Result<u32, CronError> {
    let n = if let Some(i) = f.names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        f.low + i as u32
    } else if !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u32>().map_err(|_| CronError(format!("invalid {} {s:?}", f.what)))?
    } else {
        return Err(CronError(format!("invalid {} {s:?}", f.what)));
    };
    if n < f.low || n > f.high {
        return Err(CronError(format!("{} {n} is out of range {}-{}", f.what, f.low, f.high)));
    }
    Ok(n)
}

/// Bits of one field, and whether it starts with `*`.
fn field(f: &Field, text: &str) -> Result<(u64, bool), CronError> {
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step = s
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1 && *n <= f.high.max(1))
                    .ok_or_else(|| CronError(format!("invalid step {s:?} in {} field {text:?}", f.what)))?;
                (r, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" {
            (f.low, f.high)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(f, a)?, number(f, b)?);
            if a > b {
                return Err(CronError(format!("{} range {range:?} runs backwards", f.what)));
            }
            (a, b)
        } else {
            if step != 1 {
                // Vixie cron reads `5/10` as an error: a step needs `*` or a range.
                return Err(CronError(format!("a step needs * or a range, not {item:?} ({} field)", f.what)));
            }
            let n = number(f, range)?;
            (n, n)
        };
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text.starts_with('*')))
}

/// Parses a pg_cron 1.4.2 schedule: five fields, or `@hourly`, `@daily`, `@midnight`, `@weekly`,
/// `@monthly`, `@yearly`, `@annually`, `@reboot`.
pub fn parse(expr: &str) -> Result<Schedule, CronError> {
    let expr = expr.trim();
    let expanded = match expr.to_ascii_lowercase().as_str() {
        "@reboot" => {
            return Ok(Schedule {
                minutes: 0,
                hours: 0,
                days: 0,
                months: 0,
                weekdays: 0,
                day_star: true,
                weekday_star: true,
                reboot: true,
            })
        }
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        s if s.starts_with('@') => {
            return Err(CronError(format!(
            "unknown schedule macro {expr:?} (pg_cron 1.4 knows @hourly, @daily, @weekly, @monthly, @yearly, @reboot)"
        )))
        }
        _ => expr,
    };
    let parts: Vec<&str> = expanded.split_whitespace().collect();
    if parts.len() != 5 {
        return Err(CronError(format!(
            "{expr:?} has {} fields; a schedule has five: minute hour day-of-month month day-of-week",
            parts.len()
        )));
    }
    let mut out = [(0u64, false); 5];
    for (i, (f, text)) in FIELDS.iter().zip(parts).enumerate() {
        out[i] = field(f, text)?;
    }
    let mut weekdays = out[4].0;
    if weekdays & (1 << 7) != 0 {
        weekdays |= 1;
    }
    Ok(Schedule {
        minutes: out[0].0,
        hours: out[1].0 as u32,
        days: out[2].0 as u32,
        months: out[3].0 as u16,
        weekdays: (weekdays & 0x7f) as u8,
        day_star: out[2].1,
        weekday_star: out[4].1,
        reboot: false,
    })
}

impl Schedule {
    fn day_matches(&self, day: u32, weekday: u32) -> bool {
        let d = self.days & (1 << day) != 0;
        let w = self.weekdays & (1 << weekday) != 0;
        if self.day_star || self.weekday_star {
            d && w
        } else {
            d || w
        }
    }

    /// The first minute strictly after `after` (Unix seconds, UTC) at which the schedule fires,
    /// as Unix seconds; `None` for `@reboot` or a date that never comes (`0 0 30 2 *`).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        if self.reboot {
            return None;
        }
        let mut minute = after.div_euclid(60) + 1;
        // Eight years cover every leap-day combination; each turn skips a month, a day, an hour
        // or a minute, so this stays a few thousand turns at worst.
        let limit = minute + 8 * 366 * 1440;
        while minute < limit {
            let days = minute.div_euclid(1440);
            let (y, m, d) = civil_from_days(days);
            if self.months & (1 << m) == 0 {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                minute = days_from_civil(ny, nm, 1) * 1440;
                continue;
            }
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            if !self.day_matches(d, weekday) {
                minute = (days + 1) * 1440;
                continue;
            }
            let in_day = minute.rem_euclid(1440);
            let (h, mi) = ((in_day / 60) as u32, (in_day % 60) as u32);
            if self.hours & (1 << h) == 0 {
                minute = days * 1440 + i64::from(h + 1) * 60;
                continue;
            }
            if self.minutes & (1 << mi) == 0 {
                minute += 1;
                continue;
            }
            return Some(minute * 60);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a UTC time.
    fn t(y: i64, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60
    }

    fn next(expr: &str, after: i64) -> Option<i64> {
        parse(expr).unwrap().next_after(after)
    }

    #[test]
    fn every_thirty_minutes() {
        let now = t(2025, 5, 9, 10, 7) + 13;
        assert_eq!(next("*/30 * * * *", now), Some(t(2025, 5, 9, 10, 30)));
        assert_eq!(next("*/30 * * * *", t(2025, 5, 9, 10, 30)), Some(t(2025, 5, 9, 11, 0)), "strictly after");
        assert_eq!(next("* * * * *", t(2025, 5, 9, 23, 59) + 59), Some(t(2025, 5, 10, 0, 0)));
    }

    #[test]
    fn daily_weekly_monthly_yearly() {
        let now = t(2025, 12, 31, 4, 0);
        assert_eq!(next("0 3 * * *", now), Some(t(2026, 1, 1, 3, 0)));
        assert_eq!(next("@daily", now), Some(t(2026, 1, 1, 0, 0)));
        assert_eq!(next("@hourly", now), Some(t(2025, 12, 31, 5, 0)));
        // 2026-01-04 is a Sunday.
        assert_eq!(next("@weekly", now), Some(t(2026, 1, 4, 0, 0)));
        assert_eq!(next("30 6 * * mon-fri", t(2026, 1, 2, 7, 0)), Some(t(2026, 1, 5, 6, 30)));
        assert_eq!(next("0 0 * * 7", now), next("0 0 * * 0", now), "7 is Sunday");
        assert_eq!(next("@monthly", now), Some(t(2026, 1, 1, 0, 0)));
        assert_eq!(next("@yearly", t(2026, 1, 1, 0, 0)), Some(t(2027, 1, 1, 0, 0)));
        assert_eq!(next("15 2 1 jan,jul *", now), Some(t(2026, 1, 1, 2, 15)));
        assert_eq!(next("0 0 29 2 *", now), Some(t(2028, 2, 29, 0, 0)), "next leap day");
        assert_eq!(next("0 8-18/2 * * *", t(2026, 1, 1, 18, 1)), Some(t(2026, 1, 2, 8, 0)));
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 13th, or any Friday: from Monday 2026-01-05, Friday the 9th comes first.
        assert_eq!(next("0 12 13 * fri", t(2026, 1, 5, 0, 0)), Some(t(2026, 1, 9, 12, 0)));
        // A star in one day field means both must match: Fridays that are the 13th... only via */1.
        assert_eq!(next("0 12 */1 * fri", t(2026, 1, 5, 0, 0)), Some(t(2026, 1, 9, 12, 0)));
        assert_eq!(next("0 12 13 * *", t(2026, 1, 5, 0, 0)), Some(t(2026, 1, 13, 12, 0)));
    }

    #[test]
    fn never_and_reboot() {
        assert_eq!(next("0 0 30 2 *", t(2026, 1, 1, 0, 0)), None);
        assert_eq!(next("@reboot", 0), None);
        assert!(parse("@REBOOT").is_ok());
    }

    #[test]
    fn refusals_say_why() {
        for (expr, needle) in [
            ("* * * *", "five"),
            ("* * * * * *", "five"),
            ("60 * * * *", "minute 60 is out of range"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day of week"),
            ("5/10 * * * *", "a step needs"),
            ("*/0 * * * *", "invalid step"),
            ("10-5 * * * *", "backwards"),
            ("* * * foo *", "invalid month"),
            ("@fortnightly", "unknown schedule macro"),
            ("30 seconds", "five"),
            ("", "five"),
        ] {
            let e = parse(expr).unwrap_err().0;
            assert!(e.contains(needle), "{expr:?}: {e}");
        }
    }
}
