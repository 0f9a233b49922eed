//! `report_submissions` as the work queue every instance sends from. This module owns its SQL:
//! enqueueing a tick's rows in batches, claiming pages of due rows under a lease
//! (`FOR UPDATE SKIP LOCKED`, River's pattern), renewing and releasing leases, and writing
//! outcomes in one statement per group. It decides nothing about what to send or when to retry.
//!
//! A row belongs to whoever holds an unexpired lease on it; every outcome write is guarded by
//! `state = 'pending' AND lease_owner = $me`, so an instance that lost its lease (it stalled,
//! or its database session dropped and another instance took the row) cannot overwrite the
//! newer owner's outcome.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Row};

use crate::domain::{AppId, Mcc};
use crate::outcomes::State;
use crate::provider::BackfillRequest;
use crate::rate::Rate;

/// Channel that `NOTIFY` wakes idle senders on, so that every instance starts on a new tick at
/// once instead of at its next poll.
pub const CHANNEL: &str = "backfill_reporter_queue";

/// Why a row that was never sent left the queue because a newer tick of its pair exists.
pub const REPLACED: &str = "a newer tick of this pair replaced it before it was sent";

/// A submission row as first written by the planner.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub app_id: String,
    pub mcc: String,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    pub rate: Option<Rate>,
    pub state: State,
    pub reason: Option<String>,
}

/// What is common to every row of one tick.
#[derive(Debug, Clone, Copy)]
pub struct TickRows<'a> {
    pub run_id: i64,
    pub tick: DateTime<Utc>,
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub callback_time: &'a str,
    pub deadline: DateTime<Utc>,
}

/// How many rows of a batch went in, and how many of those are to be sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub inserted: u64,
    pub pending: u64,
}

/// Inserts one batch of a tick's rows; pending ones are due at once. A pair already recorded
/// for this tick (the source returned it twice, or a `run --once` in the same second took it)
/// is left out, never sent twice.
pub async fn enqueue(
    conn: &mut PgConnection,
    tick: TickRows<'_>,
    rows: &[NewSubmission],
) -> anyhow::Result<Enqueued> {
    if rows.is_empty() {
        return Ok(Enqueued::default());
    }
    let col = |f: fn(&NewSubmission) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let index: Vec<i32> = (0..rows.len() as i32).collect();
    let done = sqlx::query(
        "INSERT INTO report_submissions (run_id, scheduled_for, window_start, window_end, \
             app_id, mcc, backfill_number, cardinal_number, rate, callback_time, state, reason, \
             finished_at, next_attempt_at, deadline) \
         SELECT $1, $2, $3, $4, u.app_id, u.mcc, u.backfill::numeric, u.cardinal::numeric, \
             u.hundredths / 100.0, $5, u.state, u.reason, \
             CASE WHEN u.state = 'pending' THEN NULL ELSE now() END, \
             CASE WHEN u.state = 'pending' THEN now() END, \
             CASE WHEN u.state = 'pending' THEN $6::timestamptz END \
         FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[], \
             $13::text[], $14::int[]) \
             AS u(app_id, mcc, backfill, cardinal, hundredths, state, reason, idx) \
         ORDER BY u.idx \
         ON CONFLICT (app_id, mcc, scheduled_for) DO NOTHING \
         RETURNING state = 'pending'",
    )
    .bind(tick.run_id)
    .bind(tick.tick)
    .bind(tick.window.0)
    .bind(tick.window.1)
    .bind(tick.callback_time)
    .bind(tick.deadline)
    .bind(col(|r| Some(r.app_id.clone())))
    .bind(col(|r| Some(r.mcc.clone())))
    .bind(col(|r| r.backfill_number.clone().filter(|v| is_numeric(v))))
    .bind(col(|r| r.cardinal_number.clone().filter(|v| is_numeric(v))))
    .bind(
        rows.iter()
            .map(|r| r.rate.map(|r| i32::from(r.hundredths())))
            .collect::<Vec<_>>(),
    )
    .bind(col(|r| Some(r.state.as_str().to_owned())))
    .bind(col(|r| r.reason.clone()))
    .bind(index)
    .fetch_all(conn)
    .await
    .context("recording submissions as pending")?;
    Ok(Enqueued {
        inserted: done.len() as u64,
        pending: done.iter().filter(|r| r.get::<bool, _>(0)).count() as u64,
    })
}

