//! The default source's window, summed incrementally: each pair's sums are kept in
//! `source_sums` and moved with the window, so that a tick reads the buckets that entered and
//! left since the last one instead of the whole window (a 24-hour window of five-minute buckets
//! for 40,000 pairs is 11.5 million rows; its move by one 10-minute tick, 80,000).
//!
//! The sums cover `[window_start, settled_through)`; the last [`MARGIN`] before the window's end
//! is read afresh at every tick, so that counts committed a little after their bucket closed
//! (a transaction that began before the bucket ended) are counted. Anything later, and an edit
//! of an older bucket, is picked up by the full recount, done at least every [`RECOUNT_EVERY`]
//! and whenever the window moved back or jumped. A custom `source.query` is always read whole.
//!
//! The state moves in the claim transaction: a planning that rolls back leaves it as it was, and
//! a transaction-level lock keeps two plannings from moving it at once.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::db::Tx;

/// The last stretch of the window read afresh at every tick.
pub const MARGIN: Duration = Duration::from_secs(5 * 60);
/// The longest the sums go without a full recount.
pub const RECOUNT_EVERY: Duration = Duration::from_secs(3600);
/// The lock that serialises the plannings that move the sums ("bfrs").
const LOCK: i64 = 0x6266_7273;

/// The query the cursor reads once the sums are moved: the settled sums plus the margin, with
/// the default query's columns. `$1` is where the sums end, `$2` the window's end.
pub const QUERY: &str = "SELECT app_id, \
     CASE WHEN mcc BETWEEN 0 AND 999 THEN lpad(mcc::text, 3, '0') ELSE mcc::text END AS mcc, \
     sum(backfilled) AS backfill_number, sum(sent) AS cardinal_number FROM ( \
         SELECT app_id, mcc, backfilled, sent FROM source_sums \
         UNION ALL \
         SELECT app_id, mcc, backfilled, sent FROM otp_counts \
         WHERE bucket_start >= $1 AND bucket_start < $2) AS w \
     GROUP BY 1, 2";

/// Where the sums stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    window_start: DateTime<Utc>,
    settled_through: DateTime<Utc>,
    recounted_at: DateTime<Utc>,
    now: DateTime<Utc>,
}

/// How a tick's sums were brought to its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// Read whole: no state yet, the window moved back or jumped, or the recount was due.
    Recounted,
    /// Moved by the buckets that entered and left.
    Incremented,
}

/// Brings the sums to the window `[start, end)` and returns where they end: the cursor then
/// reads [`QUERY`] with that and `end`.
pub async fn advance(
    tx: &mut Tx,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> anyhow::Result<(DateTime<Utc>, Moved)> {
    sqlx::query!("SELECT pg_advisory_xact_lock($1)", LOCK)
        .execute(&mut *tx)
        .await
        .context("waiting for the source sums")?;
    let settled = (end - chrono::Duration::from_std(MARGIN).unwrap_or_default()).max(start);
    let state = sqlx::query_as!(
        State,
        r#"SELECT window_start, settled_through, recounted_at, now() AS "now!"
         FROM source_sums_state FOR UPDATE"#
    )
    .fetch_optional(&mut *tx)
    .await
    .context("reading the source sums' state")?;
    let moved = match state {
        Some(s) if incremental(&s, start, settled) => {
            increment(tx, &s, start, settled).await?;
            Moved::Incremented
        }
        _ => {
            recount(tx, start, settled).await?;
            Moved::Recounted
        }
    };
    Ok((settled, moved))
}

/// Whether moving the sums from `s` to `[start, settled)` is exact and cheaper than a recount:
/// both ends went forward, by less than the window they cover, and the recount is not due.
fn incremental(s: &State, start: DateTime<Utc>, settled: DateTime<Utc>) -> bool {
    let covered = s.settled_through - s.window_start;
    let every = chrono::Duration::from_std(RECOUNT_EVERY).unwrap_or_default();
    start >= s.window_start
        && settled >= s.settled_through
        && start - s.window_start < covered
        && s.now - s.recounted_at < every
}

async fn recount(tx: &mut Tx, start: DateTime<Utc>, settled: DateTime<Utc>) -> anyhow::Result<()> {
    sqlx::query!("DELETE FROM source_sums")
        .execute(&mut *tx)
        .await
        .context("recounting the source sums")?;
    sqlx::query!(
        "INSERT INTO source_sums (app_id, mcc, buckets, sent, backfilled)
         SELECT app_id, mcc, count(*), sum(sent), sum(backfilled) FROM otp_counts
         WHERE bucket_start >= $1 AND bucket_start < $2 GROUP BY 1, 2",
        start,
        settled,
    )
    .execute(&mut *tx)
    .await
    .context("recounting the source sums")?;
    record(tx, start, settled, true).await
}

/// Records what the sums now cover, and when they were last read whole if `recounted`.
async fn record(
    tx: &mut Tx,
    start: DateTime<Utc>,
    settled: DateTime<Utc>,
    recounted: bool,
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO source_sums_state (window_start, settled_through, recounted_at)
         VALUES ($1, $2, now())
         ON CONFLICT (only_row) DO UPDATE SET window_start = $1, settled_through = $2,
             recounted_at = CASE WHEN $3 THEN now() ELSE source_sums_state.recounted_at END",
        start,
        settled,
        recounted,
    )
    .execute(&mut *tx)
    .await
    .context("recording the source sums' state")?;
    Ok(())
}

