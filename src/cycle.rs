//! One reporting cycle for one tick: read the window's counts, judge each pair (send, skip or
//! invalid), record them all as pending in one transaction that also claims the tick, submit
//! with bounded concurrency and retries, record the outcomes in batches. Also the recovery of
//! submissions a crash or shutdown left pending. Timing (when to run) belongs to `daemon`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use futures::StreamExt;
use rand::Rng;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::{AppId, Mcc};
use crate::outcomes::{self, NewSubmission, State, SubmissionOutcome, Tally, Trigger};
use crate::provider::{BackfillRequest, Class, ProviderClient};
use crate::rate::{Rate, RateError};
use crate::source::{self, SourceRow};

/// Outcomes are written once this many have accumulated, or after [`FLUSH_EVERY`].
const FLUSH_BATCH: usize = 64;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts, whatever the backoff doubling reaches.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a cycle needs: the database, the provider and the settings in force.
#[derive(Clone, Debug)]
pub struct Context {
    pub pool: PgPool,
    pub client: ProviderClient,
    pub settings: Arc<Settings>,
    /// `host:pid`, stored with each run so that operators running several instances can tell.
    pub instance: String,
}

/// What was decided for one (app, MCC) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Send(BackfillRequest),
    Skip(String),
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct PlannedPair {
    pub row: SourceRow,
    pub rate: Option<Rate>,
    pub verdict: Verdict,
}

/// A cycle's inputs and decisions, before anything is written or sent.
#[derive(Debug, Clone)]
pub struct Plan {
    pub tick: DateTime<Utc>,
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub callback_time: String,
    pub pairs: Vec<PlannedPair>,
}

/// What a cycle did, for the summary line and the exit code.
#[derive(Debug, Clone)]
pub struct CycleReport {
    pub run_id: i64,
    pub tick: DateTime<Utc>,
    pub tally: Tally,
    pub duration: Duration,
}

impl CycleReport {
    /// Exit 0 only when every pair succeeded or was skipped.
    pub fn all_good(&self) -> bool {
        self.tally.failed == 0 && self.tally.invalid == 0 && self.tally.pending == 0
    }
}

/// `callbackTime`: the tick in the operator's zone, to the second, with its offset
/// (`2023-02-01T00:00:00+08:00`).
pub fn callback_time(tick: DateTime<Utc>, tz: Tz) -> String {
    tick.with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The trailing window `[tick − window, tick)`.
pub fn window(tick: DateTime<Utc>, length: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let length = chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX);
    (
        tick.checked_sub_signed(length)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        tick,
    )
}

/// The tick for an ad-hoc run: now, truncated to the second.
pub fn now_tick() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0)
}

/// A source column for a log field: its text, or "(null)".
fn shown(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("(null)")
}

/// Judges every row. Pure, so that the rules are tested without a database.
pub fn plan(rows: Vec<SourceRow>, settings: &Settings, tick: DateTime<Utc>) -> Plan {
    let callback_time = callback_time(tick, settings.schedule.timezone);
    let mut seen = std::collections::HashSet::new();
    let pairs = rows
        .into_iter()
        .filter(|r| {
            r.app_id
                .as_deref()
                .is_none_or(|a| settings.source.allows(a))
        })
        .filter_map(|row| {
            // A custom query may return a pair twice; the unique key would drop the second.
            let key = (row.app_id.clone(), row.mcc.clone());
            if !seen.insert(key) {
                tracing::warn!(
                    app_id = shown(&row.app_id),
                    mcc = shown(&row.mcc),
                    "source returned the pair twice; using the first row"
                );
                return None;
            }
            let (rate, verdict) = judge(&row, settings.source.min_cardinal, &callback_time);
            Some(PlannedPair { row, rate, verdict })
        })
        .collect();
    Plan {
        tick,
        window: window(tick, settings.source.window),
        callback_time,
        pairs,
    }
}

