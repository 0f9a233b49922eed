//! The long-running service: a timer loop that fires cycles at the schedule's ticks, at most one
//! at a time, with one catch-up cycle after downtime or a late wake-up, and recovery of what a
//! crash left pending. Signals: SIGTERM/SIGINT drain and exit, SIGHUP reloads the config.
//! Several instances may share a database: a PostgreSQL advisory lock lets one cycle run at a
//! time, and the tick claim in `report_runs` keeps a tick to one instance.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Settings};
use crate::cycle::{self, Context};
use crate::outcomes::{self, Trigger};
use crate::provider::ProviderClient;
use crate::schedule::{on_wake, Wake};
use crate::{db, source};

/// The longest the loop sleeps without looking at the wall clock. Tokio's timers run on the
/// monotonic clock, which stops during suspend and ignores NTP steps; waking once a second to
/// compare with the wall clock keeps ticks on time after either, for a negligible cost
/// (`bench/idle.sh`: about 10 ms of CPU a minute).
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// The advisory lock key that serialises cycles across instances ("bfrp").
const CYCLE_LOCK: i64 = 0x6266_7270;

/// How long a scheduled cycle waits for another instance's (or a `run --once`'s) cycle to
/// finish before giving its tick up. After the wait the tick is usually found claimed.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// After this many cycles in a row end in an error (database down, source query broken), the
/// watchdog is no longer fed, so that systemd restarts the service and the operator sees it.
const MAX_FAILED_CYCLES: u32 = 3;

/// Time allowed at shutdown beyond `request_timeout` for recording the last outcomes.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The wall clock, injectable so that tests can step it as suspend or NTP would.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// `host:pid`, to tell instances apart in `report_runs.instance` and the logs.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    format!("{host}:{}", std::process::id())
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot listen for SIGTERM/SIGINT");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests, then exiting"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests, then exiting"),
        }
        t.cancel();
    });
    token
}

/// Installs the signal handlers and serves until SIGTERM or SIGINT.
pub async fn run_until_signalled(path: PathBuf, settings: Settings) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if reload_tx.send(()).is_err() {
                break;
            }
        }
    });
    serve(path, settings, shutdown, reload_rx, system_clock()).await
}

async fn build_context(settings: Settings, pool: Option<sqlx::PgPool>) -> anyhow::Result<Context> {
    let pool = match pool {
        Some(p) => p,
        None => db::connect(&settings.database).await?,
    };
    Ok(Context {
        client: ProviderClient::new(&settings.provider)?,
        pool,
        settings: Arc::new(settings),
        instance: instance_name(),
    })
}

/// A cycle (or the start-up recovery) running in the background.
struct Task {
    what: String,
    handle: JoinHandle<()>,
}

