//! What the daemon tells a monitoring system: Prometheus metrics (cycles, submissions, provider
//! latency, pending rows, alarms firing, build info) and a health verdict, served on the opt-in
//! `[metrics] listen` address as `/metrics` and `/healthz`. The cycle and the daemon report into
//! process-wide handles with one-line calls; this module never decides anything about reports.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::db::Db;
use anyhow::Context;
use axum::extract;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;

use crate::config::MetricsSettings;
use crate::domain::run::{RunSummary, State, Trigger};
use crate::domain::status::ProviderStatus;
use crate::provider::{Class, Exchange};

/// How long a scrape waits for the two counts it reads from the database.
const SCRAPE_QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client may take to send a request's headers, counted from the connection (or
/// the previous answer, on a kept-alive one). A scraper sends its request at once; a client that
/// sends half a request line and waits (slowloris) is closed after this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The most connections the endpoint holds open at once; one more is closed as soon as it is
/// accepted. Each holds a file descriptor, and the provider's connections need theirs: under
/// the unit's limit of 1,024 the metrics port must never take more than this many.
pub const MAX_CONNECTIONS: usize = 32;

/// The longest one connection is served, whatever it does: an answer read a byte a minute must
/// not hold its slot either. A scraper reconnects for its next scrape.
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    trigger: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubmissionLabels {
    state: &'static str,
    provider_status: &'static str,
    #[prometheus(flatten)]
    account: AccountLabel,
}

/// The `account` label: the account's name, and no label at all for the unnamed account of
/// `[provider] api_key`, so that a deployment without `[[accounts]]` exports the very series
/// it always has.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
struct AccountLabel(Option<String>);

impl AccountLabel {
    fn of(account: Option<&str>) -> Self {
        Self(account.map(str::to_owned))
    }
}

impl EncodeLabelSet for AccountLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(name) => [("account", name.as_str())].encode(encoder),
            None => Ok(()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The metrics of this process.
struct Metrics {
    registry: Registry,
    cycles: Family<CycleLabels, Counter>,
    cycle_duration: Family<TriggerLabels, Histogram>,
    submissions: Family<SubmissionLabels, Counter>,
    request_duration: Family<RequestLabels, Histogram>,
    last_success: Gauge<f64, AtomicU64>,
    pending: Gauge,
    alarms_firing: Gauge,
    concurrency_limit: Family<AccountLabel, Gauge>,
    rtt_baseline: Family<AccountLabel, Gauge<f64, AtomicU64>>,
    breaker_open: Family<AccountLabel, Gauge>,
    tick_projection: Gauge<f64, AtomicU64>,
    schedule_interval: Gauge<f64, AtomicU64>,
    start_time: Gauge<f64, AtomicU64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("backfill_reporter");
    let cycles = Family::<CycleLabels, Counter>::default();
    registry.register(
        "cycles",
        "Cycles by trigger (schedule, once) and result (ok, failed_pairs, skipped, error)",
        cycles.clone(),
    );
    let cycle_duration = Family::<TriggerLabels, Histogram>::new_with_constructor(|| {
        Histogram::new([
            0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
        ])
    });
    registry.register(
        "cycle_duration_seconds",
        "Time from reading the source to recording the last outcome of a cycle",
        cycle_duration.clone(),
    );
    let submissions = Family::<SubmissionLabels, Counter>::default();
    registry.register(
        "submissions",
        "Submissions by final state, the provider's status (none: no provider answer) and account",
        submissions.clone(),
    );
    let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
        Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ])
    });
    registry.register(
        "provider_request_duration_seconds",
        "Latency of each request to the provider, by outcome (success, rejected, transient)",
        request_duration.clone(),
    );
    let last_success = Gauge::<f64, AtomicU64>::default();
    registry.register(
        "last_success_timestamp_seconds",
        "Unix time at which the last cycle that reached the database finished (0: none yet)",
        last_success.clone(),
    );
    let pending = Gauge::default();
    registry.register(
        "pending_submissions",
        "Submissions waiting to be sent, counted in the database at scrape time",
        pending.clone(),
    );
    let alarms_firing = Gauge::default();
    registry.register(
        "alarms_firing",
        "Pairs (app, MCC) whose route-health alarm is firing, counted at scrape time",
        alarms_firing.clone(),
    );
    let concurrency_limit = Family::<AccountLabel, Gauge>::default();
    registry.register(
        "concurrency_limit",
        "Requests this instance may have on the wire to the provider now, per account (adaptive, at most provider.max_in_flight)",
        concurrency_limit.clone(),
    );
    let rtt_baseline = Family::<AccountLabel, Gauge<f64, AtomicU64>>::default();
    registry.register(
        "provider_rtt_baseline_seconds",
        "The provider's round trip when nothing queues, as each account's adaptive limit measures it (0: not measured yet)",
        rtt_baseline.clone(),
    );
    let breaker_open = Family::<AccountLabel, Gauge>::default();
    registry.register(
        "breaker_open",
        "1 while this instance's circuit breaker for the account is open (sending paused, the provider probed), else 0",
        breaker_open.clone(),
    );
    let tick_projection = Gauge::<f64, AtomicU64>::default();
    registry.register(
        "tick_projected_overrun_seconds",
        "How long after the next tick the current tick's pending rows will be done at the pace so far (0: it fits)",
        tick_projection.clone(),
    );
    let schedule_interval = Gauge::<f64, AtomicU64>::default();
    registry.register(
        "schedule_interval_seconds",
        "The schedule's current interval: from the latest tick to the next (0: not armed yet)",
        schedule_interval.clone(),
    );
    let start_time = Gauge::<f64, AtomicU64>::default();
    registry.register(
        "start_time_seconds",
        "Unix time at which this daemon started",
        start_time.clone(),
    );
    registry.register(
        "build",
        "The running version",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
        }),
    );
    Metrics {
        registry,
        cycles,
        cycle_duration,
        submissions,
        request_duration,
        last_success,
        pending,
        alarms_firing,
        concurrency_limit,
        rtt_baseline,
        breaker_open,
        tick_projection,
        schedule_interval,
        start_time,
    }
});