/// Whether PostgreSQL's numeric accepts the text: an invalid row keeps its numbers only if so.
fn is_numeric(v: &str) -> bool {
    let v = v.trim().strip_prefix('-').unwrap_or(v.trim());
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Marks pending rows of older ticks of this run's pairs as superseded: the provider keeps the
/// last value it gets, so sending an old one after the new one would overwrite it. Rows under a
/// live lease are being sent right now; their outcome write supersedes them if it must retry.
pub async fn supersede_older(conn: &mut PgConnection, tick: DateTime<Utc>) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "UPDATE report_submissions s SET state = 'superseded', reason = $2, finished_at = now(), \
             lease_owner = NULL, lease_expires_at = NULL \
         WHERE s.state = 'pending' AND s.scheduled_for < $1 \
           AND (s.lease_expires_at IS NULL OR s.lease_expires_at < now()) \
           AND EXISTS (SELECT 1 FROM report_submissions n \
               WHERE n.app_id = s.app_id AND n.mcc = s.mcc AND n.scheduled_for = $1)",
    )
    .bind(tick)
    .bind(REPLACED)
    .execute(conn)
    .await
    .context("superseding older pending submissions")?;
    Ok(done.rows_affected())
}

/// Wakes idle senders of every instance when the surrounding transaction commits.
pub async fn notify(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(conn)
        .await
        .context("notifying senders")?;
    Ok(())
}

/// A row claimed for sending.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub run_id: i64,
    /// The request to send; `Err` when the stored row no longer makes one (edited by hand).
    pub request: Result<BackfillRequest, String>,
    /// `None` only for rows left by a release without deadlines, until start-up fills them.
    pub deadline: Option<DateTime<Utc>>,
    /// Attempts already made, by any instance.
    pub attempts: i32,
    /// A newer tick of the pair exists: sending this one would overwrite the fresher rate
    /// (the row was under a lease, so not superseded, when that tick was planned).
    pub replaced: bool,
}

/// Where a claim resumes: the `(next_attempt_at, id)` of the last row the previous one took.
/// Rows behind it were taken, or were locked by another claimer at the time; a claim that
/// comes back short starts again from the head and finds those.
pub type ClaimCursor = Option<(DateTime<Utc>, i64)>;

/// Claims up to `limit` due rows for `owner`, leased for `lease`; with `run`, only that run's.
/// A claimed row's `next_attempt_at` moves to its lease expiry: it leaves the head of the due
/// index (which would otherwise fill with rows being sent), and becomes due again by itself if
/// its owner dies. Rows locked by a concurrent claim are skipped, never waited on.
pub async fn claim(
    pool: &PgPool,
    owner: &str,
    limit: usize,
    lease: Duration,
    run: Option<i64>,
    after: ClaimCursor,
) -> anyhow::Result<(Vec<Claimed>, ClaimCursor)> {
    let sql = claim_sql(run.is_some(), after.is_some());
    let mut query = sqlx::query(&sql)
        .bind(owner)
        .bind(limit as i64)
        .bind(lease.as_millis() as i64);
    if let Some(run) = run {
        query = query.bind(run);
    }
    if let Some((at, id)) = after {
        query = query.bind(at).bind(id);
    }
    let rows = query
        .fetch_all(pool)
        .await
        .context("claiming due submissions")?;
    let cursor = rows
        .iter()
        .map(|r| (r.get::<DateTime<Utc>, _>(10), r.get::<i64, _>(0)))
        .max()
        .filter(|_| rows.len() == limit);
    let claimed = rows.iter().map(claimed_row).collect();
    Ok((claimed, cursor))
}

/// The claim with only the conditions that apply: a generic plan for `$4 IS NULL OR run_id =
/// $4` would sort every pending row of the run on each claim.
fn claim_sql(run: bool, after: bool) -> String {
    let run_param = if run { "AND run_id = $4" } else { "" };
    let after_param = match (run, after) {
        (_, false) => "",
        (true, true) => "AND (next_attempt_at, id) > ($5, $6)",
        (false, true) => "AND (next_attempt_at, id) > ($4, $5)",
    };
    format!(
        "WITH due AS ( \
             SELECT id, next_attempt_at FROM report_submissions \
             WHERE state = 'pending' AND next_attempt_at <= now() {run_param} {after_param} \
             ORDER BY next_attempt_at, id \
             LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE report_submissions s \
         SET lease_owner = $1, lease_expires_at = now() + $3 * interval '1 millisecond', \
             next_attempt_at = now() + $3 * interval '1 millisecond' \
         FROM due WHERE s.id = due.id \
         RETURNING s.id, s.run_id, s.app_id, s.mcc, s.backfill_number::text, \
             s.cardinal_number::text, s.callback_time, s.deadline, s.attempts, \
             EXISTS (SELECT 1 FROM report_submissions n WHERE n.app_id = s.app_id \
                 AND n.mcc = s.mcc AND n.scheduled_for > s.scheduled_for), \
             due.next_attempt_at"
    )
}