fn judge(row: &SourceRow, min_cardinal: u64, callback_time: &str) -> (Option<Rate>, Verdict) {
    let invalid = |why: String| (None, Verdict::Invalid(why));
    let app_id = match row.app_id.as_deref().map(AppId::parse) {
        None => return invalid("app_id is null".into()),
        Some(Err(e)) => return invalid(e),
        Some(Ok(a)) => a,
    };
    let mcc = match row.mcc.as_deref().map(Mcc::parse) {
        None => return invalid("mcc is null".into()),
        Some(Err(e)) => return invalid(e),
        Some(Ok(m)) => m,
    };
    let count = |name: &str, v: &Option<String>| -> Result<u64, String> {
        let text = v.as_deref().ok_or_else(|| format!("{name} is null"))?;
        if text.starts_with('-') {
            return Err(format!("{name} is negative ({text})"));
        }
        text.parse::<u64>()
            .map_err(|_| format!("{name} is not a whole number that fits 64 bits ({text})"))
    };
    let backfilled = match count("backfill_number", &row.backfill_number) {
        Ok(v) => v,
        Err(e) => return invalid(e),
    };
    let sent = match count("cardinal_number", &row.cardinal_number) {
        Ok(v) => v,
        Err(e) => return invalid(e),
    };
    match Rate::from_counts(backfilled, sent) {
        Err(e @ RateError::MoreBackfilledThanSent { .. }) => invalid(e.to_string()),
        Err(RateError::NoneSent) => (None, Verdict::Skip("no codes sent in the window".into())),
        Ok(_) if sent < min_cardinal => (
            None,
            Verdict::Skip(format!(
                "only {sent} codes sent, fewer than source.min_cardinal ({min_cardinal})"
            )),
        ),
        Ok(rate) => (
            Some(rate),
            Verdict::Send(BackfillRequest {
                app_id: app_id.to_string(),
                mcc: mcc.to_string(),
                backfill_number: backfilled.to_string(),
                backfill_cardinal_number: sent.to_string(),
                backfill_now: rate.to_string(),
                callback_time: callback_time.to_owned(),
            }),
        ),
    }
}

/// Reads the source for the tick's window and judges the rows; writes nothing.
pub async fn prepare(
    pool: &PgPool,
    settings: &Settings,
    tick: DateTime<Utc>,
) -> anyhow::Result<Plan> {
    let (start, end) = window(tick, settings.source.window);
    let rows = source::read(pool, &settings.source, start, end).await?;
    Ok(plan(rows, settings, tick))
}

