//! The long-running service. A timer loop plans each tick of the schedule (claim it, queue its
//! pairs) while a sender works the queue; several instances on one database share both, with
//! PostgreSQL as the only coordination: a tick is claimed once (`ON CONFLICT DO NOTHING`), and
//! rows are leased. Nothing here exits on a database outage: start-up, planning and sending
//! retry with backoff, and the latest due tick that is not yet claimed is retried on every wake
//! until it is claimed or the next tick replaces it. Signals: SIGTERM/SIGINT drain and exit,
//! SIGHUP reloads the config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::schedule::{on_wake, Wake};
use crate::config::{self, Settings};
pub use crate::db::clock::Clock;
use crate::domain::run::Trigger;
use crate::queue::context::Context;
use crate::queue::runs;
use crate::queue::sender::{self, Scope};
use crate::queue::tick::{self, Plan, Planned};
use crate::retry::step::{Failures, Pace};
use crate::{
    app::shutdown, db, queue::retention, queue::source, queue::store, views::alarm, views::metrics,
};

/// The longest the loop sleeps without looking at the wall clock. Tokio's timers run on the
/// monotonic clock, which stops during suspend and ignores NTP steps; waking once a second to
/// compare with the wall clock keeps ticks on time after either, for a negligible cost
/// (`bench/idle.sh`).
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// Retries of start-up back off up to this.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Retries of a due tick's claim back off up to this: the tick must be claimed as soon as the
/// database answers, before the next tick replaces it.
const DUE_RETRY: Duration = Duration::from_secs(5);

/// A planning that runs longer than this is logged: every statement has a timeout, so it is
/// slow, not stuck, but an operator should see it.
const SLOW_PLANNING: Duration = Duration::from_secs(120);

/// At shutdown, after the drain and the last outcomes ([`sender::RECORD_LIMIT`]): time to hand
/// the last alerts to the webhook. The unit's `TimeoutStopSec=` must cover [`STOP_LIMIT`].
const WEBHOOK_LIMIT: Duration = Duration::from_secs(2);
pub const STOP_LIMIT: Duration = Duration::from_secs(
    sender::DRAIN_LIMIT.as_secs() + sender::RECORD_LIMIT.as_secs() + WEBHOOK_LIMIT.as_secs(),
);

/// How often open runs are checked and old rows pruned.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// `host:pid`, to tell instances apart in `report_runs.instance` and the logs.
pub fn instance_name() -> String {
    // uname(2)'s nodename is what gethostname(2) returns; unlike /proc/sys/kernel/hostname it
    // needs no /proc, which the unit hides (ProcSubset=pid).
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .trim()
        .to_owned();
    let host = if host.is_empty() {
        "unknown-host".to_owned()
    } else {
        host
    };
    format!("{host}:{}", std::process::id())
}

/// Installs the signal handlers and serves until SIGTERM or SIGINT.
pub async fn run_until_signalled(path: PathBuf, settings: Settings) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let reload = shutdown::reload_on_hangup()?;
    serve(path, settings, stop, reload, Clock::database()).await
}

/// The latest due tick not yet claimed, and how trying to claim it has gone.
#[derive(Debug, Clone)]
struct Due {
    tick: DateTime<Utc>,
    failures: Failures,
    retry_at: Instant,
}

impl Due {
    fn new(tick: DateTime<Utc>) -> Self {
        Self {
            tick,
            failures: Failures::new(
                format!("claim the tick {tick}"),
                "retrying until it is claimed or the next tick replaces it",
                Pace::from_a_second_up_to(DUE_RETRY),
            )
            .warn_each_new_cause(),
            retry_at: Instant::now(),
        }
    }

    /// The failed attempts to claim it so far and the last one's cause, if any failed.
    fn late(&self) -> Option<(u32, String)> {
        let cause = self.failures.last_cause()?;
        Some((self.failures.count(), cause.to_owned()))
    }
}

/// A tick being planned in the background.
struct Planning {
    tick: DateTime<Utc>,
    /// How many of the replaced ticks it records first.
    recording: usize,
    started: Instant,
    warned: bool,
    handle: JoinHandle<anyhow::Result<Plan>>,
}

/// What start-up found once the database answered.
struct Started {
    catch_up: Option<DateTime<Utc>>,
}

