//! The record of what happened: `report_runs` and `report_submissions`. Claims a tick exactly
//! once (`INSERT … ON CONFLICT DO NOTHING`), writes submissions as pending before their request,
//! records outcomes in batches, and answers `history`. It decides nothing about what to send.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

/// How a cycle was started; stored in `report_runs.trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Once,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Once => "once",
        }
    }
}

/// The state column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Succeeded,
    Failed,
    Skipped,
    Invalid,
    Superseded,
}

impl State {
    pub const ALL: [State; 6] = [
        Self::Pending,
        Self::Succeeded,
        Self::Failed,
        Self::Skipped,
        Self::Invalid,
        Self::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Invalid => "invalid",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// A submission row as first written.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub app_id: String,
    pub mcc: String,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    pub rate: Option<String>,
    pub callback_time: String,
    pub state: State,
    pub reason: Option<String>,
}

/// The outcome of sending one submission, written back in a batch.
#[derive(Debug, Clone)]
pub struct SubmissionOutcome {
    pub id: i64,
    /// Succeeded or Failed; Pending when shutdown interrupted it (recovery sends it again).
    pub state: State,
    pub reason: Option<String>,
    /// Attempts made this time; added to those already recorded.
    pub attempts: i32,
    pub provider_status: Option<String>,
    pub provider_reason: Option<String>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<i64>,
}

/// A pending submission found at start-up, with what is needed to send it again unchanged.
#[derive(Debug, Clone)]
pub struct PendingSubmission {
    pub id: i64,
    pub run_id: i64,
    pub app_id: String,
    pub mcc: String,
    pub backfill_number: String,
    pub cardinal_number: String,
    pub rate: String,
    pub callback_time: String,
}

/// Inserts the run; `None` when a scheduled tick was already claimed by another instance.
pub async fn claim_run(
    tx: &mut Transaction<'_, Postgres>,
    tick: DateTime<Utc>,
    trigger: Trigger,
    window: (DateTime<Utc>, DateTime<Utc>),
    instance: &str,
) -> anyhow::Result<Option<i64>> {
    sqlx::query_scalar(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (scheduled_for) WHERE trigger = 'schedule' DO NOTHING RETURNING id",
    )
    .bind(tick)
    .bind(trigger.as_str())
    .bind(window.0)
    .bind(window.1)
    .bind(instance)
    .fetch_optional(&mut **tx)
    .await
    .context("claiming the tick in report_runs")
}

/// Inserts every submission of a run in one statement. Returns `(id, index into rows)` for the
/// rows inserted: a pair already recorded for this tick is left out, never sent twice.
pub async fn insert_submissions(
    tx: &mut Transaction<'_, Postgres>,
    run_id: i64,
    tick: DateTime<Utc>,
    window: (DateTime<Utc>, DateTime<Utc>),
    rows: &[NewSubmission],
) -> anyhow::Result<Vec<(i64, usize)>> {
    let col = |f: fn(&NewSubmission) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let index: Vec<i32> = (0..rows.len() as i32).collect();
    let inserted = sqlx::query(
        "INSERT INTO report_submissions (run_id, scheduled_for, window_start, window_end, \
             app_id, mcc, backfill_number, cardinal_number, rate, callback_time, state, reason, \
             finished_at) \
         SELECT $1, $2, $3, $4, u.app_id, u.mcc, u.backfill::numeric, u.cardinal::numeric, \
             u.rate::numeric, u.callback_time, u.state, u.reason, \
             CASE WHEN u.state = 'pending' THEN NULL ELSE now() END \
         FROM unnest($5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
             $11::text[], $12::text[], $13::int[]) \
             AS u(app_id, mcc, backfill, cardinal, rate, callback_time, state, reason, idx) \
         ORDER BY u.idx \
         ON CONFLICT (app_id, mcc, scheduled_for) DO NOTHING \
         RETURNING id, app_id, mcc",
    )
    .bind(run_id)
    .bind(tick)
    .bind(window.0)
    .bind(window.1)
    .bind(rows.iter().map(|r| r.app_id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.mcc.clone()).collect::<Vec<_>>())
    .bind(col(|r| r.backfill_number.clone().filter(|v| is_numeric(v))))
    .bind(col(|r| r.cardinal_number.clone().filter(|v| is_numeric(v))))
    .bind(col(|r| r.rate.clone()))
    .bind(
        rows.iter()
            .map(|r| r.callback_time.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        rows.iter()
            .map(|r| r.state.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(col(|r| r.reason.clone()))
    .bind(index)
    .fetch_all(&mut **tx)
    .await
    .context("recording submissions as pending")?;
    Ok(inserted
        .iter()
        .filter_map(|r| {
            let (id, app, mcc): (i64, String, String) = (r.get(0), r.get(1), r.get(2));
            rows.iter()
                .position(|n| n.app_id == app && n.mcc == mcc)
                .map(|i| (id, i))
        })
        .collect())
}

/// Whether PostgreSQL's numeric accepts the text: an invalid row keeps its numbers only if so.
fn is_numeric(v: &str) -> bool {
    let v = v.trim().strip_prefix('-').unwrap_or(v.trim());
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Writes a batch of outcomes in one statement. Attempts add up, so that a submission sent again
/// by recovery keeps the count of every try.
pub async fn record_outcomes(pool: &PgPool, outcomes: &[SubmissionOutcome]) -> anyhow::Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let v =
        |f: fn(&SubmissionOutcome) -> Option<String>| outcomes.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "UPDATE report_submissions s SET state = u.state, reason = COALESCE(u.reason, s.reason), \
             attempts = s.attempts + u.attempts, provider_status = u.provider_status, \
             provider_reason = u.provider_reason, http_status = u.http_status, error = u.error, \
             first_attempt_at = COALESCE(s.first_attempt_at, u.first_attempt_at), \
             finished_at = u.finished_at, duration_ms = u.duration_ms \
         FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], \
             $7::int[], $8::text[], $9::timestamptz[], $10::timestamptz[], $11::bigint[]) \
             AS u(id, state, reason, attempts, provider_status, provider_reason, http_status, \
             error, first_attempt_at, finished_at, duration_ms) \
         WHERE s.id = u.id",
    )
    .bind(outcomes.iter().map(|o| o.id).collect::<Vec<_>>())
    .bind(
        outcomes
            .iter()
            .map(|o| o.state.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(v(|o| o.reason.clone()))
    .bind(outcomes.iter().map(|o| o.attempts).collect::<Vec<_>>())
    .bind(v(|o| o.provider_status.clone()))
    .bind(v(|o| o.provider_reason.clone()))
    .bind(outcomes.iter().map(|o| o.http_status).collect::<Vec<_>>())
    .bind(v(|o| o.error.clone()))
    .bind(
        outcomes
            .iter()
            .map(|o| o.first_attempt_at)
            .collect::<Vec<_>>(),
    )
    .bind(outcomes.iter().map(|o| o.finished_at).collect::<Vec<_>>())
    .bind(outcomes.iter().map(|o| o.duration_ms).collect::<Vec<_>>())
    .execute(pool)
    .await
    .context("recording submission outcomes")?;
    Ok(())
}

/// A run's tallies, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub pairs: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub skipped: i64,
    pub invalid: i64,
    pub superseded: i64,
    pub pending: i64,
}

/// Counts the run's submissions into `report_runs`; marks it finished unless some are still
/// pending (an interrupted run stays open for recovery).
pub async fn finish_run(pool: &PgPool, run_id: i64) -> anyhow::Result<Tally> {
    let row = sqlx::query(
        "WITH c AS (SELECT count(*) AS pairs, \
             count(*) FILTER (WHERE state = 'succeeded') AS succeeded, \
             count(*) FILTER (WHERE state = 'failed') AS failed, \
             count(*) FILTER (WHERE state = 'skipped') AS skipped, \
             count(*) FILTER (WHERE state = 'invalid') AS invalid, \
             count(*) FILTER (WHERE state = 'superseded') AS superseded, \
             count(*) FILTER (WHERE state = 'pending') AS pending \
           FROM report_submissions WHERE run_id = $1) \
         UPDATE report_runs r SET pairs = c.pairs, succeeded = c.succeeded, failed = c.failed, \
             skipped = c.skipped, invalid = c.invalid, superseded = c.superseded, \
             finished_at = CASE WHEN c.pending = 0 THEN now() END \
         FROM c WHERE r.id = $1 \
         RETURNING c.pairs, c.succeeded, c.failed, c.skipped, c.invalid, c.superseded, c.pending",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await
    .context("closing the run in report_runs")?;
    Ok(Tally {
        pairs: row.get(0),
        succeeded: row.get(1),
        failed: row.get(2),
        skipped: row.get(3),
        invalid: row.get(4),
        superseded: row.get(5),
        pending: row.get(6),
    })
}

/// Marks pending submissions that a newer tick of the same pair has replaced as superseded;
/// the provider keeps only the latest value, so sending an old one would overwrite a newer.
pub async fn supersede_stale(pool: &PgPool) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "UPDATE report_submissions s SET state = 'superseded', finished_at = now(), \
             reason = 'interrupted; a newer tick of this pair replaced it' \
         WHERE s.state = 'pending' AND EXISTS (SELECT 1 FROM report_submissions n \
             WHERE n.app_id = s.app_id AND n.mcc = s.mcc AND n.scheduled_for > s.scheduled_for \
               AND n.state IN ('pending', 'succeeded', 'failed'))",
    )
    .execute(pool)
    .await
    .context("superseding stale pending submissions")?;
    Ok(done.rows_affected())
}

/// Pending submissions left by an interrupted cycle, oldest first.
pub async fn pending(pool: &PgPool) -> anyhow::Result<Vec<PendingSubmission>> {
    let rows = sqlx::query(
        "SELECT id, run_id, app_id, mcc, backfill_number::text, cardinal_number::text, \
             rate::text, callback_time FROM report_submissions \
         WHERE state = 'pending' ORDER BY scheduled_for, id",
    )
    .fetch_all(pool)
    .await
    .context("reading pending submissions")?;
    Ok(rows
        .iter()
        .map(|r| PendingSubmission {
            id: r.get(0),
            run_id: r.get(1),
            app_id: r.get(2),
            mcc: r.get(3),
            backfill_number: r.get::<Option<String>, _>(4).unwrap_or_default(),
            cardinal_number: r.get::<Option<String>, _>(5).unwrap_or_default(),
            rate: r.get::<Option<String>, _>(6).unwrap_or_default(),
            callback_time: r.get(7),
        })
        .collect())
}

/// Runs left open by a crash or a shutdown.
pub async fn unfinished_runs(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM report_runs WHERE finished_at IS NULL ORDER BY id")
        .fetch_all(pool)
        .await
        .context("reading unfinished runs")
}

/// The latest scheduled tick any instance claimed.
pub async fn last_scheduled_tick(pool: &PgPool) -> anyhow::Result<Option<DateTime<Utc>>> {
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
}

/// One line of `history`.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub scheduled_for: DateTime<Utc>,
    pub app_id: String,
    pub mcc: String,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    pub rate: Option<String>,
    pub state: String,
    pub attempts: i32,
    pub provider_status: Option<String>,
    pub http_status: Option<i32>,
    pub detail: Option<String>,
}

/// Recent submissions, newest first.
pub async fn history(pool: &PgPool, filter: &HistoryFilter) -> anyhow::Result<Vec<HistoryRow>> {
    let rows = sqlx::query(
        "SELECT scheduled_for, app_id, mcc, backfill_number::text, cardinal_number::text, \
             rate::text, state, attempts, provider_status, http_status, \
             COALESCE(reason, provider_reason, error) \
         FROM report_submissions \
         WHERE ($1::text IS NULL OR app_id = $1) AND ($2::text IS NULL OR mcc = $2) \
           AND ($3::text IS NULL OR state = $3) \
         ORDER BY scheduled_for DESC, id DESC LIMIT $4",
    )
    .bind(&filter.app_id)
    .bind(&filter.mcc)
    .bind(filter.state.map(State::as_str))
    .bind(filter.limit)
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
            rate: r.get(5),
            state: r.get(6),
            attempts: r.get(7),
            provider_status: r.get(8),
            http_status: r.get(9),
            detail: r.get(10),
        })
        .collect())
}
