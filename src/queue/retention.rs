//! Keeps the record bounded: `report_submissions` grows by pairs × ticks (10,000 pairs every
//! 10 minutes is 1.44 million rows a day), so rows older than `[database] keep` are deleted in
//! small batches, each its own short statement that skips rows another transaction holds, so
//! that no lock is held for long and the queue's writers never wait behind a prune. Pending
//! rows are never deleted.

use std::time::Duration;

use crate::db::Db;
use anyhow::Context;
use chrono::{DateTime, Utc};

/// Rows per delete: small enough that one statement takes milliseconds.
pub const BATCH: i64 = 5_000;

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub submissions: u64,
    pub runs: u64,
}

/// The instant before which rows are deleted.
pub fn cutoff(now: DateTime<Utc>, keep: Duration) -> DateTime<Utc> {
    now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX)
}

/// Deletes every finished run scheduled before `cutoff`, oldest first: its submissions in
/// batches through the run's index, then the run itself. Going run by run, no statement has to
/// ask whether a run is empty (a probe that would walk the index entries the deletes just left
/// dead). An unfinished run still has pending rows and is kept.
#[tracing::instrument(skip_all, fields(%cutoff), err)]
pub async fn prune(pool: &Db, cutoff: DateTime<Utc>) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned::default();
    loop {
        let runs = old_runs(pool, cutoff).await?;
        let before = pruned;
        for run_id in runs {
            loop {
                let n = delete_submissions(pool, run_id).await?;
                pruned.submissions += n;
                if n < BATCH as u64 {
                    break;
                }
            }
            pruned.runs += delete_run(pool, run_id).await?;
        }
        // Nothing left, or only runs another instance is pruning right now.
        if pruned == before {
            break;
        }
    }
    if pruned != Pruned::default() {
        tracing::info!(
            submissions = pruned.submissions,
            runs = pruned.runs,
            "deleted runs and submissions older than database.keep"
        );
    }
    Ok(pruned)
}

/// Up to 100 finished runs scheduled before `cutoff` without pending rows, oldest first.
pub async fn old_runs(pool: &Db, cutoff: DateTime<Utc>) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar!(
        "SELECT id FROM report_runs r WHERE scheduled_for < $1 AND finished_at IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM report_submissions s
               WHERE s.run_id = r.id AND s.state = 'pending')
         ORDER BY scheduled_for, id LIMIT 100",
        cutoff,
    )
    .fetch_all(pool)
    .await
    .context("finding old runs")
}

/// One batch: at most [`BATCH`] submissions of the run, one short statement. Rows another
/// transaction holds are skipped, never waited on.
pub async fn delete_submissions(pool: &Db, run_id: i64) -> anyhow::Result<u64> {
    let done = sqlx::query!(
        "WITH doomed AS (SELECT id FROM report_submissions
             WHERE run_id = $1 AND state <> 'pending' LIMIT $2 FOR UPDATE SKIP LOCKED)
         DELETE FROM report_submissions s USING doomed WHERE s.id = doomed.id",
        run_id,
        BATCH,
    )
    .execute(pool)
    .await
    .context("deleting old submissions")?;
    Ok(done.rows_affected())
}

/// Deletes the default source's buckets that started before `cutoff` (`source.keep`), in
/// batches that skip rows a writer holds, through the `bucket_start` index. Returns how many.
pub async fn prune_counts(pool: &Db, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
    let mut deleted = 0;
    loop {
        let done = sqlx::query!(
            "WITH doomed AS (SELECT ctid FROM otp_counts WHERE bucket_start < $1
                 LIMIT $2 FOR UPDATE SKIP LOCKED)
             DELETE FROM otp_counts c USING doomed WHERE c.ctid = doomed.ctid",
            cutoff,
            BATCH,
        )
        .execute(pool)
        .await
        .context("deleting old buckets from otp_counts")?;
        deleted += done.rows_affected();
        if done.rows_affected() < BATCH as u64 {
            break;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted otp_counts buckets older than source.keep");
    }
    Ok(deleted)
}

/// The run, once its submissions are gone (a row still there keeps it: the foreign key would
/// otherwise delete it with the run in one long statement).
pub async fn delete_run(pool: &Db, run_id: i64) -> anyhow::Result<u64> {
    let done = sqlx::query!(
        "DELETE FROM report_runs r WHERE id = $1
         AND NOT EXISTS (SELECT 1 FROM report_submissions s WHERE s.run_id = r.id)",
        run_id,
    )
    .execute(pool)
    .await
    .context("deleting an old run")?;
    Ok(done.rows_affected())
}