fn claimed_row(r: &sqlx::postgres::PgRow) -> Claimed {
    Claimed {
        id: r.get(0),
        run_id: r.get(1),
        request: stored_request(
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get::<String, _>(6),
        ),
        deadline: r.get(7),
        attempts: r.get(8),
        replaced: r.get(9),
    }
}

/// Rebuilds the request from a stored row through the same constructor the judge used.
fn stored_request(
    app_id: &str,
    mcc: &str,
    backfilled: Option<String>,
    sent: Option<String>,
    callback_time: String,
) -> Result<BackfillRequest, String> {
    let count = |name: &str, v: Option<String>| {
        v.as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("stored {name} is not a whole number: {v:?}"))
    };
    BackfillRequest::from_counts(
        AppId::parse(app_id)?,
        Mcc::parse(mcc)?,
        count("backfill_number", backfilled)?,
        count("cardinal_number", sent)?,
        callback_time,
    )
    .map_err(|e| format!("stored counts no longer make a rate: {e}"))
}

/// Extends the lease on rows `owner` still holds. Returns how many it still held.
pub async fn renew(
    pool: &PgPool,
    owner: &str,
    ids: &[i64],
    lease: Duration,
) -> anyhow::Result<u64> {
    // Rows the writer is finishing right now are locked: skip them rather than wait (or
    // deadlock); they are leaving the lease anyway. `pending` is a sub-select for the reason
    // given at RECORD: the rows are fetched by id, never by scanning the pending indexes.
    let done = sqlx::query(
        "WITH held AS (SELECT id FROM report_submissions \
             WHERE id = ANY($2) AND lease_owner = $1 AND state = (SELECT 'pending'::text) \
             ORDER BY id FOR UPDATE SKIP LOCKED) \
         UPDATE report_submissions s \
         SET lease_expires_at = now() + $3 * interval '1 millisecond', \
             next_attempt_at = now() + $3 * interval '1 millisecond' \
         FROM held WHERE s.id = held.id",
    )
    .bind(owner)
    .bind(ids)
    .bind(lease.as_millis() as i64)
    .execute(pool)
    .await
    .context("renewing leases")?;
    Ok(done.rows_affected())
}

/// What became of one claimed row, written back by the group commit.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    pub run_id: i64,
    /// Succeeded, Failed, or Pending (a retry, or a row handed back unsent).
    pub state: State,
    /// A retry or a deadline expiry turns into `superseded` when a newer tick of the pair
    /// exists: the fresh rate replaces it.
    pub supersedable: bool,
    pub reason: Option<String>,
    /// Set when this outcome records an attempt (its start time); `None` for a row handed
    /// back or expired without a request.
    pub attempt_at: Option<DateTime<Utc>>,
    pub provider_status: Option<String>,
    pub provider_reason: Option<String>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    /// For a retry: when it is due again. A row handed back without one is due at once.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the final answer came (terminal states).
    pub done_at: Option<DateTime<Utc>>,
}

impl Outcome {
    /// A row handed back unsent (shutdown, breaker open): pending, lease released.
    pub fn released(id: i64, run_id: i64) -> Self {
        Self {
            id,
            run_id,
            state: State::Pending,
            supersedable: false,
            reason: None,
            attempt_at: None,
            provider_status: None,
            provider_reason: None,
            http_status: None,
            error: None,
            next_attempt_at: None,
            done_at: None,
        }
    }

    /// A row that ends without a request.
    pub fn unsent(id: i64, run_id: i64, state: State, reason: String) -> Self {
        Self {
            state,
            supersedable: state == State::Failed,
            reason: Some(reason),
            done_at: Some(Utc::now()),
            ..Self::released(id, run_id)
        }
    }
}

/// One row as the group commit wrote it.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: i64,
    pub run_id: i64,
    pub state: State,
}