/// The daemon: `stop` stops it, each message on `reload` re-reads the config at `path`,
/// `clock` is the clock ticks are compared with: the database's ([`Clock::database`]), so
/// that hosts whose clocks differ fire alike.
pub async fn serve(
    path: PathBuf,
    settings: Settings,
    stop: CancellationToken,
    reload: mpsc::UnboundedReceiver<()>,
    clock: Clock,
) -> anyhow::Result<()> {
    let pool = db::connect_lazy(&settings.database)?;
    let ctx = Context::new(settings, pool, instance_name())?;
    // Before the database: /healthz says what is wrong while an outage is waited out.
    let _metrics = metrics::serve(&ctx.settings.metrics, ctx.pool.clone()).await?;
    let (ctx_tx, _) = watch::channel(ctx.clone());
    let now = clock.now();
    let mut daemon = Daemon {
        planned: ctx.settings.schedule.next_tick(now),
        ctx,
        ctx_tx,
        path,
        clock,
        due: None,
        planning: None,
        replaced: Vec::new(),
        wake: Arc::new(Notify::new()),
        workers: Vec::new(),
        stop,
    };
    let result = daemon.serve(reload).await;
    daemon.shut_down().await;
    result
}

struct Daemon {
    path: PathBuf,
    ctx: Context,
    /// Hands a reloaded context to the sender.
    ctx_tx: watch::Sender<Context>,
    /// The database's clock (estimated between readings); the host's only fires the timer.
    clock: Clock,
    /// The next tick armed.
    planned: DateTime<Utc>,
    due: Option<Due>,
    planning: Option<Planning>,
    /// Due ticks that a later one replaced before they could be claimed, with why: recorded
    /// in `report_runs` once the database answers.
    replaced: Vec<(DateTime<Utc>, String)>,
    /// Wakes the sender at once when this instance queued a tick.
    wake: Arc<Notify>,
    workers: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Daemon {
    async fn serve(&mut self, mut reload: mpsc::UnboundedReceiver<()>) -> anyhow::Result<()> {
        tracing::info!(
            instance = %self.ctx.instance,
            "backfill-reporter {} started: schedule {:?} in {}, next tick {}",
            env!("CARGO_PKG_VERSION"),
            self.ctx.settings.schedule.cron.to_string(),
            self.ctx.settings.schedule.timezone,
            self.local(self.planned)
        );
        // Ready at once: a database that is down is waited out here, not by systemd's restarts.
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("connecting to the database"),
        ]);
        metrics::health().set_armed(true);
        let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
        let mut watchdog_tick =
            tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut startup = Some(tokio::spawn(start_up(self.ctx.clone(), self.clock.clone())));
        loop {
            let wait = CLOCK_CHECK.min(
                (self.planned - self.clock.now())
                    .to_std()
                    .unwrap_or_default(),
            );
            tokio::select! {
                // Shutdown first: when it and a tick are ready together, no new work starts.
                biased;
                () = self.stop.cancelled() => return Ok(()),
                done = async { startup.as_mut().expect("guarded").await }, if startup.is_some() => {
                    startup = None;
                    let started = done.map_err(anyhow::Error::from).and_then(|r| r)?;
                    self.on_started(started);
                }
                done = async { (&mut self.planning.as_mut().expect("guarded").handle).await }, if self.planning.is_some() => {
                    let planning = self.planning.take().expect("guarded");
                    let result = done.map_err(anyhow::Error::from).and_then(|r| r);
                    if result.is_ok() {
                        self.replaced.drain(..planning.recording);
                    }
                    self.on_planned(planning.tick, result);
                }
                Some(()) = reload.recv() => self.reload().await,
                _ = watchdog_tick.tick(), if watchdog.is_some() => {
                    // The loop is alive; every statement and request has a timeout, so no part
                    // of the work can hang without a log line.
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
                () = tokio::time::sleep(wait) => {
                    self.on_wake();
                    if startup.is_none() {
                        self.plan_due();
                    }
                    self.watch_planning();
                }
            }
        }
    }

