//! A cron expression, evaluated in civil time of an IANA zone.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) as in crontab(5), or six with a
//! leading `second` field (a muster extension, so tests can open a window every few seconds).
//! Each field takes `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, and comma lists of
//! those; day-of-week is 0-7 with 0 and 7 both Sunday. When both day fields are restricted a day
//! matches if either does (crontab's rule).
//!
//! Daylight saving: a civil time that does not exist (the spring-forward gap) is taken as the
//! instant it would be with the offset before the gap (02:30 becomes 03:30), and a civil time that
//! occurs twice (fall-back) is taken once, at its first occurrence. Both follow RFC 9557's
//! "compatible" disambiguation, which keeps civil order, so occurrences come out in order.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// How far ahead the next occurrence is searched: 29 February on a given weekday recurs within
/// 28 years; a cron that matches nothing in that span is refused when validated.
const SEARCH_DAYS: i32 = 366 * 29;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1-31.
    days: u32,
    /// Bits 1-12.
    months: u16,
    /// Bits 0-6, Sunday = 0.
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
}

impl Cron {
    /// Parses an expression; the error says which field is wrong and how.
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let (sec, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "has {n} fields; give 5 (minute hour day-of-month month day-of-week) or 6 (second first)"
                ))
            }
        };
        let seconds = field("second", sec, 0, 59)?;
        let minutes = field("minute", rest[0], 0, 59)?;
        let hours = field("hour", rest[1], 0, 23)? as u32;
        let days = field("day-of-month", rest[2], 1, 31)? as u32;
        let months = field("month", rest[3], 1, 12)? as u16;
        let mut dow = field("day-of-week", rest[4], 0, 7)?;
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & 0x7f;
        }
        Ok(Cron {
            seconds,
            minutes,
            hours,
            days,
            months,
            weekdays: dow as u8,
            days_restricted: !rest[2].starts_with('*'),
            weekdays_restricted: !rest[4].starts_with('*'),
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        if self.months & (1 << d.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << d.day()) != 0;
        let dow = self.weekdays & (1 << d.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first occurrence strictly after `after` (ms since the epoch), in `tz`; `None` if
    /// there is none within the search span.
    pub fn next_after(&self, after: i64, tz: &TimeZone) -> Option<i64> {
        let start = jiff::Timestamp::from_millisecond(after).ok()?;
        let civil = start.to_zoned(tz.clone()).datetime();
        let first = (civil.hour(), civil.minute(), civil.second());
        let mut day = civil.date();
        for n in 0..SEARCH_DAYS {
            if self.day_matches(day) {
                for h in bits(u64::from(self.hours), 24) {
                    for m in bits(self.minutes, 60) {
                        for s in bits(self.seconds, 60) {
                            if n == 0 && (h, m, s) < first {
                                continue;
                            }
                            let dt = day.at(h, m, s, 0);
                            let at = instant(dt, tz)?;
                            if at > after {
                                return Some(at);
                            }
                        }
                    }
                }
            }
            day = day.tomorrow().ok()?;
        }
        None
    }
}

fn instant(dt: DateTime, tz: &TimeZone) -> Option<i64> {
    let z = tz.to_ambiguous_zoned(dt).compatible().ok()?;
    Some(z.timestamp().as_millisecond())
}

/// The set bits below `n`, ascending, as `i8` (what jiff's civil constructors take).
fn bits(mask: u64, n: i8) -> impl Iterator<Item = i8> {
    (0..n).filter(move |b| mask & (1u64 << b) != 0)
}

fn field(name: &str, text: &str, lo: u32, hi: u32) -> Result<u64, String> {
    let mut mask = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 =
                    s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("{name} field: step {s:?} is not a positive number")
                    })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (num(name, a, lo, hi)?, num(name, b, lo, hi)?)
        } else {
            let a = num(name, range, lo, hi)?;
            (a, if part.contains('/') { hi } else { a })
        };
        if a > b {
            return Err(format!("{name} field: range {a}-{b} runs backwards"));
        }
        let mut v = a;
        while v <= b {
            mask |= 1u64 << v;
            v += step;
        }
    }
    Ok(mask)
}

fn num(name: &str, text: &str, lo: u32, hi: u32) -> Result<u32, String> {
    text.parse::<u32>()
        .ok()
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| format!("{name} field: {text:?} is not a number from {lo} to {hi}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        s.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn nightly_in_berlin() {
        let c = Cron::parse("0 1 * * *").unwrap();
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // 01:00 CET is 00:00 UTC in winter, 23:00 UTC the day before in summer.
        assert_eq!(
            c.next_after(ms("2026-01-10T12:00:00Z"), &tz),
            Some(ms("2026-01-11T00:00:00Z"))
        );
        assert_eq!(
            c.next_after(ms("2026-07-10T12:00:00Z"), &tz),
            Some(ms("2026-07-10T23:00:00Z"))
        );
    }

    #[test]
    fn spring_forward_gap_moves_later_and_fall_back_happens_once() {
        let c = Cron::parse("30 2 * * *").unwrap();
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // 29 March 2026: 02:00 CET jumps to 03:00 CEST; 02:30 is taken as 03:30 CEST.
        assert_eq!(
            c.next_after(ms("2026-03-28T12:00:00Z"), &tz),
            Some(ms("2026-03-29T01:30:00Z"))
        );
        // 25 October 2026: 02:30 happens twice; only the first (CEST) counts.
        let first = c.next_after(ms("2026-10-24T12:00:00Z"), &tz).unwrap();
        assert_eq!(first, ms("2026-10-25T00:30:00Z"));
        assert_eq!(c.next_after(first, &tz), Some(ms("2026-10-26T01:30:00Z")));
    }

    #[test]
    fn fields_and_errors() {
        let c = Cron::parse("*/10 * * * * *").unwrap();
        let tz = TimeZone::UTC;
        assert_eq!(
            c.next_after(ms("2026-01-01T00:00:05Z"), &tz),
            Some(ms("2026-01-01T00:00:10Z"))
        );
        let weekdays = Cron::parse("0 9 * * 1-5").unwrap();
        // 2026-01-03 is a Saturday.
        assert_eq!(
            weekdays.next_after(ms("2026-01-03T00:00:00Z"), &tz),
            Some(ms("2026-01-05T09:00:00Z"))
        );
        let sunday = Cron::parse("0 0 * * 7").unwrap();
        assert_eq!(
            sunday.next_after(ms("2026-01-01T00:00:00Z"), &tz),
            Some(ms("2026-01-04T00:00:00Z"))
        );
        assert!(Cron::parse("0 25 * * *").unwrap_err().contains("hour"));
        assert!(Cron::parse("* * *").unwrap_err().contains("3 fields"));
        assert!(Cron::parse("*/0 * * * *").unwrap_err().contains("step"));
        assert!(Cron::parse("5-1 * * * *")
            .unwrap_err()
            .contains("backwards"));
        let never = Cron::parse("0 0 31 2 *").unwrap();
        assert_eq!(never.next_after(0, &tz), None);
    }
}
