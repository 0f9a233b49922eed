//! The record of what happened: `report_runs`, and `report_submissions` as history. Claims a
//! tick exactly once (`INSERT … ON CONFLICT DO NOTHING`), closes a run when its last submission
//! has its final state, and answers `history`. The queue side of `report_submissions` (claims,
//! leases, outcome writes) is `queue`'s; neither decides what to send.

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::db::{Db, Tx};

use crate::domain::rate::Rate;
use crate::domain::run::{RunSummary, State, Tally, Trigger};
use crate::domain::status::ProviderStatus;

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
    let at = sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(&mut *conn)
        .await
        .context("reading the database's clock")?;
    if let Ok(ahead) = (tick - at).to_std() {
        if !ahead.is_zero() {
            return Ok(Claim::NotDue(ahead));
        }
    }
    let run_id = sqlx::query_scalar!(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (scheduled_for) WHERE trigger = 'schedule' DO NOTHING RETURNING id",
        tick,
        trigger.as_str(),
        window.0,
        window.1,
        instance,
    )
    .fetch_optional(conn)
    .await
    .context("claiming the tick in report_runs")?;
    Ok(run_id.map_or(Claim::Taken, |run_id| Claim::Claimed { run_id, at }))
}

/// The database's time truncated to the second: the tick of an ad-hoc run, so that its window
/// and `callbackTime` do not depend on this host's clock.
pub async fn now_tick(pool: &Db) -> anyhow::Result<DateTime<Utc>> {
    sqlx::query_scalar!(r#"SELECT date_trunc('second', now()) AS "tick!""#)
        .fetch_one(pool)
        .await
        .context("reading the database's clock")
}

/// Closes the run when none of its rows is pending any more: counts its submissions into
/// `report_runs` and sets `finished_at`. False when rows are still pending, or when another
/// instance closed it first: exactly one closer logs the summary.
pub async fn close_if_done(pool: &Db, run_id: i64) -> anyhow::Result<bool> {
    let closed = sqlx::query!(
        "WITH open AS (SELECT id FROM report_runs WHERE id = $1 AND finished_at IS NULL
                 AND NOT EXISTS (SELECT 1 FROM report_submissions
                     WHERE run_id = $1 AND state = 'pending')),
         c AS (SELECT count(*) AS pairs,
             count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
             count(*) FILTER (WHERE state = 'failed') AS failed,
             count(*) FILTER (WHERE state = 'skipped') AS skipped,
             count(*) FILTER (WHERE state = 'invalid') AS invalid,
             count(*) FILTER (WHERE state = 'superseded') AS superseded
           FROM report_submissions WHERE run_id = $1 AND EXISTS (SELECT 1 FROM open))
         UPDATE report_runs r SET pairs = c.pairs, succeeded = c.succeeded, failed = c.failed,
             skipped = c.skipped, invalid = c.invalid, superseded = c.superseded,
             finished_at = now()
         FROM c, open WHERE r.id = open.id AND r.finished_at IS NULL",
        run_id,
    )
    .execute(pool)
    .await
    .context("closing the run in report_runs")?;
    Ok(closed.rows_affected() == 1)
}

/// The run's tallies counted from its submissions (pending included), its attempts, and its
/// failures by cause.
pub async fn summary(pool: &Db, run_id: i64) -> anyhow::Result<RunSummary> {
    let row = sqlx::query!(
        r#"SELECT r.scheduled_for, count(s.id) AS "pairs!",
             count(*) FILTER (WHERE s.state = 'succeeded') AS "succeeded!",
             count(*) FILTER (WHERE s.state = 'failed') AS "failed!",
             count(*) FILTER (WHERE s.state = 'skipped') AS "skipped!",
             count(*) FILTER (WHERE s.state = 'invalid') AS "invalid!",
             count(*) FILTER (WHERE s.state = 'superseded') AS "superseded!",
             count(*) FILTER (WHERE s.state = 'pending') AS "pending!",
             COALESCE(sum(s.attempts), 0)::bigint AS "attempts!",
             (extract(epoch FROM COALESCE(r.finished_at, now()) - r.started_at) * 1000)::bigint
                 AS "duration_ms!",
             r.trigger AS "trigger: Trigger"
         FROM report_runs r LEFT JOIN report_submissions s ON s.run_id = r.id
         WHERE r.id = $1 GROUP BY r.id"#,
        run_id,
    )
    .fetch_one(pool)
    .await
    .context("reading the run's tallies")?;
    let tally = Tally {
        pairs: row.pairs,
        succeeded: row.succeeded,
        failed: row.failed,
        skipped: row.skipped,
        invalid: row.invalid,
        superseded: row.superseded,
        pending: row.pending,
    };
    let failures = if tally.failed > 0 {
        failure_causes(pool, run_id).await?
    } else {
        Vec::new()
    };
    Ok(RunSummary {
        run_id,
        tick: row.scheduled_for,
        trigger: row.trigger,
        tally,
        attempts: row.attempts,
        duration: std::time::Duration::from_millis(row.duration_ms.max(0) as u64),
        failures,
    })
}