    fn on_started(&mut self, started: Started) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Status("running")]);
        // Until now the timer followed this host's clock; from now on the database's. A tick
        // fired before is kept only if it is still the latest by the database's clock (the
        // catch-up below covers the rest), and the next tick is armed anew.
        let now = self.clock.now();
        let schedule = &self.ctx.settings.schedule;
        let latest = schedule.cron.latest_at_or_before(now, schedule.timezone);
        self.due = self.due.take().filter(|d| Some(d.tick) == latest);
        self.planned = schedule.next_tick(now);
        self.record_interval();
        if let Some(tick) = started.catch_up {
            if self.due.as_ref().is_none_or(|d| d.tick < tick) {
                self.due = Some(Due::new(tick));
            }
        }
        let ctx = self.ctx_tx.subscribe();
        let (stop, wake) = (self.stop.clone(), self.wake.clone());
        self.workers.push(tokio::spawn(async move {
            if let Err(e) = sender::work_with(ctx, Scope::All, stop, wake).await {
                tracing::error!("the sender stopped: {e:#}");
            }
        }));
        self.workers.push(tokio::spawn(maintain(
            self.ctx_tx.subscribe(),
            self.clock.clone(),
            self.stop.clone(),
        )));
        self.plan_due();
    }

    /// Compares the armed tick with the wall clock; a tick that fired becomes the due tick,
    /// replacing one that could not be claimed yet.
    fn on_wake(&mut self) {
        let now = self.clock.now();
        let (schedule, tz) = (
            &self.ctx.settings.schedule.cron,
            self.ctx.settings.schedule.timezone,
        );
        match on_wake(schedule, tz, self.planned, now) {
            Wake::TooEarly => {
                // The wall clock may have been stepped back: never wait past the real next tick.
                self.planned = self.planned.min(self.ctx.settings.schedule.next_tick(now));
            }
            Wake::Fire { tick, missed } => {
                if missed > 0 {
                    tracing::warn!(missed, "woke late (suspend, clock step or overload): one catch-up cycle for the latest tick {tick}, not one per missed tick");
                }
                if let Some(old) = self.due.take().filter(|d| d.tick < tick) {
                    let why = old.late().map_or_else(
                        || "it was still waiting for the previous planning".into(),
                        |(_, cause)| cause,
                    );
                    tracing::warn!(
                        "the tick {} was never claimed ({why}); the tick {tick} replaces it",
                        old.tick
                    );
                    self.replaced.push((
                        old.tick,
                        format!("not run: {why}; replaced by the tick {tick}"),
                    ));
                }
                self.due = Some(Due::new(tick));
                self.planned = self.ctx.settings.schedule.next_tick(now.max(tick));
                self.record_interval();
                tracing::debug!(next = %self.local(self.planned), "next tick armed");
            }
        }
    }

    /// Starts planning the due tick unless a planning runs or its retry is not due yet.
    fn plan_due(&mut self) {
        if self.planning.is_some() {
            return;
        }
        let Some(due) = self.due.as_ref().filter(|d| Instant::now() >= d.retry_at) else {
            return;
        };
        let late = due.late();
        let (ctx, tick) = (self.ctx.clone(), due.tick);
        let replaced = self.replaced.clone();
        let recording = replaced.len();
        let wake = self.wake.clone();
        let handle = tokio::spawn(plan_tick(ctx, tick, replaced, late, wake));
        self.planning = Some(Planning {
            tick,
            recording,
            started: Instant::now(),
            warned: false,
            handle,
        });
    }

    fn on_planned(&mut self, tick: DateTime<Utc>, result: anyhow::Result<Plan>) {
        match &result {
            Ok(Plan::Planned(_)) => metrics::record_claim(Ok(true)),
            Ok(Plan::Taken) => metrics::record_claim(Ok(false)),
            Ok(Plan::NotDue(_)) => {}
            Err(e) => metrics::record_claim(Err(e)),
        }
        let Some(due) = self.due.as_mut().filter(|d| d.tick == tick) else {
            return;
        };
        match result {
            Ok(Plan::Planned(_)) => self.due = None,
            Ok(Plan::Taken) => {
                tracing::info!("tick {tick} already claimed by another instance; it sends its share of the pairs from the queue");
                self.due = None;
            }
            Ok(Plan::NotDue(wait)) => {
                // This host fired early by the database's clock: claim when that reaches it.
                tracing::debug!(
                    wait_ms = wait.as_millis() as u64,
                    "tick {tick} not due yet by the database's clock"
                );
                due.retry_at = Instant::now() + wait;
            }
            Err(e) => {
                let message = crate::domain::excerpt::line(&format!("{e:#}"));
                let cause = if db::is_unreachable(&e) {
                    format!("database unreachable: {message}")
                } else {
                    message
                };
                // Retried on (almost) every wake, until claimed; its success is logged with
                // the claim, as a late one.
                due.retry_at = Instant::now() + due.failures.failed(&cause).wait;
            }
        }
    }

    fn watch_planning(&mut self) {
        if let Some(p) = self.planning.as_mut().filter(|p| !p.warned) {
            if p.started.elapsed() >= SLOW_PLANNING {
                p.warned = true;
                tracing::warn!(
                    "planning the tick {} has taken {}s so far (a slow source query or database)",
                    p.tick,
                    p.started.elapsed().as_secs()
                );
            }
        }
    }

    /// Reads and validates the config again. The database connection and its pool size stay as
    /// they are until a restart; everything else (schedule, window, apps, query, concurrency,
    /// provider settings and credentials) takes effect at once.
    async fn reload(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        match reload_context(&self.ctx, &self.path).await {
            Ok(new_ctx) => {
                let (old, new) = (&self.ctx.settings.schedule, &new_ctx.settings.schedule);
                let schedule_changed =
                    old.cron.to_string() != new.cron.to_string() || old.timezone != new.timezone;
                self.ctx = new_ctx;
                let _ = self.ctx_tx.send(self.ctx.clone());
                if schedule_changed {
                    self.planned = self.ctx.settings.schedule.next_tick(self.clock.now());
                    self.record_interval();
                }
                tracing::info!(
                    "config reloaded: schedule {:?} in {}, next tick {}",
                    self.ctx.settings.schedule.cron.to_string(),
                    self.ctx.settings.schedule.timezone,
                    self.local(self.planned)
                );
            }
            Err(e) => tracing::error!("config reload refused, keeping the old config: {e:#}"),
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    }

    async fn shut_down(&mut self) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        metrics::health().set_armed(false);
        self.stop.cancel();
        if let Some(p) = self.planning.take() {
            // Rolled back with its transaction: the tick stays unclaimed for the next start.
            p.handle.abort();
        }
        // The sender drains within sender::DRAIN_LIMIT, then records the last outcomes.
        let limit = sender::DRAIN_LIMIT + sender::RECORD_LIMIT;
        for worker in self.workers.drain(..) {
            if tokio::time::timeout(limit, worker).await.is_err() {
                tracing::warn!(
                    "a task did not stop in time; what it held stays pending for the next owner"
                );
            }
        }
        alarm::wait_for_notifications(WEBHOOK_LIMIT).await;
        tracing::info!("stopped");
    }

    /// The interval of the schedule that holds now, from its latest tick to the next: what the
    /// alert on cycles that stop succeeding measures "two intervals" by.
    fn record_interval(&self) {
        let schedule = &self.ctx.settings.schedule;
        let now = self.clock.now();
        let from = schedule
            .cron
            .latest_at_or_before(now, schedule.timezone)
            .unwrap_or(now);
        let interval = (schedule.next_tick(from) - from)
            .to_std()
            .unwrap_or_default();
        metrics::record_schedule_interval(interval);
    }

    fn local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.ctx.settings.schedule.timezone)
            .to_rfc3339()
    }
}

