//! When cycles run: a cron expression (5 fields, or 6 with leading seconds) evaluated in an IANA
//! time zone, and the policy for ticks that were missed. Pure functions of a wall-clock instant,
//! so that daylight-saving changes and clock jumps are tested without waiting; the loop that
//! sleeps until these instants lives in `daemon`.
//!
//! Daylight saving follows croner, which implements the Open Cron Pattern Specification (and so
//! Vixie cron): a fixed-time job whose local time is skipped in spring runs once, right after the
//! jump; one whose local time repeats in autumn runs once, at the first occurrence; interval and
//! wildcard jobs run on every real instant that matches, in both repeated hours.

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

/// A parsed cron expression; its text is kept for messages.
#[derive(Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.text).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Schedule {
    /// Parses the standard 5-field form (minute precision) or the 6-field form whose first
    /// field is seconds. Year fields and an empty pattern are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        if !(fields == 5 || fields == 6 || text.trim_start().starts_with('@')) {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (with leading seconds), found {fields}"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| e.to_string())?;
        let schedule = Self {
            cron,
            text: text.trim().to_owned(),
        };
        // A pattern that never matches (30 February) would leave the daemon idle forever.
        if schedule.next_after(Utc::now(), chrono_tz::UTC).is_none() {
            return Err("the pattern never matches".to_owned());
        }
        Ok(schedule)
    }

    /// The first fire time strictly after `t`, evaluated in `tz`.
    ///
    /// croner searches in local wall-clock time, so near an autumn fall-back its
    /// `find_next_occurrence` can return an instant at or before `t` (02:30 CEST when it is
    /// 02:10 CET) or skip the second pass of the repeated hour. Where the zone's offset changes
    /// within three hours of either end, the occurrences from three hours earlier are scanned
    /// instead and the earliest real instant after `t` is taken.
    pub fn next_after(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let now = t.with_timezone(&tz).trunc_subsecs(0);
        let margin = chrono::Duration::hours(3);
        if let Ok(next) = self.cron.find_next_occurrence(&now, false) {
            if next > now && (now - margin).offset() == (next + margin).offset() {
                return Some(next.with_timezone(&Utc));
            }
        }
        let mut best: Option<DateTime<Tz>> = None;
        for candidate in self.cron.iter_after(now - margin).take(100_000) {
            if best.is_some_and(|b| candidate.naive_local() > b.naive_local() + margin) {
                break;
            }
            if candidate > now && best.is_none_or(|b| candidate < b) {
                best = Some(candidate);
            }
        }
        best.map(|b| b.with_timezone(&Utc))
    }

    /// The latest fire time at or before `t`: the tick a late wake-up should run for.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let mut latest = self
            .cron
            .find_previous_occurrence(&t.with_timezone(&tz).trunc_subsecs(0), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
            .filter(|d| *d <= t)?;
        // The same wall-clock search can fall short in a repeated hour: walk forward.
        while let Some(next) = self.next_after(latest, tz).filter(|n| *n <= t) {
            latest = next;
        }
        Some(latest)
    }

    /// The next `n` fire times after `t`, in the zone, for `check` and the logs.
    pub fn upcoming(&self, t: DateTime<Utc>, tz: Tz, n: usize) -> Vec<DateTime<Tz>> {
        let mut out = Vec::with_capacity(n);
        let mut at = t;
        while out.len() < n {
            match self.next_after(at, tz) {
                Some(next) => {
                    out.push(next.with_timezone(&tz));
                    at = next;
                }
                None => break,
            }
        }
        out
    }
}

/// What the loop should do when it wakes at `now` having planned to fire at `planned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Not yet time (the timer was early, or the wall clock was stepped back): sleep again.
    TooEarly,
    /// Run the cycle for this tick. `missed` counts (up to 1000) the ticks passed over because
    /// the wake-up was late (suspend, NTP step, downtime): they are not replayed one by one.
    Fire { tick: DateTime<Utc>, missed: usize },
}