/// An account's adaptive concurrency limit and the provider's RTT baseline, as they are now.
pub fn record_concurrency(account: Option<&str>, limit: usize, baseline: Option<Duration>) {
    let m = &*METRICS;
    let label = AccountLabel::of(account);
    m.concurrency_limit
        .get_or_create(&label)
        .set(i64::try_from(limit).unwrap_or(i64::MAX));
    m.rtt_baseline
        .get_or_create(&label)
        .set(baseline.map_or(0.0, |b| b.as_secs_f64()));
}

/// Creates, at zero, the series an account's alerts read: a counter that first appears at 1
/// has no increase for Prometheus, so the first failure of a process would go unseen.
pub fn declare_account(account: Option<&str>) {
    let failures = ProviderStatus::DOCUMENTED
        .iter()
        .filter(|s| **s != ProviderStatus::Success)
        .map(ProviderStatus::label);
    let statuses = std::iter::once("none")
        .chain(failures)
        .chain(std::iter::once("other"));
    let success = (State::Succeeded.as_str(), ProviderStatus::Success.label());
    for (state, provider_status) in
        std::iter::once(success).chain(statuses.map(|status| (State::Failed.as_str(), status)))
    {
        let _ = METRICS.submissions.get_or_create(&SubmissionLabels {
            state,
            provider_status,
            account: AccountLabel::of(account),
        });
    }
    record_breaker(account, false);
}

/// Whether this instance's breaker for the account is open.
pub fn record_breaker(account: Option<&str>, open: bool) {
    METRICS
        .breaker_open
        .get_or_create(&AccountLabel::of(account))
        .set(i64::from(open));
}

/// The schedule's current interval, for the alert on cycles that stopped succeeding.
pub fn record_schedule_interval(interval: Duration) {
    METRICS.schedule_interval.set(interval.as_secs_f64());
}

/// How long after the next tick the current one is projected to end (zero when it fits).
pub fn record_tick_projection(overrun: Duration) {
    METRICS.tick_projection.set(overrun.as_secs_f64());
}

/// A cycle's result, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleResult {
    /// Every pair succeeded or was skipped.
    Ok,
    /// The cycle ran, but some pair failed, was invalid or is still pending.
    FailedPairs,
    /// Not planned here: another instance claimed the tick (it still sends its share).
    Skipped,
    /// The cycle stopped on an error (database, source query).
    Error,
}

impl CycleResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::FailedPairs => "failed_pairs",
            Self::Skipped => "skipped",
            Self::Error => "error",
        }
    }
}

