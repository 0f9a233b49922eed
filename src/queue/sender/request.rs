//! One request: sent only while its lease lasts, its answer judged into the row's outcome,
//! which is recorded before the request's place on the wire is given up.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

use crate::config::ProviderSettings;
use crate::db::clock::Mono;
use crate::domain::status::ProviderStatus;
use crate::provider::concurrency::{Answered, Change, Limiters, Signal};
use crate::provider::{BackfillRequest, Exchange, ProviderClient};
use crate::queue::context::Context;
use crate::queue::store::{Attempt, Claimed, Disposition, Outcome};
use crate::retry::classify::{classify, Next, Policy};
use crate::views::metrics;

use super::held::{lock_held, SharedHeld};
use super::types::{for_account, record, Attempted, ToWriter};

/// What a request task needs besides its row.
pub(super) struct Job {
    pub(super) ctx: Context,
    /// The account the row was planned for, and its signing client.
    pub(super) account: Option<String>,
    pub(super) client: ProviderClient,
    pub(super) out: mpsc::UnboundedSender<ToWriter>,
    pub(super) held: SharedHeld,
    pub(super) limiters: Arc<Limiters>,
    pub(super) answered: Arc<Notify>,
    pub(super) was_probe: bool,
}

impl Job {
    /// Reports the answer (or its absence) to the account's limiter, logs a change of the
    /// limit, and wakes the dispatcher: the place on the wire is free before the outcome is
    /// recorded.
    fn answered(&self, rtt: Duration, signal: Signal) {
        let whose = for_account(&self.account);
        let answer = self
            .limiters
            .answered(&self.account, Mono::now(), rtt, signal);
        if let Some(Answered {
            change,
            limit,
            baseline,
        }) = answer
        {
            metrics::record_concurrency(self.account.as_deref(), limit, baseline);
            let baseline_ms = baseline.map_or(0.0, |b| b.as_secs_f64() * 1000.0);
            match change {
                Some(Change::Moved { from, to }) => tracing::debug!(
                    from,
                    to,
                    baseline_ms,
                    "concurrency limit{whose} {from} -> {to} (provider RTT baseline {baseline_ms:.0} ms)"
                ),
                Some(Change::Settled { limit }) => tracing::info!(
                    limit,
                    baseline_ms,
                    "concurrency{whose} settled at {limit} requests on the wire (provider RTT baseline {baseline_ms:.0} ms, ceiling provider.max_in_flight = {})",
                    self.ctx.settings.provider.max_in_flight
                ),
                None => {}
            }
        }
        self.answered.notify_one();
    }
}

/// Sends one row once and turns the answer into its outcome: done, or due again after a
/// backoff, or failed when the deadline or `max_attempts` comes first.
pub(super) async fn attempt(job: Job, row: Claimed, request: BackfillRequest) -> Attempted {
    let started = Mono::now();
    // Checked again here, where the request leaves: a process paused between the dispatcher's
    // check and this line must not send a row whose lease has lapsed meanwhile.
    let timeout = job.ctx.settings.provider.request_timeout;
    let lease_left = lock_held(&job.held)
        .valid_until(row.id)
        .is_some_and(|until| until >= started + timeout);
    if !lease_left {
        job.answered(Duration::ZERO, Signal::Nothing);
        record(&job.out, Outcome::released(row.id, row.run_id)).await;
        return Attempted {
            account: row.account,
            sent: false,
            outage: None,
            stop: None,
            clock: None,
            was_probe: job.was_probe,
        };
    }
    let ex = metrics::timed_request(job.client.submit_backfill(&request)).await;
    job.answered(Mono::now().since(started), ex.load_signal());
    tracing::debug!(
        app_id = request.app_id.as_str(),
        mcc = request.mcc.as_str(),
        attempt = row.attempts + 1,
        "attempt: {}",
        ex.error.as_deref().unwrap_or("succeeded")
    );
    let (outcome, mut result) = judge_answer(&job.ctx.settings.provider, &row, &ex, started);
    result.was_probe = job.was_probe;
    // The request's slot is held until its outcome is recorded: requests sent but not yet
    // recorded (those a kill -9 would send again) never exceed max_in_flight, and while the
    // database cannot record, no new request starts.
    record(&job.out, outcome).await;
    result
}

/// What an answer means for the row (done, due again after a backoff, or failed because
/// `max_attempts` is reached; the deadline is judged by the database when the outcome is
/// written) and for the dispatcher (an outage, a stop).
pub(super) fn judge_answer<T>(
    provider: &ProviderSettings,
    row: &Claimed,
    ex: &Exchange<T>,
    started: Mono,
) -> (Outcome, Attempted) {
    let attempts = u32::try_from(row.attempts).unwrap_or(0) + 1;
    let verdict = classify(ex, attempts, Policy::from(provider));
    let disposition = match verdict.next {
        Next::Done => Disposition::Succeeded,
        Next::Retry(wait) => Disposition::Retry(wait),
        Next::Fail(reason) => Disposition::Failed(reason),
    };
    let stop = verdict.stop.map(|rejection| {
        let why = format!(
            "provider status {} ({}){}: {}",
            ex.provider_status.as_deref().unwrap_or("?"),
            ex.reason.as_deref().unwrap_or("no reason given"),
            for_account(&row.account),
            rejection.advice_for(row.account.as_deref())
        );
        (row.run_id, why)
    });
    let outcome = Outcome {
        id: row.id,
        run_id: row.run_id,
        disposition,
        attempt: Some(Attempt {
            started: Some(started),
            provider_status: ex.status(),
            provider_reason: ex.reason.clone(),
            http_status: ex.http_status.map(i32::from),
            error: ex.error.clone(),
        }),
    };
    let result = Attempted {
        account: row.account.clone(),
        sent: true,
        outage: verdict.outage.then(|| {
            let cause = ex.error.clone().unwrap_or_else(|| "no error".into());
            (cause, ex.retry_after)
        }),
        stop,
        clock: (ex.status() == Some(ProviderStatus::Timestamp)).then_some(ex.timestamp),
        was_probe: false,
    };
    (outcome, result)
}
