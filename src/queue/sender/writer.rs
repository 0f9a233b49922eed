//! The writer: records outcomes by group commit, one write at a time, each taking every
//! outcome that completed meanwhile, and hands the runs it touched to the closer.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};

use crate::db::Db;
use crate::domain::run::State;
use crate::queue::store::{self, Disposition, Outcome};
use crate::retry::step::until_done;
use crate::views::metrics;

use super::close::close_runs;
use super::held::{lock_held, SharedHeld};
use super::types::ToWriter;

/// The group commit: one write at a time, each taking every outcome that arrived meanwhile.
/// A write that fails (database down) is retried with backoff until it succeeds: the rows stay
/// leased to this instance meanwhile, and the lease guard keeps a late write harmless.
pub(super) async fn write_outcomes(
    pool: Db,
    owner: String,
    mut rx: mpsc::UnboundedReceiver<ToWriter>,
    held: SharedHeld,
    closed: Arc<Notify>,
) {
    // Closing runs (a count over the run) happens beside the writes, not between them.
    let (close_tx, close_rx) = mpsc::unbounded_channel();
    let closer = tokio::spawn(close_runs(pool.clone(), close_rx, closed));
    while let Some(first) = rx.recv().await {
        // One write at a time, taking everything that completed meanwhile: no fixed window.
        let mut group = Group::default();
        let mut next = Some(first);
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            group.add(msg);
            if group.outcomes.len() >= 10_000 {
                break;
            }
        }
        group.write(&pool, &owner, &held, &close_tx).await;
    }
    drop(close_tx);
    let _ = closer.await;
}

/// What one write takes.
#[derive(Default)]
pub(super) struct Group {
    outcomes: Vec<Outcome>,
    acks: Vec<oneshot::Sender<()>>,
    fail_runs: Vec<(i64, Option<String>, String)>,
    expire: Vec<Option<i64>>,
}

impl Group {
    fn add(&mut self, msg: ToWriter) {
        match msg {
            ToWriter::Outcome(o, ack) => {
                self.outcomes.push(o);
                self.acks.extend(ack);
            }
            ToWriter::FailRun {
                run_id,
                account,
                reason,
            } => self.fail_runs.push((run_id, account, reason)),
            ToWriter::Expire { run } => self.expire.push(run),
        }
    }

    async fn write(
        mut self,
        pool: &Db,
        owner: &str,
        held: &SharedHeld,
        close: &mpsc::UnboundedSender<i64>,
    ) {
        // In id order, as every statement that locks several rows does: no deadlock.
        self.outcomes.sort_unstable_by_key(|o| o.id);
        let batch = &self.outcomes;
        lock_held(held).writing.extend(batch.iter().map(|o| o.id));
        let written = until_done("record outcomes", || store::record(pool, owner, batch)).await;
        {
            let mut h = lock_held(held);
            for o in batch {
                h.rows.remove(&o.id);
                h.writing.remove(&o.id);
            }
        }
        for ack in self.acks {
            let _ = ack.send(());
        }
        let lost = batch
            .iter()
            .filter(|o| o.attempt.is_some())
            .count()
            .saturating_sub(written.iter().filter(|w| by_attempt(batch, w.id)).count());
        if lost > 0 {
            tracing::warn!(
                lost,
                "answers not recorded: the lease on those rows had passed to another instance, which sends them again"
            );
        }
        account(batch, &written);
        let mut runs: Vec<i64> = written
            .iter()
            .filter(|w| w.state != State::Pending)
            .map(|w| w.run_id)
            .collect();
        for (run_id, account, reason) in self.fail_runs {
            let failed = until_done("fail the rest of the run", || {
                store::fail_unsent(pool, (run_id, account.as_deref()), &reason)
            })
            .await;
            metrics::record_decided(account.as_deref(), State::Failed, failed);
            runs.push(run_id);
        }
        for run in self.expire {
            let ended = until_done("end overdue submissions", || store::expire(pool, run)).await;
            for (run_id, state, account) in &ended {
                metrics::record_decided(account.as_deref(), *state, 1);
                runs.push(*run_id);
            }
        }
        runs.sort_unstable();
        runs.dedup();
        for run_id in runs {
            let _ = close.send(run_id);
        }
    }
}

/// Whether the outcome for `id` in the batch recorded an attempt.
pub(super) fn by_attempt(batch: &[Outcome], id: i64) -> bool {
    batch
        .binary_search_by_key(&id, |o| o.id)
        .is_ok_and(|i| batch[i].attempt.is_some())
}

/// Counts each final state in the metrics and logs each failure, once its write is done.
pub(super) fn account(batch: &[Outcome], written: &[store::Written]) {
    let by_id: HashMap<i64, &Outcome> = batch.iter().map(|o| (o.id, o)).collect();
    for w in written.iter().filter(|w| w.state != State::Pending) {
        let Some(o) = by_id.get(&w.id) else {
            continue;
        };
        let attempt = o.attempt.as_ref();
        metrics::record_outcome(
            w.state,
            attempt.and_then(|a| a.provider_status.as_ref()),
            w.account.as_deref(),
        );
        if w.state == State::Failed {
            let why = match &o.disposition {
                Disposition::Failed(Some(r)) | Disposition::Unsent(_, r) => Some(r.as_str()),
                _ => None,
            }
            .or(attempt.and_then(|a| a.error.as_deref()))
            .unwrap_or("deadline passed");
            // One line per pair would be 240,000 lines when a provider outage fails a tick:
            // the run's summary says it once, by cause.
            tracing::debug!(id = w.id, run_id = w.run_id, "submission failed: {why}");
        }
    }
}
