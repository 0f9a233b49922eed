//! The long-running service: recovery at start, then a timer loop that fires cycles at the
//! schedule's ticks, at most one at a time, with one catch-up cycle after a late wake-up.
//! Signals: SIGTERM/SIGINT drain and exit, SIGHUP reloads the config. Several instances may
//! share a database: a PostgreSQL advisory lock lets one cycle run at a time, and the tick
//! claim in `report_runs` keeps a tick to one instance.

use std::path::PathBuf;
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
use crate::cycle::{self, Context, CycleReport};
use crate::outcomes::{self, Trigger};
use crate::provider::ProviderClient;
use crate::schedule::{on_wake, Wake};
use crate::{db, source};

/// The longest the loop sleeps without looking at the wall clock. Tokio's timers run on the
/// monotonic clock, which stops during suspend and ignores NTP steps; waking once a second to
/// compare with the wall clock keeps ticks on time after either, for a negligible cost
/// (measured in `bench/idle.sh`).
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// The advisory lock key that serialises cycles across instances ("bfrp").
const CYCLE_LOCK: i64 = 0x6266_7270;

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
    serve(path, settings, shutdown, reload_rx).await
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

/// The daemon: `shutdown` stops it, each message on `reload` re-reads the config at `path`.
pub async fn serve(
    path: PathBuf,
    settings: Settings,
    shutdown: CancellationToken,
    mut reload: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let mut ctx = build_context(settings, None).await?;
    for m in db::migrate(&ctx.pool).await? {
        tracing::info!("applied migration {m}");
    }
    source::check_columns(&ctx.pool, &ctx.settings.source).await?;

    // Recovery first, so that a tick left half-sent by a crash is completed before anything new.
    match locked(&ctx, |ctx| async move {
        cycle::recover(&ctx, &shutdown_never()).await
    })
    .await
    {
        Ok(Some(n)) if n > 0 => tracing::info!(resent = n, "recovery done"),
        Ok(_) => {}
        Err(e) => tracing::error!("recovery failed, will retry before the next cycle: {e:#}"),
    }

    let now = Utc::now();
    let mut planned = first_tick(&ctx, now).await?;
    tracing::info!(
        instance = %ctx.instance,
        "backfill-reporter {} started: schedule {:?} in {}, next tick {}",
        env!("CARGO_PKG_VERSION"),
        ctx.settings.schedule.cron.to_string(),
        ctx.settings.schedule.timezone,
        planned.with_timezone(&ctx.settings.schedule.timezone).to_rfc3339()
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut running: Option<(DateTime<Utc>, JoinHandle<()>)> = None;

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            Some(()) = reload.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match config::load(&path) {
                    Ok(new) => match apply_reload(&ctx, new).await {
                        Ok(new_ctx) => {
                            ctx = new_ctx;
                            planned = ctx.settings.schedule.cron
                                .next_after(Utc::now(), ctx.settings.schedule.timezone)
                                .context("the schedule has no next tick")?;
                            tracing::info!(
                                "config reloaded: schedule {:?} in {}, next tick {}",
                                ctx.settings.schedule.cron.to_string(),
                                ctx.settings.schedule.timezone,
                                planned.with_timezone(&ctx.settings.schedule.timezone).to_rfc3339()
                            );
                        }
                        Err(e) => tracing::error!("config reload refused, keeping the old config: {e:#}"),
                    },
                    Err(e) => tracing::error!("config reload refused, keeping the old config: {e:#}"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            () = async { let _ = (&mut running.as_mut().expect("guarded").1).await; }, if running.is_some() => {
                running = None;
            }
            () = tokio::time::sleep(CLOCK_CHECK.min((planned - Utc::now()).to_std().unwrap_or_default())) => {
                let now = Utc::now();
                let tz = ctx.settings.schedule.timezone;
                let schedule = &ctx.settings.schedule.cron;
                match on_wake(schedule, tz, planned, now) {
                    Wake::TooEarly => {
                        // The wall clock may have been stepped back: never wait past the real next tick.
                        if let Some(next) = schedule.next_after(now, tz) {
                            planned = planned.min(next);
                        }
                    }
                    Wake::Fire { tick, missed } => {
                        if missed > 0 {
                            tracing::warn!(missed, "woke late (suspend, clock step or overload): running one catch-up cycle for the latest tick {tick}");
                        }
                        if let Some((busy, _)) = &running {
                            tracing::warn!("tick {tick} skipped: the cycle for {busy} is still running");
                        } else {
                            running = Some((tick, spawn_cycle(ctx.clone(), tick, shutdown.clone())));
                        }
                        planned = schedule.next_after(now.max(tick), tz).context("the schedule has no next tick")?;
                        log_next(&ctx, planned);
                    }
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some((tick, handle)) = running {
        tracing::info!("waiting for the cycle for {tick} to record its in-flight requests");
        let _ = handle.await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn shutdown_never() -> CancellationToken {
    CancellationToken::new()
}

fn log_next(ctx: &Context, planned: DateTime<Utc>) {
    tracing::debug!(next = %planned.with_timezone(&ctx.settings.schedule.timezone).to_rfc3339(), "next tick armed");
}

/// The first tick to wait for. After downtime, when the latest tick that has passed was never
/// run, it is due now: one catch-up cycle, not one per missed tick.
async fn first_tick(ctx: &Context, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    let (schedule, tz) = (&ctx.settings.schedule.cron, ctx.settings.schedule.timezone);
    let next = schedule
        .next_after(now, tz)
        .context("the schedule has no next tick")?;
    let last_run = outcomes::last_scheduled_tick(&ctx.pool).await?;
    let latest_due = schedule.latest_at_or_before(now, tz);
    Ok(match (last_run, latest_due) {
        (Some(last), Some(due)) if due > last => {
            tracing::info!(last_run = %last, "the tick {due} was missed while stopped: running it now");
            due
        }
        _ => next,
    })
}

/// Validates what a new config changes; the database and credentials need a restart.
async fn apply_reload(ctx: &Context, new: Settings) -> anyhow::Result<Context> {
    use secrecy::ExposeSecret;
    let old_url = ctx
        .settings
        .database
        .url
        .as_ref()
        .map(|u| u.expose_secret().to_owned());
    let new_url = new
        .database
        .url
        .as_ref()
        .map(|u| u.expose_secret().to_owned());
    if old_url != new_url {
        tracing::warn!("database.url changed: it takes effect at the next restart");
    }
    source::check_columns(&ctx.pool, &new.source).await?;
    let mut new = new;
    new.database = ctx.settings.database.clone();
    build_context(new, Some(ctx.pool.clone())).await
}

fn spawn_cycle(ctx: Context, tick: DateTime<Utc>, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = locked(&ctx, |ctx| async move {
            cycle::recover(&ctx, &shutdown).await?;
            cycle::run(&ctx, tick, Trigger::Schedule, &shutdown).await
        })
        .await;
        match result {
            Ok(Some(Some(CycleReport { .. }))) | Ok(Some(None)) => {}
            Ok(None) => {
                tracing::info!("tick {tick} skipped here: another instance is running a cycle")
            }
            Err(e) => tracing::error!("cycle for {tick} failed: {e:#}"),
        }
    })
}

/// Runs `work` while holding the cycle advisory lock on a dedicated connection, so that a
/// crashed holder's lock goes with its connection. `Ok(None)` when another instance holds it.
async fn locked<F, Fut, T>(ctx: &Context, work: F) -> anyhow::Result<Option<T>>
where
    F: FnOnce(Context) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let options = ctx.pool.connect_options();
    let mut conn = PgConnection::connect_with(&options)
        .await
        .context("opening the lock connection")?;
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(CYCLE_LOCK)
        .fetch_one(&mut conn)
        .await
        .context("taking the cycle lock")?;
    if !got {
        return Ok(None);
    }
    let result = work(ctx.clone()).await;
    // Closing the session releases the lock, also when this unlock cannot be sent.
    let _ = conn.close().await;
    result.map(Some)
}
