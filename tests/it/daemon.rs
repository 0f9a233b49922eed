//! The long-running service, as a real process: schedule, signals, crash recovery, two
//! instances on one database, reload.

use std::process::Stdio;
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_reporter::daemon::{serve, Clock};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::fake_provider::Scripted;
use crate::helpers::{eventually, TestApp, TestConfig};

/// A daemon process with its stderr collected line by line.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(app: &TestApp) -> Self {
        let mut child = app
            .command(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the daemon starts");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = tokio::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    async fn wait_log(&self, needle: &str, limit: Duration) {
        eventually(limit, &format!("log line {needle:?}"), || async {
            self.log().contains(needle)
        })
        .await;
    }

    /// SIGTERM, then the exit code (within 20 s).
    async fn stop(mut self) -> (i32, String) {
        self.signal("TERM").await;
        let status = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the daemon exits within 20 s of SIGTERM")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await; // let the log reader drain
        (status.code().unwrap_or(-1), self.log())
    }
}

fn every_two_seconds() -> TestConfig {
    TestConfig {
        cron: "*/2 * * * * *".into(),
        ..TestConfig::default()
    }
}

async fn finished_runs(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM report_runs WHERE trigger = 'schedule' AND finished_at IS NOT NULL",
    )
    .await
}

async fn seed_recent(app: &TestApp, apps: &[&str]) {
    let recent = chrono::Utc::now() - chrono::Duration::minutes(30);
    for a in apps {
        app.seed(a, 460, recent, 10, 4).await;
    }
}

#[sqlx::test]
async fn a_six_field_schedule_runs_a_cycle_every_two_seconds_and_sigterm_exits_0(pool: PgPool) {
    let app = TestApp::with(pool, every_two_seconds()).await;
    seed_recent(&app, &["tickApp1"]).await;

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(15), "two scheduled cycles", || async {
        finished_runs(&app).await >= 2
    })
    .await;
    let (code, log) = daemon.stop().await;

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
    let mut times: Vec<&str> = bodies
        .iter()
        .map(|b| b["callbackTime"].as_str().unwrap())
        .collect();
    times.dedup();
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
    let config = TestConfig {
        request_timeout: "20s".into(),
        ..every_two_seconds()
    };
    let app = TestApp::with(pool, config).await;
    seed_recent(&app, &["slowApp1"]).await;
    app.provider
        .script("slowApp1", vec![Scripted::Delay(Duration::from_secs(4))]);

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(10), "a request in flight", || async {
        app.provider.received().iter().any(|r| r.answered_http == 0)
    })
    .await;
    let (code, log) = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let received = app.provider.received();
    assert_eq!(received.len(), 1, "no new work after SIGTERM");
    assert_eq!(received[0].answered_http, 200);
    let rows = app.submissions().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2, "succeeded", "{log}");
    assert_eq!(finished_runs(&app).await, 1);
}

#[sqlx::test]
async fn a_kill_9_in_the_middle_of_a_cycle_loses_nothing_after_a_restart(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            max_in_flight: 1,
            request_timeout: "60s".into(),
            ..every_two_seconds()
        },
    )
    .await;
    seed_recent(&app, &["killApp1", "killApp2", "killApp3"]).await;
    // Whichever pair goes first hangs long enough to be killed in the middle.
    app.provider
        .script_all(vec![Scripted::Delay(Duration::from_secs(30))]);

    let mut daemon = Daemon::start(&app);
    eventually(
        Duration::from_secs(10),
        "the first request in flight",
        || async { !app.provider.received().is_empty() },
    )
    .await;
    daemon.child.kill().await.unwrap(); // SIGKILL
    let tick: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT min(scheduled_for) FROM report_runs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM report_submissions WHERE state = 'pending'")
            .await,
        3,
        "all three pairs were recorded as pending before the first request"
    );

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(15), "the killed tick completed", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM report_submissions WHERE scheduled_for = $1 AND state = 'succeeded'",
        )
        .bind(tick)
        .fetch_one(&app.pool)
        .await
        .unwrap()
            == 3
    })
    .await;
    let (code, log) = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert!(log.contains("recovering submissions left pending"), "{log}");
    assert_eq!(app.count("SELECT count(*) FROM report_runs WHERE scheduled_for = (SELECT min(scheduled_for) FROM report_runs) AND finished_at IS NOT NULL").await, 1);
}