/// The catch-up policy: on waking, run one cycle for the latest tick that is due, never a burst.
pub fn on_wake(schedule: &Schedule, tz: Tz, planned: DateTime<Utc>, now: DateTime<Utc>) -> Wake {
    if now < planned {
        return Wake::TooEarly;
    }
    let tick = schedule
        .latest_at_or_before(now, tz)
        .unwrap_or(planned)
        .max(planned);
    let mut missed = 0;
    let mut t = planned;
    while t < tick && missed < 1_000 {
        missed += 1;
        match schedule.next_after(t, tz) {
            Some(next) => t = next,
            None => break,
        }
    }
    Wake::Fire { tick, missed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_field_forms_parse_and_others_do_not() {
        assert!(Schedule::parse("*/10 * * * *").is_ok());
        assert!(Schedule::parse("*/2 * * * * *").is_ok());
        assert!(Schedule::parse("* * * *").is_err());
        assert!(Schedule::parse("0 0 0 * * * 2030").is_err());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("0 0 30 2 *").is_err());
    }

    #[test]
    fn a_five_field_pattern_fires_on_the_minute_and_six_fields_on_the_second() {
        let tz = chrono_tz::UTC;
        let s = Schedule::parse("*/10 * * * *").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z"), tz),
            Some(utc("2026-01-01T00:10:00Z"))
        );
        let s = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z"), tz),
            Some(utc("2026-01-01T00:00:02Z"))
        );
    }

    #[test]
    fn ticks_are_evaluated_in_the_configured_zone() {
        let s = Schedule::parse("0 9 * * *").unwrap();
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T00:00:00Z"), tz),
            Some(utc("2026-01-01T01:00:00Z"))
        );
    }

    fn fire_times(pattern: &str, tz: Tz, from: &str, to: &str) -> Vec<String> {
        let s = Schedule::parse(pattern).unwrap();
        let (mut t, end) = (utc(from), utc(to));
        let mut out = Vec::new();
        while let Some(next) = s.next_after(t, tz).filter(|n| *n < end) {
            out.push(next.with_timezone(&tz).to_rfc3339());
            t = next;
        }
        out
    }

    #[test]
    fn a_fixed_time_in_the_skipped_spring_hour_fires_once_right_after_the_jump() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let fired = fire_times(
            "30 2 * * *",
            berlin,
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z",
        );
        assert_eq!(
            fired,
            [
                "2026-03-28T02:30:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:30:00+02:00",
                "2026-03-31T02:30:00+02:00",
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_repeated_autumn_hour_fires_once() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let fired = fire_times(
            "30 2 * * *",
            berlin,
            "2026-10-23T12:00:00Z",
            "2026-10-27T12:00:00Z",
        );
        assert_eq!(
            fired,
            [
                "2026-10-24T02:30:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-26T02:30:00+01:00",
                "2026-10-27T02:30:00+01:00",
            ]
        );
    }

    #[test]
    fn an_interval_job_fires_in_both_repeated_hours_and_never_twice_at_one_instant() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let fired = fire_times(
            "0 * * * *",
            berlin,
            "2026-10-24T23:30:00Z",
            "2026-10-25T02:30:00Z",
        );
        assert_eq!(
            fired,
            [
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:00:00+01:00",
                "2026-10-25T03:00:00+01:00",
            ]
        );
    }

    #[test]
    fn a_late_wake_runs_one_cycle_for_the_latest_missed_tick() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let tz = chrono_tz::UTC;
        let planned = utc("2026-01-01T00:10:00Z");
        assert_eq!(
            on_wake(&s, tz, planned, utc("2026-01-01T00:09:59Z")),
            Wake::TooEarly
        );
        assert_eq!(
            on_wake(&s, tz, planned, utc("2026-01-01T00:10:00.2Z")),
            Wake::Fire {
                tick: planned,
                missed: 0
            }
        );
        // a suspend from 00:05 to 03:07: one cycle, for 03:00
        assert_eq!(
            on_wake(&s, tz, planned, utc("2026-01-01T03:07:00Z")),
            Wake::Fire {
                tick: utc("2026-01-01T03:00:00Z"),
                missed: 17
            }
        );
    }
}
