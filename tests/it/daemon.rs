//! The long-running service, as a real process: schedule, signals, a slow provider, reload;
//! and in this process, on a wall clock the test sets: downtime and clock jumps. The failure
//! drills are in `drills`.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use backfill_reporter::app::daemon::{serve, Clock};
use chrono::{DateTime, SubsecRound, Timelike, Utc};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::fake_provider::Scripted;
use crate::helpers::{eventually, Daemon, Stopped, TestApp, TestConfig};

async fn finished_runs(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM report_runs WHERE trigger = 'schedule' AND finished_at IS NOT NULL",
    )
    .await
}

/// Every run's tick, in order.
async fn ticks(app: &TestApp) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar("SELECT scheduled_for FROM report_runs ORDER BY scheduled_for")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

/// Ticks every two seconds, one pair to send, and `Delay` as the provider's answer to the
/// first request: a request that hangs while the daemon goes on.
async fn app_with_a_slow_first_request(pool: PgPool, app_id: &str, delay: Duration) -> TestApp {
    let config = TestConfig {
        request_timeout: "20s".into(),
        ..TestConfig::every_two_seconds()
    };
    let app = TestApp::with(pool, config).await;
    app.seed_recent(app_id).await;
    app.provider.script(app_id, vec![Scripted::Delay(delay)]);
    app
}

/// The daemon in this process, on a wall clock the test sets and steps as a suspend or an NTP
/// step would: the real clock plus an offset. Tokio's monotonic timers alone would not see such
/// a step.
struct SteppedDaemon {
    offset_ms: Arc<AtomicI64>,
    clock_reads: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    _reload: mpsc::UnboundedSender<()>,
}

impl SteppedDaemon {
    /// Serves `app` with a wall clock that reads `at` now.
    fn start(app: &TestApp, at: DateTime<Utc>) -> Self {
        let offset_ms = Arc::new(AtomicI64::new((at - Utc::now()).num_milliseconds()));
        let clock_reads = Arc::new(AtomicUsize::new(0));
        let clock: Clock = {
            let (offset_ms, clock_reads) = (offset_ms.clone(), clock_reads.clone());
            Clock::manual(move || {
                clock_reads.fetch_add(1, SeqCst);
                Utc::now() + chrono::Duration::milliseconds(offset_ms.load(SeqCst))
            })
        };
        let stop = CancellationToken::new();
        let (reload, reload_rx) = mpsc::unbounded_channel();
        Self {
            offset_ms,
            clock_reads,
            stop: stop.clone(),
            task: tokio::spawn(serve(
                app.config_path.clone(),
                app.settings(),
                stop,
                reload_rx,
                clock,
            )),
            _reload: reload,
        }
    }

    /// Sets the wall clock so that it reads `to` now.
    fn step(&self, to: DateTime<Utc>) {
        self.offset_ms
            .store((to - Utc::now()).num_milliseconds(), SeqCst);
    }

    /// Waits until the daemon has read its clock: its first tick is armed from then on.
    async fn armed(&self) {
        eventually(
            Duration::from_secs(10),
            "the daemon reads its clock",
            || async { self.clock_reads.load(SeqCst) > 0 },
        )
        .await;
    }

    /// Stops it as SIGTERM would; it must return without an error.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the daemon stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

/// Today (UTC) at `h:m:s`: a wall clock whose time of day the test chooses.
fn today_at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
    Utc::now()
        .with_hour(h)
        .and_then(|t| t.with_minute(m))
        .and_then(|t| t.with_second(s))
        .unwrap()
        .trunc_subsecs(0)
}

/// What the daemon logged when it took a reloaded config: when, and the next tick it armed.
struct Reloaded {
    at: DateTime<Utc>,
    next_tick: DateTime<Utc>,
}

fn reloaded(log: &str) -> Reloaded {
    let line = log
        .lines()
        .find(|l| l.contains("config reloaded"))
        .unwrap_or_else(|| panic!("no reload line in:\n{log}"));
    let instant = |text: &str| {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("{e}: {text:?} in {line:?}"))
            .with_timezone(&Utc)
    };
    let next = line.split("next tick ").nth(1).expect("the next tick");
    Reloaded {
        at: instant(line.split_whitespace().next().unwrap()),
        next_tick: instant(next.split_whitespace().next().unwrap()),
    }
}