/// The run's failed pairs grouped by cause: the provider's status, else the HTTP status, else
/// the local error, else (never sent) the reason.
async fn failure_causes(pool: &Db, run_id: i64) -> anyhow::Result<Vec<(String, i64)>> {
    let rows = sqlx::query!(
        r#"SELECT CASE WHEN attempts = 0 THEN COALESCE(reason, 'not sent')
                 ELSE COALESCE('status ' || provider_status, 'HTTP ' || http_status, error, reason)
             END AS "cause!", count(*) AS "pairs!"
         FROM report_submissions WHERE run_id = $1 AND state = 'failed'
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 5"#,
        run_id,
    )
    .fetch_all(pool)
    .await
    .context("grouping the run's failures by cause")?;
    Ok(rows.into_iter().map(|r| (r.cause, r.pairs)).collect())
}

/// Runs still open; those with nothing pending are closed by the next [`close_if_done`].
pub async fn open_runs(pool: &Db) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar!("SELECT id FROM report_runs WHERE finished_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await
        .context("reading open runs")
}

/// Whether the run is closed (every submission has its final state).
pub async fn is_closed(pool: &Db, run_id: i64) -> anyhow::Result<bool> {
    sqlx::query_scalar!(
        r#"SELECT finished_at IS NOT NULL AS "closed!" FROM report_runs WHERE id = $1"#,
        run_id
    )
    .fetch_one(pool)
    .await
    .context("reading the run's state")
}

/// Writes why a run was claimed late, for operators reading `report_runs`.
pub async fn set_note(pool: &Db, run_id: i64, note: &str) -> anyhow::Result<()> {
    sqlx::query!(
        "UPDATE report_runs SET note = $2 WHERE id = $1",
        run_id,
        note
    )
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
    sqlx::query!(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance,
             finished_at, note)
         VALUES ($1, 'schedule', $2, $3, $4, now(), $5)
         ON CONFLICT (scheduled_for) WHERE trigger = 'schedule' DO NOTHING",
        tick,
        window.0,
        window.1,
        instance,
        note,
    )
    .execute(pool)
    .await
    .context("recording a tick that was not run")?;
    Ok(())
}

/// The latest scheduled tick any instance claimed.
pub async fn last_scheduled_tick(pool: &Db) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar!("SELECT max(scheduled_for) FROM report_runs WHERE trigger = 'schedule'")
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
    pub state: State,
    pub attempts: i32,
    pub provider_status: Option<ProviderStatus>,
    pub http_status: Option<i32>,
    pub detail: Option<String>,
}

/// Recent submissions, newest first.
pub async fn history(pool: &Db, filter: &HistoryFilter) -> anyhow::Result<Vec<HistoryRow>> {
    let rows = sqlx::query!(
        r#"SELECT scheduled_for, app_id, mcc, backfill_number::text AS backfill_number,
             cardinal_number::text AS cardinal_number, (rate * 100)::int AS hundredths,
             state AS "state: State", attempts,
             provider_status AS "provider_status: ProviderStatus", http_status,
             COALESCE(reason, provider_reason, error) AS detail, callback_time, account
         FROM report_submissions
         WHERE ($1::text IS NULL OR app_id = $1) AND ($2::text IS NULL OR mcc = $2)
           AND ($3::text IS NULL OR state = $3) AND ($5::bigint IS NULL OR run_id = $5)
           AND ($6::text IS NULL OR account = $6)
         ORDER BY ($5::bigint IS NOT NULL AND state IN ('failed', 'invalid')) DESC,
             scheduled_for DESC, id DESC LIMIT $4"#,
        filter.app_id,
        filter.mcc,
        filter.state.map(State::as_str),
        filter.limit,
        filter.run_id,
        filter.account,
    )
    .fetch_all(pool)
    .await
    .context("reading report_submissions")?;
    Ok(rows
        .into_iter()
        .map(|r| HistoryRow {
            scheduled_for: r.scheduled_for,
            app_id: r.app_id,
            mcc: r.mcc,
            backfill_number: r.backfill_number,
            cardinal_number: r.cardinal_number,
            rate: r.hundredths.and_then(Rate::from_hundredths),
            state: r.state,
            attempts: r.attempts,
            provider_status: r.provider_status,
            http_status: r.http_status,
            detail: r.detail,
            callback_time: r.callback_time,
            account: r.account,
        })
        .collect())
}
