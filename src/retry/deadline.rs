//! Until when a submission may be sent: after that its pair is failed with its last cause,
//! not tried again. Times are the database's: `now` is when the database claimed the tick.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;

/// Until when a submission of this tick may be sent: the next tick of the schedule, whose fresh
/// rate supersedes it, or sooner with `provider.retry_deadline`. Counted from when the tick is
/// planned, so that a tick claimed late (after a database outage) still gets its retries; the
/// daemon plans only the latest due tick, whose next tick is the next one after now anyway.
/// With `within` (an ad-hoc run's bound), at most that long after `now`.
pub fn deadline(
    settings: &Settings,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
    within: Option<Duration>,
) -> DateTime<Utc> {
    let from = tick.max(now);
    let next = settings.schedule.next_tick(from);
    let limit = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    let mut deadline = match settings.provider.retry_deadline {
        Some(retry) => next.min(from + limit(retry)),
        None => next,
    };
    if let Some(within) = within {
        deadline = deadline.min(now + chrono::Duration::from_std(within).unwrap_or_default());
    }
    deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "[provider]\napi_key = \"bDqJFiq9\"\napi_secret = \"7bz1lzh9\"\n{extra}\
             [schedule]\ncron = \"0 0 * * *\"\n"
        );
        crate::config::from_toml(&text, std::path::Path::new("t.toml"), &|_| None).unwrap()
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_deadline_is_the_next_tick_or_the_configured_limit() {
        let settings_ = settings("");
        let tick = at("2026-03-01T00:00:00Z");
        assert_eq!(
            deadline(&settings_, tick, tick, None),
            tick + chrono::Duration::days(1)
        );
        let late = tick + chrono::Duration::days(3) + chrono::Duration::hours(5);
        assert_eq!(
            deadline(&settings_, tick, late, None),
            tick + chrono::Duration::days(4),
            "a tick planned late counts from now"
        );
        let limited = settings("retry_deadline = \"2h\"\n");
        assert_eq!(
            deadline(&limited, tick, tick, None),
            tick + chrono::Duration::hours(2)
        );
    }

    #[test]
    fn an_ad_hoc_bound_counts_from_the_claim_and_never_extends_the_deadline() {
        let settings = settings("");
        let tick = at("2026-03-01T23:00:00Z");
        let claimed = tick + chrono::Duration::minutes(10);
        assert_eq!(
            deadline(&settings, tick, claimed, Some(Duration::from_secs(600))),
            claimed + chrono::Duration::minutes(10)
        );
        assert_eq!(
            deadline(&settings, tick, claimed, Some(Duration::from_secs(86_400))),
            at("2026-03-02T00:00:00Z"),
            "the next tick comes first"
        );
    }
}