/// Records the ticks that were replaced before they could run, then plans `tick`, noting why
/// it was late (`late`: the failed attempts before this one, and the last error), by the
/// database's clock.
async fn plan_tick(
    ctx: Context,
    tick: DateTime<Utc>,
    replaced: Vec<(DateTime<Utc>, String)>,
    late: Option<(u32, String)>,
    wake: Arc<Notify>,
) -> anyhow::Result<Plan> {
    for (old, note) in replaced {
        let window = tick::window(old, ctx.settings.source.window);
        runs::record_missed(&ctx.pool, old, window, &ctx.instance, &note).await?;
    }
    let plan = tick::plan(&ctx, tick, Trigger::Schedule, None).await?;
    if let (Plan::Planned(p), Some((failures, error))) = (&plan, late) {
        let note = late_note(p, tick, failures, &error);
        tracing::info!("{note}");
        runs::set_note(&ctx.pool, p.run_id, &note).await?;
    }
    wake.notify_one();
    Ok(plan)
}

/// Why a tick was claimed late, with the delay by the database's clock.
fn late_note(p: &Planned, tick: DateTime<Utc>, failures: u32, error: &str) -> String {
    format!(
        "claimed {}s after its tick, after {}: {error}",
        (p.claimed_at - tick).num_seconds(),
        crate::queue::sender::count(failures, "failed attempt")
    )
}