/// Counts one cycle; `duration` is observed for cycles that ran.
pub fn record_cycle(trigger: Trigger, result: CycleResult, duration: Option<Duration>) {
    let m = &*METRICS;
    m.cycles
        .get_or_create(&CycleLabels {
            trigger: trigger.as_str(),
            result: result.as_str(),
        })
        .inc();
    if let Some(d) = duration {
        m.cycle_duration
            .get_or_create(&TriggerLabels {
                trigger: trigger.as_str(),
            })
            .observe(d.as_secs_f64());
    }
    if matches!(result, CycleResult::Ok | CycleResult::FailedPairs) {
        m.last_success.set(unix_now());
    }
}

/// Counts a closed run: ok when every pair succeeded, was skipped or superseded.
pub fn record_run(summary: &RunSummary) {
    let result = if summary.all_good() {
        CycleResult::Ok
    } else {
        CycleResult::FailedPairs
    };
    record_cycle(summary.trigger, result, Some(summary.duration));
}

/// The daemon's view of one tick's claim: `Ok(true)` claimed here, `Ok(false)` claimed by
/// another instance, an error the database's or the source query's, which `/healthz` reports
/// (with the error) until a later claim succeeds.
pub fn record_claim(result: Result<bool, &anyhow::Error>) {
    match result {
        Ok(here) => {
            HEALTH.set_problem(None);
            if !here {
                record_cycle(Trigger::Schedule, CycleResult::Skipped, None);
            }
        }
        Err(e) => {
            let cause = if crate::db::is_unreachable(e) {
                "database unreachable"
            } else {
                "error"
            };
            HEALTH.set_problem(Some(format!(
                "the last claim of a tick failed ({cause}): {}",
                crate::domain::excerpt::line(&format!("{e:#}"))
            )));
            record_cycle(Trigger::Schedule, CycleResult::Error, None);
        }
    }
}

/// Counts a submission's final state, by the account it was planned for. A pair left pending
/// (shutdown came first) is counted when it is finished later; skipped and invalid pairs,
/// decided before any request, have no status.
pub fn record_outcome(
    state: State,
    provider_status: Option<&ProviderStatus>,
    account: Option<&str>,
) {
    count_outcomes(state, provider_status, account, 1);
}

/// [`record_outcome`] for `n` rows decided without a provider answer (skipped, invalid,
/// superseded, or failed without a request).
pub fn record_decided(account: Option<&str>, state: State, n: u64) {
    count_outcomes(state, None, account, n);
}

fn count_outcomes(
    state: State,
    provider_status: Option<&ProviderStatus>,
    account: Option<&str>,
    n: u64,
) {
    let Some(state) = final_state(state) else {
        return;
    };
    METRICS
        .submissions
        .get_or_create(&SubmissionLabels {
            state,
            provider_status: status_label(provider_status),
            account: AccountLabel::of(account),
        })
        .inc_by(n);
}

fn final_state(state: State) -> Option<&'static str> {
    (state != State::Pending).then_some(state.as_str())
}

/// The documented statuses keep their value, anything else is "other"
/// ([`ProviderStatus::label`]); "none" when there was no provider answer.
fn status_label(status: Option<&ProviderStatus>) -> &'static str {
    status.map_or("none", ProviderStatus::label)
}

/// Wraps one provider request and observes its latency by outcome.
pub async fn timed_request<T, F>(request: F) -> Exchange<T>
where
    F: Future<Output = Exchange<T>>,
{
    let started = Instant::now();
    let exchange = request.await;
    let outcome = match exchange.class {
        Class::Success => "success",
        Class::Rejected(_) => "rejected",
        Class::Transient => "transient",
    };
    METRICS
        .request_duration
        .get_or_create(&RequestLabels { outcome })
        .observe(started.elapsed().as_secs_f64());
    exchange
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What `/healthz` answers from: the daemon sets `armed` when its schedule is running and clears
/// it at shutdown; each claim of a tick says whether it got through, and if not, why (every
/// error a cycle can end on is the database's or the source query's: provider failures are
/// outcomes, not errors).
pub struct Health {
    armed: AtomicBool,
    problem: std::sync::Mutex<Option<String>>,
}

static HEALTH: Health = Health {
    armed: AtomicBool::new(false),
    problem: std::sync::Mutex::new(None),
};

/// The process's health state.
pub fn health() -> &'static Health {
    &HEALTH
}