#[sqlx::test]
async fn two_instances_on_one_database_submit_each_tick_once(pool: PgPool) {
    let app = TestApp::with(pool, every_two_seconds()).await;
    seed_recent(&app, &["haApp001", "haApp002"]).await;

    let a = Daemon::start(&app);
    let b = Daemon::start(&app);
    eventually(
        Duration::from_secs(20),
        "three scheduled cycles",
        || async { finished_runs(&app).await >= 3 },
    )
    .await;
    let (code_a, log_a) = a.stop().await;
    let (code_b, log_b) = b.stop().await;

    assert_eq!((code_a, code_b), (0, 0));
    let mut seen = std::collections::HashMap::new();
    for body in app.provider.backfill_bodies() {
        let key = (body["appId"].to_string(), body["callbackTime"].to_string());
        *seen.entry(key).or_insert(0) += 1;
    }
    assert!(seen.len() >= 6);
    assert!(
        seen.values().all(|n| *n == 1),
        "a tick was submitted twice: {seen:?}"
    );
    let skipped = |log: &str| log.contains("another instance");
    assert!(
        skipped(&log_a) || skipped(&log_b),
        "one instance logs that it skipped\nA:\n{log_a}\nB:\n{log_b}"
    );
}

#[sqlx::test]
async fn sighup_with_a_broken_config_keeps_the_old_schedule_running(pool: PgPool) {
    let app = TestApp::with(pool, every_two_seconds()).await;
    seed_recent(&app, &["hupApp01"]).await;
    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(10), "a first cycle", || async {
        finished_runs(&app).await >= 1
    })
    .await;

    // Everything valid but the schedule.
    app.write_config(&TestConfig {
        cron: "every tuesday".into(),
        ..every_two_seconds()
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

    // A valid config that changes the schedule is taken: once a year, so no more cycles.
    app.write_config(&TestConfig {
        cron: "0 0 1 1 *".into(),
        ..every_two_seconds()
    });
    daemon.signal("HUP").await;
    daemon
        .wait_log("config reloaded", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a cycle started before the reload ends
    let after_reload = finished_runs(&app).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        finished_runs(&app).await,
        after_reload,
        "the new schedule is in force"
    );
    let (code, log) = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
}

#[sqlx::test]
async fn a_tick_that_comes_while_a_cycle_runs_is_skipped_and_logged(pool: PgPool) {
    let app = TestApp::with(pool, every_two_seconds()).await;
    seed_recent(&app, &["busyApp1"]).await;
    app.provider
        .script("busyApp1", vec![Scripted::Delay(Duration::from_secs(5))]);

    let daemon = Daemon::start(&app);
    daemon
        .wait_log("skipped: the cycle for", Duration::from_secs(15))
        .await;
    eventually(
        Duration::from_secs(10),
        "the slow cycle finished",
        || async { finished_runs(&app).await >= 1 },
    )
    .await;
    let (code, log) = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    // Runs never overlap: each starts after the previous one finished.
    let runs: Vec<(
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = sqlx::query_as("SELECT started_at, finished_at FROM report_runs ORDER BY started_at")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1.expect("finished"),
            "overlapping runs: {runs:?}"
        );
    }
}

