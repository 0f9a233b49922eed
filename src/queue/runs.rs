//! The record of what happened: `report_runs`, and `report_submissions` as history. Claims a
//! tick exactly once (`INSERT … ON CONFLICT DO NOTHING`), closes a run when its last submission
//! has its final state, and answers `history`. The queue side of `report_submissions` (claims,
//! leases, outcome writes) is `queue`'s; neither decides what to send.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::db::{Db, Tx};

use crate::domain::rate::Rate;
use crate::domain::run::{RunSummary, State, Tally, Trigger};

/// What claiming a tick came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The run was inserted; `at` is the database's time of the claim.
    Claimed { run_id: i64, at: DateTime<Utc> },
    /// Another instance claimed this scheduled tick first.
    Taken,
    /// By the database's clock the tick is still this far ahead: a host whose clock runs
    /// ahead must not claim it early.
    NotDue(std::time::Duration),
}

/// Inserts the run once the database's clock has reached the tick: a scheduled tick is
/// claimed by one instance only, and by none before it is due.
pub async fn claim_run(
    conn: &mut Tx,
    tick: DateTime<Utc>,
    trigger: Trigger,
    window: (DateTime<Utc>, DateTime<Utc>),
    instance: &str,
) -> anyhow::Result<Claim> {
    // now() is the transaction's start: the claim, the deadline and the note all read it.
    let at: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *conn)
        .await
        .context("reading the database's clock")?;
    if let Ok(ahead) = (tick - at).to_std() {
        if !ahead.is_zero() {
            return Ok(Claim::NotDue(ahead));
        }
    }
    let run_id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (scheduled_for) WHERE trigger = 'schedule' DO NOTHING RETURNING id",
    )
    .bind(tick)
    .bind(trigger.as_str())
    .bind(window.0)
    .bind(window.1)
    .bind(instance)
    .fetch_optional(conn)
    .await
    .context("claiming the tick in report_runs")?;
    Ok(run_id.map_or(Claim::Taken, |run_id| Claim::Claimed { run_id, at }))
}

/// The database's time truncated to the second: the tick of an ad-hoc run, so that its window
/// and `callbackTime` do not depend on this host's clock.
pub async fn now_tick(pool: &Db) -> anyhow::Result<DateTime<Utc>> {
    sqlx::query_scalar("SELECT date_trunc('second', now())")
        .fetch_one(pool)
        .await
        .context("reading the database's clock")
}

/// Closes the run when none of its rows is pending any more: counts its submissions into
/// `report_runs` and sets `finished_at`. False when rows are still pending, or when another
/// instance closed it first: exactly one closer logs the summary.
pub async fn close_if_done(pool: &Db, run_id: i64) -> anyhow::Result<bool> {
    let closed = sqlx::query(
        "WITH open AS (SELECT id FROM report_runs WHERE id = $1 AND finished_at IS NULL \
                 AND NOT EXISTS (SELECT 1 FROM report_submissions \
                     WHERE run_id = $1 AND state = 'pending')), \
         c AS (SELECT count(*) AS pairs, \
             count(*) FILTER (WHERE state = 'succeeded') AS succeeded, \
             count(*) FILTER (WHERE state = 'failed') AS failed, \
             count(*) FILTER (WHERE state = 'skipped') AS skipped, \
             count(*) FILTER (WHERE state = 'invalid') AS invalid, \
             count(*) FILTER (WHERE state = 'superseded') AS superseded \
           FROM report_submissions WHERE run_id = $1 AND EXISTS (SELECT 1 FROM open)) \
         UPDATE report_runs r SET pairs = c.pairs, succeeded = c.succeeded, failed = c.failed, \
             skipped = c.skipped, invalid = c.invalid, superseded = c.superseded, \
             finished_at = now() \
         FROM c, open WHERE r.id = open.id AND r.finished_at IS NULL",
    )
    .bind(run_id)
    .execute(pool)
    .await
    .context("closing the run in report_runs")?;
    Ok(closed.rows_affected() == 1)
}

/// The run's tallies counted from its submissions (pending included), its attempts, and its
/// failures by cause.
pub async fn summary(pool: &Db, run_id: i64) -> anyhow::Result<RunSummary> {
    let row = sqlx::query(
        "SELECT r.scheduled_for, count(s.id), \
             count(*) FILTER (WHERE s.state = 'succeeded'), \
             count(*) FILTER (WHERE s.state = 'failed'), \
             count(*) FILTER (WHERE s.state = 'skipped'), \
             count(*) FILTER (WHERE s.state = 'invalid'), \
             count(*) FILTER (WHERE s.state = 'superseded'), \
             count(*) FILTER (WHERE s.state = 'pending'), \
             COALESCE(sum(s.attempts), 0)::bigint, \
             (extract(epoch FROM COALESCE(r.finished_at, now()) - r.started_at) * 1000)::bigint, \
             r.trigger \
         FROM report_runs r LEFT JOIN report_submissions s ON s.run_id = r.id \
         WHERE r.id = $1 GROUP BY r.id",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await
    .context("reading the run's tallies")?;
    let tally = Tally {
        pairs: row.get(1),
        succeeded: row.get(2),
        failed: row.get(3),
        skipped: row.get(4),
        invalid: row.get(5),
        superseded: row.get(6),
        pending: row.get(7),
    };
    let failures = if tally.failed > 0 {
        failure_causes(pool, run_id).await?
    } else {
        Vec::new()
    };
    Ok(RunSummary {
        run_id,
        tick: row.get(0),
        trigger: Trigger::parse(row.get(10)).unwrap_or(Trigger::Once),
        tally,
        attempts: row.get(8),
        duration: std::time::Duration::from_millis(row.get::<i64, _>(9).max(0) as u64),
        failures,
    })
}

/// The run's failed pairs grouped by cause: the provider's status, else the HTTP status, else
/// the local error, else (never sent) the reason.
async fn failure_causes(pool: &Db, run_id: i64) -> anyhow::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT CASE WHEN attempts = 0 THEN COALESCE(reason, 'not sent') \
                 ELSE COALESCE('status ' || provider_status, 'HTTP ' || http_status, error, reason) \
             END AS cause, count(*) \
         FROM report_submissions WHERE run_id = $1 AND state = 'failed' \
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .context("grouping the run's failures by cause")
}