#[sqlx::test]
async fn a_six_field_schedule_runs_a_cycle_every_two_seconds_and_sigterm_exits_0(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::every_two_seconds()).await;
    app.seed_recent("tickApp1").await;

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(15), "two scheduled cycles", || async {
        finished_runs(&app).await >= 2
    })
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let ticks: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT scheduled_for FROM report_runs WHERE trigger = 'schedule' ORDER BY scheduled_for",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for pair in ticks.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds() % 2,
            0,
            "ticks on the 2 s grid: {ticks:?}"
        );
        assert!(pair[1] > pair[0]);
    }
    assert!(ticks.iter().all(|t| t.timestamp() % 2 == 0));
    let bodies = app.provider.backfill_bodies();
    assert!(bodies.len() >= 2);
    let times: std::collections::HashSet<&str> = bodies
        .iter()
        .map(|b| b["callbackTime"].as_str().unwrap())
        .collect();
    assert_eq!(times.len(), bodies.len(), "one submission per tick");
    assert!(times.iter().all(|t| t.ends_with("+08:00")), "{times:?}");
    assert!(
        log.contains("cycle for") && log.contains("1 succeeded"),
        "{log}"
    );
    assert!(log.contains("stopped"), "{log}");
}

#[sqlx::test]
async fn sigterm_waits_for_a_slow_submission_and_records_it(pool: PgPool) {
    let app = app_with_a_slow_first_request(pool, "slowApp1", Duration::from_secs(4)).await;

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(10), "a request in flight", || async {
        app.provider.received().iter().any(|r| r.answered_http == 0)
    })
    .await;
    let signalled = std::time::SystemTime::now();
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let received = app.provider.received();
    assert!(
        received.iter().all(|r| r.at <= signalled),
        "no new request after SIGTERM"
    );
    assert_eq!(received[0].answered_http, 200, "the slow one was answered");
    let slow: (String, i32) = sqlx::query_as(
        "SELECT state, attempts FROM report_submissions ORDER BY scheduled_for LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(slow, ("succeeded".into(), 1), "{log}");
    assert!(log.contains("waiting for requests in flight"), "{log}");
}

#[sqlx::test]
async fn sighup_with_a_broken_config_keeps_the_old_schedule_running(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::every_two_seconds()).await;
    app.seed_recent("hupApp01").await;
    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(10), "a first cycle", || async {
        finished_runs(&app).await >= 1
    })
    .await;

    // Everything valid but the schedule.
    app.write_config(&TestConfig {
        cron: "every tuesday".into(),
        ..TestConfig::every_two_seconds()
    });
    daemon.signal("HUP").await;
    daemon
        .wait_log("config reload refused", Duration::from_secs(5))
        .await;
    assert!(
        daemon.log().contains("schedule.cron \"every tuesday\""),
        "the refusal names the key:\n{}",
        daemon.log()
    );
    let before = finished_runs(&app).await;
    eventually(
        Duration::from_secs(10),
        "two more cycles on the old schedule",
        || async { finished_runs(&app).await >= before + 2 },
    )
    .await;

    // A valid config that changes the schedule is taken: daily, at an odd second a few seconds
    // from now, so that its tick is none of the old schedule's.
    let shanghai = chrono_tz::Asia::Shanghai;
    let mut at = (Utc::now() + chrono::Duration::seconds(8)).trunc_subsecs(0);
    if at.second() % 2 == 0 {
        at += chrono::Duration::seconds(1);
    }
    let local = at.with_timezone(&shanghai);
    app.write_config(&TestConfig {
        cron: format!(
            "{} {} {} * * *",
            local.second(),
            local.minute(),
            local.hour()
        ),
        ..TestConfig::every_two_seconds()
    });
    daemon.signal("HUP").await;
    daemon
        .wait_log("config reloaded", Duration::from_secs(5))
        .await;
    let reload = reloaded(&daemon.log());
    assert_eq!(
        reload.next_tick,
        at,
        "the new schedule's tick is armed:\n{}",
        daemon.log()
    );
    eventually(
        Duration::from_secs(15),
        "the new schedule's tick run",
        || async { ticks(&app).await.contains(&at) },
    )
    .await;
    // The old schedule would have fired at least twice since the reload: only the new tick ran.
    let since_reload: Vec<_> = ticks(&app)
        .await
        .into_iter()
        .filter(|t| *t > reload.at)
        .collect();
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert_eq!(since_reload, [at], "{log}");
}

#[sqlx::test]
async fn a_slow_provider_does_not_hold_back_the_next_tick(pool: PgPool) {
    let app = app_with_a_slow_first_request(pool, "busyApp1", Duration::from_secs(5)).await;

    let daemon = Daemon::start(&app);
    // While the first tick's request hangs, a later tick is planned and sent.
    eventually(
        Duration::from_secs(15),
        "a later tick sent meanwhile",
        || async {
            let received = app.provider.received();
            received.first().is_some_and(|r| r.answered_http == 0)
                && received
                    .iter()
                    .skip(1)
                    .any(|r| r.answered_status.as_deref() == Some("0"))
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the slow request recorded", || async {
        app.count("SELECT count(*) FROM report_submissions WHERE attempts = 1 AND state = 'succeeded' AND duration_ms >= 5000").await == 1
    })
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let mut seen = std::collections::HashSet::new();
    for body in app.provider.backfill_bodies() {
        assert!(
            seen.insert(body["callbackTime"].to_string()),
            "a tick was sent twice: {body}"
        );
    }
}

