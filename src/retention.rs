//! Keeps the record bounded: `report_submissions` grows by pairs × ticks (10,000 pairs every
//! 10 minutes is 1.44 million rows a day), so rows older than `[database] keep` are deleted in
//! small batches, each its own short statement that skips rows another transaction holds, so
//! that no lock is held for long and the queue's writers never wait behind a prune. Pending
//! rows are never deleted.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

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

/// Deletes everything scheduled before `cutoff`, batch by batch, then the runs left empty.
#[tracing::instrument(skip_all, fields(%cutoff), err)]
pub async fn prune(pool: &PgPool, cutoff: DateTime<Utc>) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned::default();
    for table in [Table::Submissions, Table::Runs] {
        loop {
            let n = prune_batch(pool, table, cutoff).await?;
            match table {
                Table::Submissions => pruned.submissions += n,
                Table::Runs => pruned.runs += n,
            }
            if n < BATCH as u64 {
                break;
            }
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

/// What a batch deletes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Submissions,
    /// Runs scheduled before the cutoff that no longer have submissions.
    Runs,
}

/// One batch: at most [`BATCH`] rows, one short statement. Returns how many were deleted.
pub async fn prune_batch(
    pool: &PgPool,
    table: Table,
    cutoff: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let sql = match table {
        Table::Submissions => {
            "WITH doomed AS (SELECT id FROM report_submissions \
                 WHERE scheduled_for < $1 AND state <> 'pending' \
                 ORDER BY scheduled_for LIMIT $2 FOR UPDATE SKIP LOCKED) \
             DELETE FROM report_submissions s USING doomed WHERE s.id = doomed.id"
        }
        Table::Runs => {
            "WITH doomed AS (SELECT id FROM report_runs r \
                 WHERE scheduled_for < $1 AND finished_at IS NOT NULL \
                   AND NOT EXISTS (SELECT 1 FROM report_submissions s WHERE s.run_id = r.id) \
                 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             DELETE FROM report_runs r USING doomed WHERE r.id = doomed.id"
        }
    };
    let done = sqlx::query(sql)
        .bind(cutoff)
        .bind(BATCH)
        .execute(pool)
        .await
        .with_context(|| format!("deleting old {table:?}"))?;
    Ok(done.rows_affected())
}