impl Health {
    pub fn set_armed(&self, armed: bool) {
        self.armed.store(armed, Ordering::Relaxed);
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// `Ok` when healthy, else why not, in words an operator can act on.
    pub fn verdict(&self) -> Result<(), String> {
        if !self.armed.load(Ordering::Relaxed) {
            return Err("the schedule is not armed (starting or stopping)\n".into());
        }
        match &*self.problem.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(problem) => Err(format!("{problem}\n")),
            None => Ok(()),
        }
    }
}

/// The running endpoint; dropping it stops the server.
pub struct MetricsServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the endpoint when `[metrics] listen` is set (`None` otherwise). A port that cannot
/// be bound is an error: the operator asked for it, and a silent absence would look like an
/// outage to the monitoring.
pub async fn serve(settings: &MetricsSettings, pool: Db) -> anyhow::Result<Option<MetricsServer>> {
    let Some(listen) = settings.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding metrics.listen {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the metrics address")?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .with_state(pool);
    METRICS.start_time.set(unix_now());
    let task = tokio::spawn(accept_connections(listener, app));
    tracing::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "metrics.listen {addr} is not a loopback address: /metrics and /healthz have no \
             authentication, so anyone who can reach this address can read them; keep it on \
             loopback or a private interface"
        );
    }
    Ok(Some(MetricsServer { addr, task }))
}

/// Serves each connection with hyper's HTTP/1 builder, so that a header-read timeout applies
/// ([`HEADER_READ_TIMEOUT`]; `axum::serve` takes no settings), at most [`MAX_CONNECTIONS`] at
/// once and each for at most [`MAX_CONNECTION_LIFE`]. Prometheus speaks HTTP/1.1.
async fn accept_connections(listener: tokio::net::TcpListener, app: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted: wait
                // a little rather than spin; the listener itself stays good.
                tracing::debug!("metrics endpoint: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                "metrics endpoint: {MAX_CONNECTIONS} connections open, closing one more"
            );
            continue;
        };
        let connection = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(app.clone()),
        );
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MAX_CONNECTION_LIFE, connection).await;
            drop(slot);
        });
    }
}

async fn scrape(extract::State(pool): extract::State<Db>) -> impl IntoResponse {
    let counts = tokio::time::timeout(
        SCRAPE_QUERY_TIMEOUT,
        sqlx::query!(
            r#"SELECT (SELECT count(*) FROM report_submissions WHERE state = 'pending')
                        AS "pending!",
                    (SELECT count(*) FROM route_alarms) AS "firing!""#
        )
        .fetch_one(&pool),
    )
    .await;
    match counts {
        Ok(Ok(counts)) => {
            METRICS.pending.set(counts.pending);
            METRICS.alarms_firing.set(counts.firing);
        }
        // The gauges keep their last values; /healthz and the cycle metrics show the outage.
        Ok(Err(e)) => tracing::debug!("metrics scrape: counting pending rows: {e}"),
        Err(_) => tracing::debug!("metrics scrape: counting pending rows timed out"),
    }
    let mut body = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut body, &METRICS.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "encoding the metrics failed\n".to_owned(),
        ),
    }
}

async fn healthz() -> impl IntoResponse {
    match HEALTH.verdict() {
        Ok(()) => (
            StatusCode::OK,
            "ok: the schedule is armed and the last cycle reached the database\n".to_owned(),
        ),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undocumented_statuses_share_one_label() {
        let label = |s: &str| status_label(Some(&ProviderStatus::parse(s)));
        assert_eq!(label("-22"), "-22");
        assert_eq!(status_label(None), "none");
        assert_eq!(label("-29"), "other");
        assert_eq!(label("anything"), "other");
    }

    #[test]
    fn pending_is_not_a_final_state() {
        assert_eq!(final_state(State::Pending), None);
        assert_eq!(final_state(State::Failed), Some("failed"));
    }

    #[test]
    fn health_needs_both_an_armed_schedule_and_the_database() {
        let h = Health {
            armed: AtomicBool::new(false),
            problem: std::sync::Mutex::new(None),
        };
        assert!(h.verdict().unwrap_err().contains("not armed"));
        h.set_armed(true);
        assert!(h.verdict().is_ok());
        h.set_problem(Some(
            "the last claim of a tick failed (error): index row requires".into(),
        ));
        assert!(h.verdict().unwrap_err().contains("index row requires"));
    }
}