#[sqlx::test]
async fn after_downtime_one_catch_up_cycle_runs_for_the_latest_missed_tick(pool: PgPool) {
    // Daily in UTC at the time of an hour ago, on a clock that reads 12 hours after that time
    // two days ago: the latest tick is 12 hours past and the next 12 hours ahead. Every tick is
    // in the database's past, so it agrees that each is due; and the deadline, counted from the
    // database's now, is the real next tick, some 23 hours away (at midnight, as before, it
    // was seconds away for a test started just before a real midnight UTC).
    let daily = (Utc::now() - chrono::Duration::hours(1))
        .trunc_subsecs(0)
        .with_second(0)
        .unwrap();
    let config = TestConfig {
        cron: format!("{} {} * * *", daily.minute(), daily.hour()),
        timezone: "UTC".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    let latest = daily - chrono::Duration::days(2);
    let noon = latest + chrono::Duration::hours(12);
    let next = latest + chrono::Duration::days(1);
    app.seed("downtime", 460, latest - chrono::Duration::hours(1), 10, 4)
        .await;
    // The last tick run was three days before: two ticks were missed since.
    let old = latest - chrono::Duration::days(3);
    app.scheduled_run(old, "old:1", Some(old)).await;

    let daemon = SteppedDaemon::start(&app, noon);
    eventually(Duration::from_secs(10), "the catch-up cycle", || async {
        finished_runs(&app).await >= 2
    })
    .await;
    // A burst of the missed ticks would run before the next tick: step to it, and wait for it.
    daemon.step(next);
    eventually(Duration::from_secs(10), "the next tick", || async {
        ticks(&app).await.contains(&next)
    })
    .await;
    daemon.stop().await;

    assert_eq!(
        ticks(&app).await,
        [old, latest, next],
        "one catch-up, not one per missed tick"
    );
    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(
        bodies[0]["callbackTime"],
        latest.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    );
}

#[sqlx::test]
async fn after_a_wall_clock_jump_the_next_tick_fires_on_time_and_a_long_jump_runs_one_catch_up(
    pool: PgPool,
) {
    // Hourly at minute M (that of ten minutes ago), in UTC, on a clock that reads 10:M-30
    // two days ago at the start: every tick the test steps to is in the database's past, and
    // the deadline, counted from the database's now, is the real next tick some 50 minutes
    // away (on the whole hour it was seconds away for a test started just before one).
    let minute = (Utc::now() - chrono::Duration::minutes(10)).minute();
    let config = TestConfig {
        cron: format!("0 {minute} * * * *"),
        timezone: "UTC".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    let hour = today_at(11, minute, 0) - chrono::Duration::days(2);
    app.seed("jumpApp1", 460, hour - chrono::Duration::minutes(30), 10, 4)
        .await;
    let daemon = SteppedDaemon::start(&app, hour - chrono::Duration::minutes(30));
    daemon.armed().await;
    let runs = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT scheduled_for FROM report_runs WHERE finished_at IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };

    // Step to 2 s before the hour: the tick fires at the hour, not after the old sleep.
    daemon.step(hour - chrono::Duration::seconds(2));
    eventually(Duration::from_secs(8), "the tick at the hour", || async {
        runs().await == vec![hour]
    })
    .await;

    // Jump five hours ahead: one catch-up cycle, for the latest tick.
    let later = hour + chrono::Duration::hours(5);
    daemon.step(later + chrono::Duration::seconds(30));
    eventually(Duration::from_secs(8), "one catch-up cycle", || async {
        runs().await == vec![hour, later]
    })
    .await;
    // A burst of the missed ticks would run before the next tick: step to it, and wait for it.
    let next = later + chrono::Duration::hours(1);
    daemon.step(next);
    eventually(Duration::from_secs(8), "the next tick", || async {
        runs().await.contains(&next)
    })
    .await;
    daemon.stop().await;

    assert_eq!(
        runs().await,
        vec![hour, later, next],
        "no burst of missed ticks"
    );
    let sent: Vec<_> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| b["callbackTime"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<_> = [hour, later, next]
        .iter()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        .collect();
    assert_eq!(sent, expected);
}