/// Runs the cycle for `tick`. `Ok(None)` when another instance already claimed that scheduled
/// tick, or shutdown came before it started. Shutdown stops new requests; those not sent stay
/// pending for recovery.
#[tracing::instrument(skip_all, fields(tick = %tick, trigger = trigger.as_str()))]
pub async fn run(
    ctx: &Context,
    tick: DateTime<Utc>,
    trigger: Trigger,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<CycleReport>> {
    if shutdown.is_cancelled() {
        tracing::info!("shutting down: the cycle is not started");
        return Ok(None);
    }
    let started = Instant::now();
    let plan = prepare(&ctx.pool, &ctx.settings, tick).await?;
    let rows: Vec<NewSubmission> = plan
        .pairs
        .iter()
        .map(|p| {
            let (state, reason) = match &p.verdict {
                Verdict::Send(_) => (State::Pending, None),
                Verdict::Skip(why) => (State::Skipped, Some(why.clone())),
                Verdict::Invalid(why) => (State::Invalid, Some(why.clone())),
            };
            NewSubmission {
                app_id: p.row.app_id.clone().unwrap_or_default(),
                mcc: p.row.mcc.clone().unwrap_or_default(),
                backfill_number: p.row.backfill_number.clone(),
                cardinal_number: p.row.cardinal_number.clone(),
                rate: p.rate.map(|r| r.to_string()),
                callback_time: plan.callback_time.clone(),
                state,
                reason,
            }
        })
        .collect();
    let mut tx = ctx
        .pool
        .begin()
        .await
        .context("starting the claim transaction")?;
    let Some(run_id) =
        outcomes::claim_run(&mut tx, tick, trigger, plan.window, &ctx.instance).await?
    else {
        tracing::info!("tick already run by another instance; skipping it");
        return Ok(None);
    };
    let inserted = outcomes::insert_submissions(&mut tx, run_id, tick, plan.window, &rows).await?;
    tx.commit().await.context("committing the claim")?;
    crate::metrics::record_states(rows.iter().map(|r| r.state.as_str()));
    crate::alarm::evaluate_run(&ctx.pool, &ctx.settings, run_id).await;
    if inserted.len() < rows.len() {
        tracing::warn!(
            already = rows.len() - inserted.len(),
            "some pairs were already recorded for this tick and are not sent again"
        );
    }
    for (i, p) in plan.pairs.iter().enumerate() {
        match &p.verdict {
            Verdict::Skip(why) => {
                tracing::info!(
                    app_id = shown(&p.row.app_id),
                    mcc = shown(&p.row.mcc),
                    "skipped: {why}"
                )
            }
            Verdict::Invalid(why) if inserted.iter().any(|(_, j)| *j == i) => {
                tracing::warn!(
                    app_id = shown(&p.row.app_id),
                    mcc = shown(&p.row.mcc),
                    "invalid row, not sent: {why}"
                )
            }
            _ => {}
        }
    }
    let to_send: Vec<(i64, BackfillRequest)> = inserted
        .into_iter()
        .filter_map(|(id, i)| match &plan.pairs[i].verdict {
            Verdict::Send(req) => Some((id, req.clone())),
            _ => None,
        })
        .collect();
    send_all(ctx, to_send, shutdown).await?;
    let tally = outcomes::finish_run(&ctx.pool, run_id).await?;
    let report = CycleReport {
        run_id,
        tick,
        tally,
        duration: started.elapsed(),
    };
    log_summary(&report);
    Ok(Some(report))
}

fn log_summary(r: &CycleReport) {
    let t = &r.tally;
    tracing::info!(
        run_id = r.run_id,
        pairs = t.pairs,
        succeeded = t.succeeded,
        failed = t.failed,
        skipped = t.skipped,
        invalid = t.invalid,
        pending = t.pending,
        duration_ms = r.duration.as_millis() as u64,
        "cycle for {} done: {} pairs, {} succeeded, {} failed, {} skipped, {} invalid in {:.1}s",
        r.tick,
        t.pairs,
        t.succeeded,
        t.failed,
        t.skipped,
        t.invalid,
        r.duration.as_secs_f64()
    );
}

/// Sends submissions left pending by a crash or a shutdown: those still the latest of their
/// pair are sent again unchanged (the provider keeps the last value it got, so at-least-once is
/// safe); older ones are marked superseded. Returns how many were sent again.
#[tracing::instrument(skip_all)]
pub async fn recover(ctx: &Context, shutdown: &CancellationToken) -> anyhow::Result<usize> {
    let superseded = outcomes::supersede_stale(&ctx.pool).await?;
    let pending = outcomes::pending(&ctx.pool).await?;
    if superseded > 0 || !pending.is_empty() {
        tracing::info!(
            superseded,
            resending = pending.len(),
            "recovering submissions left pending by an interrupted cycle"
        );
    }
    let count = pending.len();
    let items = pending
        .into_iter()
        .map(|p| {
            let req = BackfillRequest {
                app_id: p.app_id,
                mcc: p.mcc,
                backfill_number: p.backfill_number,
                backfill_cardinal_number: p.cardinal_number,
                backfill_now: trim_rate(&p.rate),
                callback_time: p.callback_time,
            };
            (p.id, req)
        })
        .collect();
    send_all(ctx, items, shutdown).await?;
    for run_id in outcomes::unfinished_runs(&ctx.pool).await? {
        outcomes::finish_run(&ctx.pool, run_id).await?;
    }
    Ok(count)
}

/// numeric(5,2) reads back as "12.50"; the provider is sent the form without trailing zeros.
fn trim_rate(stored: &str) -> String {
    if stored.contains('.') {
        stored
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned()
    } else {
        stored.to_owned()
    }
}

/// Set once a rejection shows that every further request would fail the same way.
type StopReason = Arc<Mutex<Option<String>>>;

async fn send_all(
    ctx: &Context,
    items: Vec<(i64, BackfillRequest)>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stop: StopReason = Arc::default();
    let in_flight = ctx.settings.provider.max_in_flight;
    let mut results = futures::stream::iter(items)
        .map(|(id, req)| {
            let stop = stop.clone();
            async move { submit_one(ctx, id, &req, &stop, shutdown).await }
        })
        .buffer_unordered(in_flight);
    let mut batch = Vec::with_capacity(FLUSH_BATCH);
    let mut last_flush = Instant::now();
    while let Some(outcome) = results.next().await {
        crate::metrics::record_outcome(outcome.state.as_str(), outcome.provider_status.as_deref());
        batch.push(outcome);
        if batch.len() >= FLUSH_BATCH || last_flush.elapsed() >= FLUSH_EVERY {
            outcomes::record_outcomes(&ctx.pool, &batch).await?;
            batch.clear();
            last_flush = Instant::now();
        }
    }
    outcomes::record_outcomes(&ctx.pool, &batch).await
}

async fn submit_one(
    ctx: &Context,
    id: i64,
    req: &BackfillRequest,
    stop: &StopReason,
    shutdown: &CancellationToken,
) -> SubmissionOutcome {
    let provider = &ctx.settings.provider;
    let started = Instant::now();
    let mut out = SubmissionOutcome {
        id,
        state: State::Pending,
        reason: None,
        attempts: 0,
        provider_status: None,
        provider_reason: None,
        http_status: None,
        error: None,
        first_attempt_at: None,
        finished_at: None,
        duration_ms: None,
    };
    let finish = |mut out: SubmissionOutcome, state: State| {
        out.state = state;
        if state != State::Pending {
            out.finished_at = Some(Utc::now());
        }
        out.duration_ms = Some(started.elapsed().as_millis() as i64);
        out
    };
    for attempt in 1..=provider.max_attempts {
        if shutdown.is_cancelled() {
            return finish(out, State::Pending);
        }
        if let Some(why) = stop.lock().expect("stop flag").clone() {
            out.reason = Some(format!("not sent: {why}"));
            return finish(out, State::Failed);
        }
        out.attempts = attempt as i32;
        out.first_attempt_at.get_or_insert_with(Utc::now);
        let ex = crate::metrics::timed_request(ctx.client.submit_backfill(req)).await;
        out.provider_status = ex.provider_status.clone();
        out.provider_reason = ex.reason.clone();
        out.http_status = ex.http_status.map(i32::from);
        out.error = ex.error.clone();
        match ex.class {
            Class::Success => return finish(out, State::Succeeded),
            Class::Rejected(rejection) => {
                if rejection.stops_the_cycle() {
                    let why = format!(
                        "provider status {} ({}): {}",
                        ex.provider_status.as_deref().unwrap_or("?"),
                        ex.reason.as_deref().unwrap_or("no reason given"),
                        rejection.advice()
                    );
                    let mut guard = stop.lock().expect("stop flag");
                    if guard.is_none() {
                        tracing::error!("stopping the cycle: {why}");
                        *guard = Some(why);
                    }
                }
                tracing::warn!(app_id = %req.app_id, mcc = %req.mcc, attempt, error = ex.error.as_deref(), "rejected by the provider");
                return finish(out, State::Failed);
            }
            Class::Transient => {
                if ex.provider_status.as_deref() == Some("-16") {
                    tracing::warn!(
                        local_clock = %Utc::now().to_rfc3339(),
                        signed_timestamp = ex.timestamp,
                        "provider says the timestamp expired (-16): check that this host's clock is synchronised (NTP)"
                    );
                }
                tracing::warn!(app_id = %req.app_id, mcc = %req.mcc, attempt, max_attempts = provider.max_attempts, error = ex.error.as_deref(), "transient failure");
                if attempt == provider.max_attempts {
                    out.reason = Some(format!("gave up after {attempt} attempts"));
                    return finish(out, State::Failed);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff(provider.retry_backoff, attempt)) => {}
                    () = shutdown.cancelled() => return finish(out, State::Pending),
                }
            }
        }
    }
    finish(out, State::Failed)
}