/// One outcome per row of the arrays. A retry or a deadline expiry becomes `superseded` when
/// a newer tick of the pair exists; the fields of the last attempt are kept only when this
/// outcome made one; the lease is released; and only rows this owner still holds are touched.
///
/// The guard's `pending` is a sub-select, not a literal, so that the planner cannot use the
/// partial `WHERE state = 'pending'` indexes here: in statistics taken between ticks they look
/// nearly empty, and the plan then scanned every pending row of the tick on each write
/// (1.3 ms a write at 10,000 pending rows, growing with the tick) instead of fetching the
/// group's rows by id (0.4 ms).
const RECORD: &str = "WITH w AS MATERIALIZED ( \
             SELECT u.*, u.supersedable AND EXISTS ( \
                 SELECT 1 FROM report_submissions o JOIN report_submissions n \
                     ON n.app_id = o.app_id AND n.mcc = o.mcc \
                    AND n.scheduled_for > o.scheduled_for \
                 WHERE o.id = u.id) AS replaced \
             FROM unnest($2::bigint[], $3::text[], $4::bool[], $5::text[], \
                 $6::timestamptz[], $7::text[], $8::text[], $9::int[], $10::text[], \
                 $11::timestamptz[], $12::timestamptz[]) \
             AS u(id, state, supersedable, reason, attempt_at, provider_status, \
                 provider_reason, http_status, error, next_attempt_at, done_at)) \
         UPDATE report_submissions s SET \
             state = CASE WHEN w.replaced THEN 'superseded' ELSE w.state END, \
             reason = CASE WHEN w.replaced THEN $13 ELSE COALESCE(w.reason, s.reason) END, \
             attempts = s.attempts + (w.attempt_at IS NOT NULL)::int, \
             provider_status = CASE WHEN w.attempt_at IS NULL THEN s.provider_status \
                 ELSE w.provider_status END, \
             provider_reason = CASE WHEN w.attempt_at IS NULL THEN s.provider_reason \
                 ELSE w.provider_reason END, \
             http_status = CASE WHEN w.attempt_at IS NULL THEN s.http_status \
                 ELSE w.http_status END, \
             error = CASE WHEN w.attempt_at IS NULL THEN s.error ELSE w.error END, \
             first_attempt_at = COALESCE(s.first_attempt_at, w.attempt_at), \
             attempted_by = CASE WHEN w.attempt_at IS NULL THEN s.attempted_by ELSE $1 END, \
             next_attempt_at = COALESCE(w.next_attempt_at, now()), \
             finished_at = CASE WHEN w.replaced OR w.state <> 'pending' \
                 THEN COALESCE(w.done_at, now()) END, \
             duration_ms = CASE WHEN w.replaced OR w.state <> 'pending' THEN (extract(epoch FROM \
                 COALESCE(w.done_at, now()) - COALESCE(s.first_attempt_at, w.attempt_at)) \
                 * 1000)::bigint END, \
             lease_owner = NULL, lease_expires_at = NULL \
         FROM w \
         WHERE s.id = w.id AND s.state = (SELECT 'pending'::text) AND s.lease_owner = $1 \
         RETURNING s.id, s.run_id, s.state";

/// Writes a group of outcomes in one statement. Rows whose lease `owner` no longer holds are
/// left alone (another instance owns them now) and are missing from the result.
pub async fn record(
    pool: &PgPool,
    owner: &str,
    outcomes: &[Outcome],
) -> anyhow::Result<Vec<Written>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let v = |f: fn(&Outcome) -> Option<String>| outcomes.iter().map(f).collect::<Vec<_>>();
    let t = |f: fn(&Outcome) -> Option<DateTime<Utc>>| outcomes.iter().map(f).collect::<Vec<_>>();
    let rows = sqlx::query(RECORD)
        .bind(owner)
        .bind(outcomes.iter().map(|o| o.id).collect::<Vec<_>>())
        .bind(v(|o| Some(o.state.as_str().to_owned())))
        .bind(outcomes.iter().map(|o| o.supersedable).collect::<Vec<_>>())
        .bind(v(|o| o.reason.clone()))
        .bind(t(|o| o.attempt_at))
        .bind(v(|o| o.provider_status.clone()))
        .bind(v(|o| o.provider_reason.clone()))
        .bind(outcomes.iter().map(|o| o.http_status).collect::<Vec<_>>())
        .bind(v(|o| o.error.clone()))
        .bind(t(|o| o.next_attempt_at))
        .bind(t(|o| o.done_at))
        .bind(REPLACED)
        .fetch_all(pool)
        .await
        .context("recording submission outcomes")?;
    Ok(rows
        .iter()
        .map(|r| Written {
            id: r.get(0),
            run_id: r.get(1),
            state: State::parse(r.get::<&str, _>(2)).unwrap_or(State::Pending),
        })
        .collect())
}