#[sqlx::test]
async fn after_downtime_one_catch_up_cycle_runs_for_the_latest_missed_tick(pool: PgPool) {
    // Daily at midnight UTC: the latest tick cannot move while the test runs (but at midnight).
    let config = TestConfig {
        cron: "0 0 * * *".into(),
        timezone: "UTC".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    let now = chrono::Utc::now();
    let latest =
        chrono::DateTime::from_timestamp(now.timestamp() - now.timestamp() % 86_400, 0).unwrap();
    app.seed("downtime", 460, latest - chrono::Duration::hours(1), 10, 4)
        .await;
    // The last tick run was three days before: two ticks were missed since.
    sqlx::query(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, finished_at) \
         VALUES ($1, 'schedule', $1 - interval '1 day', $1, 'old:1', $1)",
    )
    .bind(latest - chrono::Duration::days(3))
    .execute(&app.pool)
    .await
    .unwrap();

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(10), "the catch-up cycle", || async {
        finished_runs(&app).await >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a burst, were there one
    let (code, log) = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let ticks: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT scheduled_for FROM report_runs ORDER BY scheduled_for")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        ticks.len(),
        2,
        "one catch-up, not one per missed tick: {ticks:?}"
    );
    assert_eq!(ticks[1], latest);
    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(
        bodies[0]["callbackTime"],
        latest.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    );
}

#[sqlx::test]
async fn after_a_wall_clock_jump_the_next_tick_fires_on_time_and_a_long_jump_runs_one_catch_up(
    pool: PgPool,
) {
    // On the hour, in UTC; the daemon's clock is the real one plus an offset the test steps, as
    // a suspend or an NTP step would. Tokio's monotonic timers alone would not see such a step.
    let config = TestConfig {
        cron: "0 0 * * * *".into(),
        timezone: "UTC".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    let offset = Arc::new(AtomicI64::new(0));
    let o = offset.clone();
    let clock: Clock =
        Arc::new(move || chrono::Utc::now() + chrono::Duration::milliseconds(o.load(SeqCst)));
    let now = chrono::Utc::now();
    let hour = chrono::DateTime::from_timestamp(now.timestamp() - now.timestamp() % 3600 + 3600, 0)
        .unwrap();
    app.seed("jumpApp1", 460, hour - chrono::Duration::minutes(30), 10, 4)
        .await;
    let shutdown = CancellationToken::new();
    let (_reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let daemon = tokio::spawn(serve(
        app.config_path.clone(),
        app.settings(),
        shutdown.clone(),
        reload_rx,
        clock,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let step = |to: chrono::DateTime<chrono::Utc>| {
        offset.store((to - chrono::Utc::now()).num_milliseconds(), SeqCst)
    };
    let runs = || async {
        sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
            "SELECT scheduled_for FROM report_runs WHERE finished_at IS NOT NULL ORDER BY 1",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };

    // Step to 2 s before the hour: the tick fires at the hour, not after the old sleep.
    step(hour - chrono::Duration::seconds(2));
    eventually(Duration::from_secs(8), "the tick at the hour", || async {
        runs().await == vec![hour]
    })
    .await;

    // Jump five hours ahead: one catch-up cycle, for the latest tick.
    let later = hour + chrono::Duration::hours(5);
    step(later + chrono::Duration::seconds(30));
    eventually(Duration::from_secs(8), "one catch-up cycle", || async {
        runs().await == vec![hour, later]
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(runs().await, vec![hour, later], "no burst of missed ticks");
    assert_eq!(app.provider.backfill_bodies().len(), 2);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[sqlx::test]
async fn run_once_waits_for_a_cycle_that_holds_the_lock(pool: PgPool) {
    let app = TestApp::new(pool).await;
    seed_recent(&app, &["lockApp1"]).await;
    let mut holder = PgConnection::connect(&app.db_url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(x'62667270'::bigint)")
        .execute(&mut holder)
        .await
        .unwrap();

    let once = tokio::spawn(app.command(&["run", "--once"]).output());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        app.provider.received().is_empty(),
        "nothing is sent while another cycle holds the lock"
    );
    holder.close().await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), once)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.provider.backfill_bodies().len(), 1);
}