/// Migrations, the source's columns, deadlines for rows an older release left pending, and the
/// tick missed while stopped. Retries while the database is unreachable; any other error (a
/// source query that does not prepare) is a config error that stops the daemon.
async fn start_up(ctx: Context, clock: Clock) -> anyhow::Result<Started> {
    let mut failures = Failures::new(
        "reach the database",
        "retrying with backoff",
        Pace::from_a_second_up_to(MAX_RETRY),
    )
    .warn_each_new_cause();
    loop {
        match try_start_up(&ctx, &clock).await {
            Ok(started) => {
                failures.succeeded();
                return Ok(started);
            }
            Err(e) if db::is_unreachable(&e) => {
                let retry = failures.failed(&format!("{e:#}"));
                if retry.warn {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(
                        "waiting for the database",
                    )]);
                }
                tokio::time::sleep(retry.wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn try_start_up(ctx: &Context, clock: &Clock) -> anyhow::Result<Started> {
    for m in db::migrate(&ctx.pool).await? {
        tracing::info!("applied migration {m}");
    }
    source::check_columns(&ctx.pool, &ctx.settings.source).await?;
    clock.sync(&ctx.pool).await?;
    let now = clock.now();
    let filled = store::fill_deadlines(&ctx.pool, ctx.settings.schedule.next_tick(now)).await?;
    if filled > 0 {
        tracing::info!(
            filled,
            "submissions left pending by an earlier release are queued again, until the next tick"
        );
    }
    Ok(Started {
        catch_up: missed_tick(ctx, now).await?,
    })
}

/// After downtime, the latest tick that has passed if it was never run: it is run once at
/// start, not once per missed tick. `None` on a first start (nothing was missed).
async fn missed_tick(ctx: &Context, now: DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>> {
    let (schedule, tz) = (&ctx.settings.schedule.cron, ctx.settings.schedule.timezone);
    let last_run = runs::last_scheduled_tick(&ctx.pool).await?;
    Ok(match (last_run, schedule.latest_at_or_before(now, tz)) {
        (Some(last), Some(due)) if due > last => {
            tracing::info!(last_run = %last, "the tick {due} was missed while stopped: running it now");
            Some(due)
        }
        _ => None,
    })
}

/// Closes runs whose last rows another instance finished, and prunes old rows hourly.
/// Also reads the database's clock again, so that the estimate the timer follows never drifts.
async fn maintain(ctx: watch::Receiver<Context>, clock: Clock, stop: CancellationToken) {
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(MAINTENANCE_EVERY) => {}
        }
        let ctx = ctx.borrow().clone();
        let result = async {
            clock.sync(&ctx.pool).await?;
            for run_id in runs::open_runs(&ctx.pool).await? {
                sender::close_run(&ctx.pool, run_id).await?;
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(Instant::now());
                let cutoff = retention::cutoff(clock.now(), ctx.settings.database.keep);
                retention::prune(&ctx.pool, cutoff).await?;
                if ctx.settings.source.query.is_none() {
                    let cutoff = retention::cutoff(clock.now(), ctx.settings.source.keep);
                    retention::prune_counts(&ctx.pool, cutoff).await?;
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!("maintenance failed, trying again in a minute: {e:#}");
        }
    }
}

/// Reads and validates the config again (credentials included) and builds a new context over
/// the same pool. A new database URL or CA (a rotated `database_url` credential, say) is tried
/// once and then used for every new connection; the pool size, the pooler and `direct_url`
/// wait for a restart.
async fn reload_context(ctx: &Context, path: &std::path::Path) -> anyhow::Result<Context> {
    use secrecy::ExposeSecret;
    let mut new = config::load(path)?;
    for warning in &new.warnings {
        tracing::warn!("{warning}");
    }
    let old_db = &ctx.settings.database;
    let url = |u: &Option<secrecy::SecretString>| u.as_ref().map(|u| u.expose_secret().to_owned());
    if old_db.max_connections != new.database.max_connections {
        tracing::warn!("database.max_connections takes effect at the next restart");
    }
    if old_db.pooler != new.database.pooler
        || url(&old_db.direct_url) != url(&new.database.direct_url)
    {
        tracing::warn!("database.pooler and database.direct_url take effect at the next restart");
    }
    new.database.max_connections = old_db.max_connections;
    new.database.pooler = old_db.pooler;
    new.database.direct_url = old_db.direct_url.clone();
    if url(&old_db.url) != url(&new.database.url)
        || old_db.ca_file != new.database.ca_file
        || old_db.statement_timeout != new.database.statement_timeout
    {
        ctx.pool.reconfigure(&new.database).await?;
        tracing::info!("database settings reloaded: new connections use them");
    }
    if let Err(e) = source::check_columns(&ctx.pool, &new.source).await {
        if !db::is_unreachable(&e) {
            return Err(e);
        }
        tracing::warn!("the source query could not be checked now (database unreachable); it is checked before every cycle");
    }
    Context::new(new, ctx.pool.clone(), ctx.instance.clone())
}