/// Fails the run's pending rows that nobody holds: the provider refused the account or host
/// (-1, -2), so every request would fail the same way. Rows under another instance's live
/// lease are left to it.
pub async fn fail_unsent(pool: &PgPool, run_id: i64, reason: &str) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "UPDATE report_submissions SET state = 'failed', reason = $2, finished_at = now(), \
             lease_owner = NULL, lease_expires_at = NULL \
         WHERE run_id = $1 AND state = 'pending' \
           AND (lease_expires_at IS NULL OR lease_expires_at < now())",
    )
    .bind(run_id)
    .bind(reason)
    .execute(pool)
    .await
    .context("failing the rest of the run")?;
    Ok(done.rows_affected())
}

/// Ends the pending rows whose deadline passed and that nobody holds: superseded when a newer
/// tick of the pair exists, failed otherwise. Returns each row's run and final state. Needed while nothing
/// claims them (the provider is unreachable); otherwise the claim finds them first.
pub async fn expire(pool: &PgPool, run: Option<i64>) -> anyhow::Result<Vec<(i64, State)>> {
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "WITH x AS ( \
             SELECT s.id, EXISTS (SELECT 1 FROM report_submissions n \
                 WHERE n.app_id = s.app_id AND n.mcc = s.mcc \
                   AND n.scheduled_for > s.scheduled_for) AS replaced \
             FROM report_submissions s \
             WHERE s.state = 'pending' AND s.deadline <= now() \
               AND (s.lease_expires_at IS NULL OR s.lease_expires_at < now()) \
               AND ($1::bigint IS NULL OR s.run_id = $1) \
             FOR UPDATE OF s SKIP LOCKED), \
         u AS (UPDATE report_submissions s SET \
             state = CASE WHEN x.replaced THEN 'superseded' ELSE 'failed' END, \
             reason = CASE WHEN x.replaced THEN $2 \
                 WHEN s.attempts = 0 THEN 'deadline passed before it could be sent' \
                 ELSE 'deadline passed after ' || s.attempts || ' attempts: ' \
                     || COALESCE('status ' || s.provider_status, 'HTTP ' || s.http_status, \
                                 s.error, 'no answer') END, \
             finished_at = now(), lease_owner = NULL, lease_expires_at = NULL \
         FROM x WHERE s.id = x.id RETURNING s.run_id, s.state) \
         SELECT run_id, state FROM u",
    )
    .bind(run)
    .bind(REPLACED)
    .fetch_all(pool)
    .await
    .context("ending overdue submissions")?;
    Ok(rows
        .into_iter()
        .filter_map(|(run, state)| Some((run, State::parse(&state)?)))
        .collect())
}

/// When the next pending row becomes due, if after now; rows due already but leased are
/// found by the next poll once their lease expires.
pub async fn next_due(pool: &PgPool, run: Option<i64>) -> anyhow::Result<Option<DateTime<Utc>>> {
    sqlx::query_scalar(
        "SELECT min(next_attempt_at) FROM report_submissions \
         WHERE state = 'pending' AND next_attempt_at > now() \
           AND ($1::bigint IS NULL OR run_id = $1)",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .context("looking for the next due submission")
}

/// Gives rows left pending by a release without deadlines the deadline of this instance's
/// schedule (the next tick), once, at start.
pub async fn fill_deadlines(pool: &PgPool, deadline: DateTime<Utc>) -> anyhow::Result<u64> {
    let done = sqlx::query(
        "UPDATE report_submissions SET deadline = $1, \
             next_attempt_at = COALESCE(next_attempt_at, created_at) \
         WHERE state = 'pending' AND deadline IS NULL",
    )
    .bind(deadline)
    .execute(pool)
    .await
    .context("giving old pending submissions a deadline")?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_row_makes_the_same_request_as_the_judge() {
        let req = stored_request(
            "mRELxtHc",
            "460",
            Some("1".into()),
            Some("8".into()),
            "2023-02-01T00:00:00+08:00".into(),
        )
        .unwrap();
        assert_eq!(req.backfill_now.to_string(), "12.5");
        assert!(stored_request(
            "abc",
            "460",
            Some("1".into()),
            Some("8".into()),
            String::new()
        )
        .unwrap_err()
        .contains("4 to 32"));
        assert!(stored_request(
            "abcd",
            "460",
            Some("9".into()),
            Some("8".into()),
            String::new()
        )
        .unwrap_err()
        .contains("no longer make a rate"));
    }
}