/// Exponential backoff with full jitter: a random wait in [base·2^(n−1)/2, base·2^(n−1)],
/// capped, so that many pairs failing together do not retry in lockstep.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << (attempt - 1).min(16))
        .min(MAX_BACKOFF);
    let half = ceiling / 2;
    half + ceiling
        .saturating_sub(half)
        .mul_f64(rand::rng().random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_time_is_the_tick_in_the_zone_with_its_offset() {
        let tick = DateTime::parse_from_rfc3339("2023-01-31T16:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(callback_time(tick, tz), "2023-02-01T00:00:00+08:00");
        assert_eq!(
            callback_time(tick, chrono_tz::UTC),
            "2023-01-31T16:00:00+00:00"
        );
    }

    #[test]
    fn stored_rates_lose_their_trailing_zeros() {
        assert_eq!(trim_rate("12.50"), "12.5");
        assert_eq!(trim_rate("10.00"), "10");
        assert_eq!(trim_rate("33.33"), "33.33");
        assert_eq!(trim_rate("100"), "100");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        for attempt in 1..=30 {
            let d = backoff(base, attempt);
            let ceiling = base
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d >= ceiling / 2 && d <= ceiling, "{attempt}: {d:?}");
        }
    }

    fn row(app: &str, mcc: &str, b: &str, s: &str) -> SourceRow {
        SourceRow {
            app_id: Some(app.into()),
            mcc: Some(mcc.into()),
            backfill_number: Some(b.into()),
            cardinal_number: Some(s.into()),
        }
    }

    #[test]
    fn each_skip_and_invalid_kind_has_its_reason() {
        let cases = [
            (row("appA", "460", "0", "0"), "skip", "no codes sent"),
            (row("appA", "460", "1", "2"), "skip", "min_cardinal"),
            (row("appA", "460", "6", "5"), "invalid", "greater than sent"),
            (row("appA", "460", "-1", "5"), "invalid", "negative"),
            (row("appA", "460", "1", "-5"), "invalid", "negative"),
            (row("appA", "46", "1", "5"), "invalid", "three-digit"),
            (row("abc", "460", "1", "5"), "invalid", "4 to 32"),
            (row(&"a".repeat(33), "460", "1", "5"), "invalid", "4 to 32"),
            (row("appA", "460", "1.5", "5"), "invalid", "whole number"),
        ];
        for (r, kind, needle) in cases {
            let (_, verdict) = judge(&r, 3, "2023-02-01T00:00:00+08:00");
            let (k, why) = match verdict {
                Verdict::Skip(w) => ("skip", w),
                Verdict::Invalid(w) => ("invalid", w),
                Verdict::Send(_) => ("send", String::new()),
            };
            assert_eq!(k, kind, "{r:?}");
            assert!(why.contains(needle), "{r:?}: {why}");
        }
    }
}