/// Runs still open; those with nothing pending are closed by the next [`close_if_done`].
pub async fn open_runs(pool: &Db) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM report_runs WHERE finished_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await
        .context("reading open runs")
}

/// Whether the run is closed (every submission has its final state).
pub async fn is_closed(pool: &Db, run_id: i64) -> anyhow::Result<bool> {
    sqlx::query_scalar("SELECT finished_at IS NOT NULL FROM report_runs WHERE id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .context("reading the run's state")
}

/// Writes why a run was claimed late, for operators reading `report_runs`.
pub async fn set_note(pool: &Db, run_id: i64, note: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE report_runs SET note = $2 WHERE id = $1")
        .bind(run_id)
        .bind(note)
        .execute(pool)
        .await
        .context("noting why the run was late")?;
    Ok(())
}

/// Records a scheduled tick that was never run (replaced by a later one while the database
/// could not be reached) as a closed run with no pairs and the reason, so that the gap shows.
pub async fn record_missed(
    pool: &Db,
    tick: DateTime<Utc>,
    window: (DateTime<Utc>, DateTime<Utc>),
    instance: &str,
    note: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, \
             finished_at, note) \
         VALUES ($1, 'schedule', $2, $3, $4, now(), $5) \
         ON CONFLICT (scheduled_for) WHERE trigger = 'schedule' DO NOTHING",
    )
    .bind(tick)
    .bind(window.0)
    .bind(window.1)
    .bind(instance)
    .bind(note)
    .execute(pool)
    .await
    .context("recording a tick that was not run")?;
    Ok(())
}

/// The latest scheduled tick any instance claimed.
pub async fn last_scheduled_tick(pool: &Db) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar("SELECT max(scheduled_for) FROM report_runs WHERE trigger = 'schedule'")
        .fetch_one(pool)
        .await
        .context("reading the last scheduled tick")
}

/// Filters for `history`.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub limit: i64,
    pub app_id: Option<String>,
    pub mcc: Option<String>,
    pub state: Option<State>,
    /// Only this run's submissions, failed and invalid ones first (for `run --once`).
    pub run_id: Option<i64>,
    /// Only this account's submissions.
    pub account: Option<String>,
}

/// One line of `history`.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub scheduled_for: DateTime<Utc>,
    /// The `callbackTime` sent (or to be sent), in the schedule's zone, exactly as sent.
    pub callback_time: String,
    /// The account that signs it; `None` for the unnamed account (or an app in none).
    pub account: Option<String>,
    /// NULL for a source row that had none (recorded as invalid).
    pub app_id: Option<String>,
    pub mcc: Option<String>,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    pub rate: Option<Rate>,
    pub state: String,
    pub attempts: i32,
    pub provider_status: Option<String>,
    pub http_status: Option<i32>,
    pub detail: Option<String>,
}

/// Recent submissions, newest first.
pub async fn history(pool: &Db, filter: &HistoryFilter) -> anyhow::Result<Vec<HistoryRow>> {
    let rows = sqlx::query(
        "SELECT scheduled_for, app_id, mcc, backfill_number::text, cardinal_number::text, \
             (rate * 100)::int, state, attempts, provider_status, http_status, \
             COALESCE(reason, provider_reason, error), callback_time, account \
         FROM report_submissions \
         WHERE ($1::text IS NULL OR app_id = $1) AND ($2::text IS NULL OR mcc = $2) \
           AND ($3::text IS NULL OR state = $3) AND ($5::bigint IS NULL OR run_id = $5) \
           AND ($6::text IS NULL OR account = $6) \
         ORDER BY ($5::bigint IS NOT NULL AND state IN ('failed', 'invalid')) DESC, \
             scheduled_for DESC, id DESC LIMIT $4",
    )
    .bind(&filter.app_id)
    .bind(&filter.mcc)
    .bind(filter.state.map(State::as_str))
    .bind(filter.limit)
    .bind(filter.run_id)
    .bind(&filter.account)
    .fetch_all(pool)
    .await
    .context("reading report_submissions")?;
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            scheduled_for: r.get(0),
            app_id: r.get(1),
            mcc: r.get(2),
            backfill_number: r.get(3),
            cardinal_number: r.get(4),
            rate: r.get::<Option<i32>, _>(5).and_then(Rate::from_hundredths),
            state: r.get(6),
            attempts: r.get(7),
            provider_status: r.get(8),
            http_status: r.get(9),
            detail: r.get(10),
            callback_time: r.get(11),
            account: r.get(12),
        })
        .collect())
}