/// The daemon: `shutdown` stops it, each message on `reload` re-reads the config at `path`,
/// `clock` is the wall clock ticks are compared with.
pub async fn serve(
    path: PathBuf,
    settings: Settings,
    shutdown: CancellationToken,
    mut reload: mpsc::UnboundedReceiver<()>,
    clock: Clock,
) -> anyhow::Result<()> {
    let mut ctx = build_context(settings, None).await?;
    for m in db::migrate(&ctx.pool).await? {
        tracing::info!("applied migration {m}");
    }
    source::check_columns(&ctx.pool, &ctx.settings.source).await?;
    let _metrics = crate::metrics::serve(&ctx.settings.metrics, ctx.pool.clone()).await?;
    let failures = Arc::new(AtomicU32::new(0));

    let now = clock();
    let catch_up = missed_tick(&ctx, now).await?;
    let mut planned = next_tick(&ctx, now);
    tracing::info!(
        instance = %ctx.instance,
        "backfill-reporter {} started: schedule {:?} in {}, next tick {}",
        env!("CARGO_PKG_VERSION"),
        ctx.settings.schedule.cron.to_string(),
        ctx.settings.schedule.timezone,
        local(&ctx, planned)
    );
    // Recovery (and the catch-up, if a tick was missed while stopped) runs as the first task, so
    // that signals and readiness are served meanwhile.
    let mut running = Some(Task {
        what: catch_up.map_or_else(|| "start-up recovery".to_owned(), |t| t.to_string()),
        handle: spawn_cycle(ctx.clone(), catch_up, shutdown.clone(), failures.clone()),
    });
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    crate::metrics::health().set_armed(true);
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    loop {
        let wait = CLOCK_CHECK.min((planned - clock()).to_std().unwrap_or_default());
        tokio::select! {
            // Shutdown first: when it and a tick are ready together, no new work starts.
            biased;
            () = shutdown.cancelled() => break,
            _ = async { let _ = (&mut running.as_mut().expect("guarded").handle).await; }, if running.is_some() => {
                running = None;
            }
            Some(()) = reload.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match reload_context(&ctx, &path).await {
                    Ok(new_ctx) => {
                        let (old, new) = (&ctx.settings.schedule, &new_ctx.settings.schedule);
                        let schedule_changed = old.cron.to_string() != new.cron.to_string() || old.timezone != new.timezone;
                        ctx = new_ctx;
                        if schedule_changed {
                            planned = next_tick(&ctx, clock());
                        }
                        tracing::info!(
                            "config reloaded: schedule {:?} in {}, next tick {}",
                            ctx.settings.schedule.cron.to_string(),
                            ctx.settings.schedule.timezone,
                            local(&ctx, planned)
                        );
                    }
                    Err(e) => tracing::error!("config reload refused, keeping the old config: {e:#}"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let failed = failures.load(Ordering::Relaxed);
                if failed < MAX_FAILED_CYCLES {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                } else {
                    tracing::error!(failed, "cycles keep failing: not feeding the watchdog, so that systemd restarts the service");
                }
            }
            () = tokio::time::sleep(wait) => {
                let now = clock();
                let (schedule, tz) = (&ctx.settings.schedule.cron, ctx.settings.schedule.timezone);
                match on_wake(schedule, tz, planned, now) {
                    Wake::TooEarly => {
                        // The wall clock may have been stepped back: never wait past the real next tick.
                        planned = planned.min(next_tick(&ctx, now));
                    }
                    Wake::Fire { tick, missed } => {
                        if missed > 0 {
                            tracing::warn!(missed, "woke late (suspend, clock step or overload): one catch-up cycle for the latest tick {tick}, not one per missed tick");
                        }
                        match &running {
                            Some(task) if !task.handle.is_finished() => {
                                tracing::warn!("tick {tick} skipped: the cycle for {} is still running", task.what);
                            }
                            _ => {
                                running = Some(Task {
                                    what: tick.to_string(),
                                    handle: spawn_cycle(ctx.clone(), Some(tick), shutdown.clone(), failures.clone()),
                                });
                            }
                        }
                        planned = next_tick(&ctx, now.max(tick));
                        tracing::debug!(next = %local(&ctx, planned), "next tick armed");
                    }
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    crate::metrics::health().set_armed(false);
    if let Some(mut task) = running {
        let limit = ctx.settings.provider.request_timeout + DRAIN_GRACE;
        tracing::info!(
            "waiting up to {limit:?} for the cycle for {} to record its in-flight requests",
            task.what
        );
        if tokio::time::timeout(limit, &mut task.handle).await.is_err() {
            // Its pairs stay pending in the database: the next start sends them.
            tracing::warn!("the cycle for {} did not finish in time; its unsent pairs stay pending for the next start", task.what);
            task.handle.abort();
        }
    }
    crate::alarm::wait_for_notifications(DRAIN_GRACE).await;
    tracing::info!("stopped");
    Ok(())
}

fn local(ctx: &Context, t: DateTime<Utc>) -> String {
    t.with_timezone(&ctx.settings.schedule.timezone)
        .to_rfc3339()
}

/// The first tick after `after`. `Schedule::parse` refused patterns that never match, so the
/// fallback (a year away, logged) is only there so that the loop cannot end on it.
fn next_tick(ctx: &Context, after: DateTime<Utc>) -> DateTime<Utc> {
    let schedule = &ctx.settings.schedule;
    schedule.cron.next_after(after, schedule.timezone).unwrap_or_else(|| {
        tracing::error!(cron = %schedule.cron, "the schedule has no next tick; checking again in a year");
        after + chrono::Duration::days(365)
    })
}

/// After downtime, the latest tick that has passed if it was never run: it is run once at
/// start, not once per missed tick. `None` on a first start (nothing was missed).
async fn missed_tick(ctx: &Context, now: DateTime<Utc>) -> anyhow::Result<Option<DateTime<Utc>>> {
    let (schedule, tz) = (&ctx.settings.schedule.cron, ctx.settings.schedule.timezone);
    let last_run = outcomes::last_scheduled_tick(&ctx.pool).await?;
    Ok(match (last_run, schedule.latest_at_or_before(now, tz)) {
        (Some(last), Some(due)) if due > last => {
            tracing::info!(last_run = %last, "the tick {due} was missed while stopped: running it now");
            Some(due)
        }
        _ => None,
    })
}

/// Reads and validates the config again. The database connection and its pool size stay as
/// they are until a restart; everything else (schedule, window, apps, query, concurrency,
/// provider settings) takes effect at the next cycle.
async fn reload_context(ctx: &Context, path: &std::path::Path) -> anyhow::Result<Context> {
    use secrecy::ExposeSecret;
    let mut new = config::load(path)?;
    for warning in &new.warnings {
        tracing::warn!("{warning}");
    }
    let old_db = &ctx.settings.database;
    let url = |d: &config::DatabaseSettings| d.url.as_ref().map(|u| u.expose_secret().to_owned());
    if url(old_db) != url(&new.database) || old_db.max_connections != new.database.max_connections {
        tracing::warn!("database.url and database.max_connections take effect at the next restart");
    }
    source::check_columns(&ctx.pool, &new.source).await?;
    new.database = old_db.clone();
    build_context(new, Some(ctx.pool.clone())).await
}

/// Recovers what earlier cycles left pending, then runs the cycle for `tick` if there is one,
/// under the cycle lock.
fn spawn_cycle(
    ctx: Context,
    tick: Option<DateTime<Utc>>,
    shutdown: CancellationToken,
    failures: Arc<AtomicU32>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let what = tick.map_or_else(
            || "start-up recovery".to_owned(),
            |t| format!("the cycle for {t}"),
        );
        let token = shutdown.clone();
        let result = locked(&ctx, LOCK_WAIT, &token, |ctx| async move {
            cycle::recover(&ctx, &shutdown).await?;
            match tick {
                Some(tick) => crate::metrics::timed_cycle(
                    Trigger::Schedule,
                    cycle::run(&ctx, tick, Trigger::Schedule, &shutdown),
                )
                .await
                .map(|_| ()),
                None => Ok(()),
            }
        })
        .await;
        crate::metrics::record_daemon_task(&result);
        match result {
            Ok(Some(())) => {
                failures.store(0, Ordering::Relaxed);
            }
            Ok(None) => {
                tracing::info!("{what} skipped here: another instance is running a cycle");
            }
            Err(e) => {
                let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(failed_in_a_row = failed, "{what} failed: {e:#}");
            }
        }
    })
}

/// Runs `work` while holding the cycle advisory lock, waiting up to `wait` for it. The lock is
/// held on a dedicated connection, so that a crashed holder's lock goes with its session.
/// `Ok(None)` when another holder kept it for the whole wait, or shutdown came first.
pub async fn locked<F, Fut, T>(
    ctx: &Context,
    wait: Duration,
    shutdown: &CancellationToken,
    work: F,
) -> anyhow::Result<Option<T>>
where
    F: FnOnce(Context) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let options = ctx.pool.connect_options();
    let mut conn = PgConnection::connect_with(&options)
        .await
        .context("opening the lock connection")?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(CYCLE_LOCK)
            .fetch_one(&mut conn)
            .await
            .context("taking the cycle lock")?;
        if got {
            break;
        }
        if tokio::time::Instant::now() >= deadline || shutdown.is_cancelled() {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let result = work(ctx.clone()).await;
    // Closing the session releases the lock, also when this close cannot be sent.
    let _ = conn.close().await;
    result.map(Some)
}
