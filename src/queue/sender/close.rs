//! Closing runs: once nothing of a run is pending, it is closed and its summary logged, by the
//! one instance whose close took effect.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::db::Db;
use crate::queue::runs;
use crate::retry::step::until_done;
use crate::views::metrics;

/// Closes the run if nothing of it is pending, and logs its summary; the one instance that
/// closes it logs it.
pub async fn close_run(pool: &Db, run_id: i64) -> anyhow::Result<bool> {
    if !runs::close_if_done(pool, run_id).await? {
        return Ok(false);
    }
    let s = runs::summary(pool, run_id).await?;
    metrics::record_run(&s);
    let t = &s.tally;
    tracing::info!(
        run_id,
        pairs = t.pairs,
        succeeded = t.succeeded,
        failed = t.failed,
        skipped = t.skipped,
        invalid = t.invalid,
        superseded = t.superseded,
        attempts = s.attempts,
        duration_ms = s.duration.as_millis() as u64,
        "cycle for {} done: {t} in {:.1}s ({} requests)",
        s.tick,
        s.duration.as_secs_f64(),
        s.attempts
    );
    if !s.failures.is_empty() {
        let causes: Vec<String> = s
            .failures
            .iter()
            .map(|(cause, n)| format!("{n} × {cause}"))
            .collect();
        tracing::warn!(
            run_id,
            "cycle for {}: failed by cause: {}",
            s.tick,
            causes.join("; ")
        );
    }
    Ok(true)
}

/// Closes each run handed over once nothing of it is pending; coalesces repeats, so that a
/// busy run is checked once per round, not once per write.
pub(super) async fn close_runs(
    pool: Db,
    mut rx: mpsc::UnboundedReceiver<i64>,
    closed: Arc<Notify>,
) {
    let mut runs = Vec::new();
    while let Some(first) = rx.recv().await {
        runs.push(first);
        while let Ok(run) = rx.try_recv() {
            runs.push(run);
        }
        runs.sort_unstable();
        runs.dedup();
        for run_id in runs.drain(..) {
            if until_done("close the run", || close_run(&pool, run_id)).await {
                closed.notify_one();
            }
        }
    }
}