/// Subtracts the buckets that left (`[old start, start)`), adds those that settled
/// (`[old settled, settled)`), and drops the pairs left with no bucket.
async fn increment(
    tx: &mut Tx,
    s: &State,
    start: DateTime<Utc>,
    settled: DateTime<Utc>,
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO source_sums AS t (app_id, mcc, buckets, sent, backfilled)
         SELECT app_id, mcc, sum(sign), sum(sign * sent), sum(sign * backfilled) FROM (
             SELECT app_id, mcc, -1 AS sign, sent, backfilled FROM otp_counts
             WHERE bucket_start >= $1 AND bucket_start < $2
             UNION ALL
             SELECT app_id, mcc, 1, sent, backfilled FROM otp_counts
             WHERE bucket_start >= $3 AND bucket_start < $4) AS d
         GROUP BY 1, 2
         ON CONFLICT (app_id, mcc) DO UPDATE SET buckets = t.buckets + EXCLUDED.buckets,
             sent = t.sent + EXCLUDED.sent, backfilled = t.backfilled + EXCLUDED.backfilled",
        s.window_start,
        start,
        s.settled_through,
        settled,
    )
    .execute(&mut *tx)
    .await
    .context("moving the source sums")?;
    // Only a pair that lost buckets can be left with none: look among those, not the table.
    sqlx::query!(
        "DELETE FROM source_sums s USING (SELECT DISTINCT app_id, mcc FROM otp_counts
             WHERE bucket_start >= $1 AND bucket_start < $2) AS gone
         WHERE s.app_id = gone.app_id AND s.mcc = gone.mcc AND s.buckets = 0",
        s.window_start,
        start,
    )
    .execute(&mut *tx)
    .await
    .context("moving the source sums")?;
    record(tx, start, settled, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap()
            + chrono::Duration::minutes(minutes)
    }

    fn state(start: i64, settled: i64, recounted_ago: i64) -> State {
        State {
            window_start: at(start),
            settled_through: at(settled),
            recounted_at: at(settled - recounted_ago),
            now: at(settled),
        }
    }

    #[test]
    fn the_sums_move_forward_only_and_a_jump_or_a_due_recount_reads_the_window_whole() {
        let s = state(0, 1_435, 10);
        assert!(incremental(&s, at(10), at(1_445)), "one 10-minute tick on");
        assert!(!incremental(&s, at(-10), at(1_425)), "back");
        assert!(!incremental(&s, at(10), at(1_430)), "the end went back");
        assert!(
            !incremental(&s, at(1_500), at(2_935)),
            "a jump past the window"
        );
        assert!(
            !incremental(&state(0, 1_435, 61), at(10), at(1_445)),
            "recount due"
        );
    }
}
