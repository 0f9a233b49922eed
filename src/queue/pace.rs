//! Whether a tick fits its interval. While a scheduled tick has pending rows, each instance
//! counts them every [`EVERY`], takes the pace at which they went (every instance's work), and
//! projects when the last will be done; past the next tick it says so once, by how much and
//! what would help, and the projection is a metric. The arithmetic is pure; the watch reads
//! the queue and the adaptive limit, and decides nothing about sending.

use std::sync::Arc;
use std::time::Duration;

use crate::db::Db;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::provider::concurrency::Limiters;
use crate::queue::context::Context;
use crate::views::metrics;

/// How often the pace is taken.
pub const EVERY: Duration = Duration::from_secs(10);

/// Two counts of a tick's pending rows, and what they say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    pub pending: i64,
    /// Rows finished per second between the two counts.
    pub pace: f64,
    /// How long after the next tick the last pending row will be done; zero when before.
    pub overrun: Duration,
}

/// The projection from `then` pending rows to `now` pending rows `elapsed` apart, with the
/// next tick `next_in` from now. `None` while nothing moved (the provider or the database is
/// down: other lines say so).
pub fn project(then: i64, now: i64, elapsed: Duration, next_in: Duration) -> Option<Projection> {
    let done = then - now;
    if done <= 0 || elapsed.is_zero() {
        return None;
    }
    let pace = done as f64 / elapsed.as_secs_f64();
    let left = Duration::from_secs_f64(now as f64 / pace);
    Some(Projection {
        pending: now,
        pace,
        overrun: left.saturating_sub(next_in),
    })
}

/// What would help a tick that does not fit, from this instance's limit: at its ceiling, the
/// instances are what holds it back; below it, the provider is, and more instances only share it.
pub fn advice(limit: usize, ceiling: usize) -> String {
    if limit >= ceiling {
        format!(
            "this instance sends at its ceiling (provider.max_in_flight = {ceiling}): raise it, or run more instances, or lengthen the schedule's interval"
        )
    } else {
        format!(
            "this instance's concurrency settled at {limit}, below its ceiling of {ceiling}: the provider answers no faster, so more instances would not help; lengthen the schedule's interval, or ask the provider for more capacity"
        )
    }
}

/// The latest open scheduled tick, as [`latest`] reads it.
struct OpenTick {
    run: i64,
    tick: DateTime<Utc>,
    /// The database's time of the count.
    now: DateTime<Utc>,
    pending: i64,
}

async fn latest(pool: &Db) -> anyhow::Result<Option<OpenTick>> {
    use anyhow::Context as _;
    sqlx::query_as!(
        OpenTick,
        r#"SELECT r.id AS run, r.scheduled_for AS tick, now() AS "now!",
             (SELECT count(*) FROM report_submissions s
              WHERE s.run_id = r.id AND s.state = 'pending') AS "pending!"
         FROM report_runs r WHERE r.finished_at IS NULL AND r.trigger = 'schedule'
         ORDER BY r.scheduled_for DESC LIMIT 1"#
    )
    .fetch_optional(pool)
    .await
    .context("counting the tick's pending rows")
}

/// Watches the latest scheduled tick's pace until `stop`; warns once per tick that does not fit.
pub async fn watch(
    ctx: tokio::sync::watch::Receiver<Context>,
    limiters: Arc<Limiters>,
    stop: CancellationToken,
) {
    let mut last: Option<(i64, DateTime<Utc>, i64)> = None;
    let mut warned: Option<i64> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        let ctx = ctx.borrow().clone();
        let Ok(found) = latest(&ctx.pool).await else {
            continue;
        };
        let Some(OpenTick {
            run,
            tick,
            now,
            pending,
        }) = found
        else {
            metrics::record_tick_projection(Duration::ZERO);
            last = None;
            continue;
        };
        let next_in = (ctx.settings.schedule.next_tick(tick) - now)
            .to_std()
            .unwrap_or_default();
        let projection = match last {
            Some((r, at, then)) if r == run => project(
                then,
                pending,
                (now - at).to_std().unwrap_or_default(),
                next_in,
            ),
            _ => None,
        };
        last = Some((run, now, pending));
        let Some(p) = projection else { continue };
        metrics::record_tick_projection(p.overrun);
        tracing::debug!(
            run,
            pending = p.pending,
            pace = p.pace,
            overrun_s = p.overrun.as_secs(),
            "tick pace"
        );
        if p.overrun.is_zero() || warned == Some(run) {
            continue;
        }
        warned = Some(run);
        let limit = limiters.total();
        warn_overrun(run, tick, &p, limit, ctx.settings.provider.max_in_flight);
    }
}

fn warn_overrun(run: i64, tick: DateTime<Utc>, p: &Projection, limit: usize, ceiling: usize) {
    tracing::warn!(
        run,
        overrun_s = p.overrun.as_secs(),
        "the tick {tick} will not be done by the next tick at this pace: about {} late ({} pairs left at {:.0} a second, all instances together); {}",
        humantime::format_duration(Duration::from_secs(p.overrun.as_secs())),
        p.pending,
        p.pace,
        advice(limit, ceiling)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_that_keeps_its_pace_fits_or_says_by_how_much_it_does_not() {
        let ten = Duration::from_secs(10);
        // 4,000 done in 10 s, 20,000 left: 50 s more, the next tick in 60 s: it fits.
        let p = project(24_000, 20_000, ten, Duration::from_secs(60)).unwrap();
        assert_eq!((p.pending, p.pace), (20_000, 400.0));
        assert_eq!(p.overrun, Duration::ZERO);
        // The next tick in 30 s: 20 s late.
        let p = project(24_000, 20_000, ten, Duration::from_secs(30)).unwrap();
        assert_eq!(p.overrun, Duration::from_secs(20));
        assert_eq!(
            project(5, 5, ten, ten),
            None,
            "nothing moved: no projection"
        );
    }

    #[test]
    fn the_advice_names_what_holds_the_tick_back() {
        assert!(advice(256, 256).contains("raise it, or run more instances"));
        assert!(advice(40, 256).contains("more instances would not help"));
    }
}
