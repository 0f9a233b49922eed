//! Failure drills on the queue, with the real binary where a process must die: a kill -9 in
//! the middle of a cycle, every database session cut, a flaky provider, the database stopped
//! across six ticks, the provider unreachable until the breaker's probes have failed, two
//! instances sharing the work, an upgrade from the previous release with rows still pending,
//! and retention. Each outage lasts until what it drills has happened (ticks replaced, probes
//! failed), polled against a deadline, never for a fixed time.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::chaos::{PgServer, Proxy};
use crate::helpers::{eventually, Daemon, Output, Stopped, TestApp, TestConfig};

/// A yearly schedule whose latest tick (about half a year ago, 00:00 UTC) was missed: the
/// daemon runs it as its catch-up at start, and its deadline (the next tick, about half a year
/// away whatever today's date) is far away. The source holds `pairs` pairs in the hour before
/// that tick.
pub(crate) async fn catch_up_app(
    pool: PgPool,
    config: TestConfig,
    pairs: i32,
) -> (TestApp, DateTime<Utc>) {
    let (cron, tick) = TestConfig::yearly_ticked_half_a_year_ago();
    let config = TestConfig {
        cron,
        timezone: "UTC".into(),
        ..config
    };
    let app = TestApp::with(pool, config).await;
    prepare_catch_up(&app, tick, pairs).await;
    (app, tick)
}

async fn prepare_catch_up(app: &TestApp, tick: DateTime<Utc>, pairs: i32) {
    let a_year_before = tick.checked_sub_months(chrono::Months::new(12)).unwrap();
    app.scheduled_run(a_year_before, "old:1", Some(a_year_before))
        .await;
    seed_pairs(app, tick - chrono::Duration::minutes(30), pairs).await;
}

/// `n` pairs (40 apps × MCCs from 200), 100 codes sent and 37 typed back, in one bucket.
async fn seed_pairs(app: &TestApp, bucket: DateTime<Utc>, n: i32) {
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'drillApp' || (p % 40), 200 + p / 40, $1, 100, 37 FROM generate_series(0, $2 - 1) p",
    )
    .bind(bucket)
    .bind(n)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// A daemon on `app`, returned once the provider has accepted `answered` submissions: in the
/// middle of the catch-up cycle.
async fn start_mid_cycle(app: &TestApp, answered: usize) -> Daemon {
    let daemon = Daemon::start(app);
    eventually(
        Duration::from_secs(30),
        &format!("{answered} requests answered"),
        || async { app.provider.backfill_bodies().len() >= answered },
    )
    .await;
    daemon
}

/// Successful submissions the provider received per pair.
fn deliveries(app: &TestApp) -> HashMap<(String, String), usize> {
    let mut seen = HashMap::new();
    for body in app.provider.backfill_bodies() {
        let key = (body["appId"].to_string(), body["mcc"].to_string());
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

/// The provider accepted each of `pairs` pairs exactly once.
pub(crate) fn assert_each_sent_once(app: &TestApp, pairs: usize) {
    let seen = deliveries(app);
    assert_eq!(seen.len(), pairs, "every pair delivered");
    assert!(seen.values().all(|n| *n == 1), "a pair was sent twice");
}

fn log_lines(log: &str, level: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(level))
        .map(str::to_owned)
        .collect()
}

#[sqlx::test]
async fn kill_9_in_the_middle_of_a_cycle_delivers_everything_with_at_most_max_in_flight_duplicates(
    pool: PgPool,
) {
    let config = TestConfig {
        max_in_flight: 8,
        request_timeout: "2s".into(),
        ..TestConfig::default()
    };
    let (app, tick) = catch_up_app(pool, config, 1000).await;
    app.provider.set_latency(Duration::from_millis(40));

    let daemon = start_mid_cycle(&app, 400).await;
    daemon.kill().await;
    let pending_after_kill = app.submissions_in("pending").await;
    assert!(pending_after_kill > 0, "killed in the middle");

    let daemon = Daemon::start(&app);
    eventually(
        Duration::from_secs(60),
        "all 1000 pairs succeeded",
        || async { app.submissions_in("succeeded").await == 1000 },
    )
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let seen = deliveries(&app);
    assert_eq!(seen.len(), 1000, "every pair delivered");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("kill -9 drill: {pending_after_kill} pending at the kill, {duplicates} duplicates");
    assert!(
        duplicates <= 8,
        "{duplicates} duplicates, more than max_in_flight (8)"
    );
    let runs: i64 = app
        .count("SELECT count(*) FROM report_runs WHERE scheduled_for = (SELECT max(scheduled_for) FROM report_runs) AND finished_at IS NOT NULL AND succeeded = 1000")
        .await;
    assert_eq!(runs, 1, "the tick {tick} is closed with every pair");
}

#[sqlx::test]
async fn every_database_session_cut_mid_cycle_leaves_the_daemon_running_and_nothing_pending(
    pool: PgPool,
) {
    let config = TestConfig {
        max_in_flight: 4,
        request_timeout: "2s".into(),
        ..TestConfig::default()
    };
    let (app, _) = catch_up_app(pool, config, 200).await;
    app.provider.set_latency(Duration::from_millis(30));

    let mut daemon = start_mid_cycle(&app, 50).await;
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'backfill-reporter'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(cut > 0, "the daemon's sessions were cut");

    eventually(Duration::from_secs(60), "nothing pending", || async {
        app.submissions_in("pending").await == 0
    })
    .await;
    assert!(daemon.is_running(), "the daemon lives on");
    let Stopped { code, log } = daemon.stop().await;
    eprintln!("cut-sessions drill: {cut} sessions terminated, nothing pending afterwards");

    assert_eq!(code, 0, "{log}");
    assert_eq!(app.submissions_in("succeeded").await, 200, "{log}");
    assert_eq!(deliveries(&app).len(), 200);
    assert_eq!(app.open_runs().await, 0, "the run is closed");
}

#[sqlx::test]
async fn thirty_percent_transient_failures_still_end_with_every_pair_succeeded(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            cron: TestConfig::yearly_ticked_half_a_year_ago().0,
            max_in_flight: 8,
            retry_backoff: "20ms".into(),
            ..TestConfig::default()
        },
    )
    .await;
    seed_pairs(&app, Utc::now() - chrono::Duration::minutes(30), 200).await;
    app.provider.fail_randomly(0.3);

    let Output { code, out, err } = app.run(&["run", "--once"]).await;

    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("200 pairs, 200 succeeded, 0 failed"), "{out}");
    assert_eq!(deliveries(&app).len(), 200);
    let retried = app
        .count("SELECT count(*) FROM report_submissions WHERE attempts > 1")
        .await;
    assert!(
        retried > 20,
        "the failures were real: {retried} pairs retried"
    );
    eprintln!("transient drill: 200 of 200 succeeded, {retried} of them after a retry");
}

/// Provider attempts that failed so far: every attempt of a row still pending or failed, all
/// but the last of a row that succeeded.
async fn failed_attempts(app: &TestApp) -> i64 {
    app.count(
        "SELECT COALESCE(sum(attempts), 0) - count(*) FILTER (WHERE state = 'succeeded') \
         FROM report_submissions",
    )
    .await
}

#[sqlx::test]
async fn the_provider_unreachable_across_failed_probes_is_waited_out_with_a_handful_of_log_lines(
    pool: PgPool,
) {
    let placeholder = TestApp::new(pool).await;
    let proxy = Proxy::start(placeholder.provider.addr).await;
    let config = TestConfig {
        cron: TestConfig::yearly_ticked_half_a_year_ago().0,
        max_in_flight: 8,
        request_timeout: "2s".into(),
        base_url: Some(format!("http://{}/otp", proxy.addr)),
        ..TestConfig::default()
    };
    placeholder.write_config(&config);
    let app = placeholder;
    seed_pairs(&app, Utc::now() - chrono::Duration::minutes(30), 300).await;
    app.provider.set_latency(Duration::from_millis(20));

    let run = Daemon::spawn_keeping_stdout(app.command(&["run", "--once"]));
    eventually(Duration::from_secs(20), "50 requests answered", || async {
        app.provider.backfill_bodies().len() >= 50
    })
    .await;
    proxy.down();
    let down_at = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the breaker opened", || async {
        run.log().contains("provider unreachable")
    })
    .await;
    // Down until the breaker's probes (1 s, then 2 s apart) have failed twice more than the
    // attempts cut with the link: the drill covers the probing, not only the cut.
    let at_open = failed_attempts(&app).await;
    eventually(Duration::from_secs(30), "two failed probes", || async {
        failed_attempts(&app).await >= at_open + 2
    })
    .await;
    let outage = down_at.elapsed();
    proxy.up().await;
    let (code, stdout, stderr) = run.finished(Duration::from_secs(90)).await;

    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("300 pairs, 300 succeeded"), "{stdout}");
    assert_eq!(deliveries(&app).len(), 300);
    let retries = app
        .count("SELECT sum(attempts) - count(*) FROM report_submissions")
        .await;
    assert!(
        retries < 40,
        "the provider was not hammered while down: {retries} retries"
    );
    let warnings = log_lines(&stderr, "WARN");
    assert!(
        warnings.len() <= 3 && warnings.iter().any(|l| l.contains("provider unreachable")),
        "one warning for the outage: {warnings:#?}"
    );
    assert!(stderr.contains("provider answers again"), "{stderr}");
    assert!(
        stderr.lines().count() <= 10,
        "a handful of lines:\n{stderr}"
    );
    eprintln!(
        "provider-down drill: down {:.1}s, 300 of 300 succeeded, {retries} retries, {} log lines",
        outage.as_secs_f64(),
        stderr.lines().count()
    );
}

#[sqlx::test]
async fn two_instances_share_the_work_and_send_every_pair_exactly_once(pool: PgPool) {
    let config = TestConfig {
        max_in_flight: 4,
        ..TestConfig::default()
    };
    let (app, _) = catch_up_app(pool, config, 400).await;
    app.provider.set_latency(Duration::from_millis(20));

    let a = Daemon::start(&app);
    let b = Daemon::start(&app);
    eventually(
        Duration::from_secs(60),
        "all 400 pairs succeeded",
        || async { app.submissions_in("succeeded").await == 400 },
    )
    .await;
    let (a, b) = (a.stop().await, b.stop().await);

    assert_eq!((a.code, b.code), (0, 0), "A:\n{}\nB:\n{}", a.log, b.log);
    assert_each_sent_once(&app, 400);
    let senders: Vec<(String, i64)> = sqlx::query_as(
        "SELECT attempted_by, count(*) FROM report_submissions GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(senders.len(), 2, "both instances sent: {senders:?}");
    assert!(senders.iter().all(|(_, n)| *n >= 40), "{senders:?}");
    eprintln!("two-instances drill: 400 pairs sent once each, by {senders:?}");
}

#[sqlx::test]
async fn a_database_stopped_across_six_ticks_is_waited_out_and_a_tick_of_it_reported_late(
    _pool: PgPool,
) {
    let server = PgServer::start();
    let admin = PgPool::connect(&server.url("postgres")).await.unwrap();
    sqlx::query("CREATE DATABASE drill")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = server.url("drill");
    let pool = PgPool::connect(&url).await.unwrap();
    backfill_reporter::db::migrate(&pool.clone().into())
        .await
        .unwrap();
    let app = TestApp::on(
        pool,
        url,
        TestConfig {
            cron: "*/20 * * * * *".into(),
            request_timeout: "2s".into(),
            ..TestConfig::default()
        },
    )
    .await;
    seed_pairs(&app, Utc::now() - chrono::Duration::minutes(30), 3).await;

    let mut daemon = Daemon::start(&app);
    daemon.wait_log("cycle for", Duration::from_secs(30)).await;
    app.pool.close().await;
    let logged_before = daemon.log().len();
    // "was never claimed": the line of a tick replaced, unclaimed, by the next (a failed
    // claim's line says "replaces it" too).
    let replaced = || {
        daemon.log()[logged_before..]
            .matches("was never claimed")
            .count()
    };
    let stopped_at = Utc::now();
    server.stop();
    // Down across six ticks (20 s apart, so that a claim can outlast the pool's 10 s acquire
    // timeout and fail), until the fifth is replaced by the sixth, then back 2 s after that
    // sixth tick: a claim retried since an earlier failure is then in flight, and lands
    // early in the interval, with time left to send before the next tick.
    eventually(
        Duration::from_secs(180),
        "five ticks of the outage replaced",
        || async { replaced() >= 5 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(daemon.is_running(), "the daemon waits the outage out");
    server.start_again();
    let restarted_at = Utc::now();
    let pool = PgPool::connect(&app.db_url).await.unwrap();
    // The last tick that fell in the outage is claimed late, and sent.
    let outage_tick = || async {
        sqlx::query_scalar::<_, DateTime<Utc>>(
            "SELECT r.scheduled_for FROM report_runs r \
             WHERE r.scheduled_for > $1 AND r.scheduled_for < $2 AND r.note LIKE 'claimed %' \
               AND r.succeeded = 3",
        )
        .bind(stopped_at)
        .bind(restarted_at)
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let late = loop {
        if let Some(late) = outage_tick().await {
            break late;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tick of the outage reported within 30 s of the restart:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert!(late > stopped_at, "{log}");
    assert!(
        log.contains("the tick") && log.contains("replaces it"),
        "{log}"
    );
    let missed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM report_runs WHERE note LIKE 'not run:%' AND pairs = 0",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        missed >= 3,
        "the replaced ticks are recorded: {missed}\n{log}"
    );
    eprintln!(
        "database-down drill: stopped {stopped_at}, back {restarted_at}; tick {late} reported late, {missed} replaced ticks recorded"
    );
    pool.close().await;
}

#[sqlx::test(migrations = false)]
async fn pending_rows_left_by_the_previous_release_are_completed_after_the_upgrade(pool: PgPool) {
    // The database as the previous release left it: its one migration, and a run cut short.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/20261128000001_initial.sql"
        ),
        dir.path().join("20261128000001_initial.sql"),
    )
    .unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let app = TestApp::with(pool, TestConfig::default()).await;
    let tick = Utc::now() - chrono::Duration::minutes(3);
    let run_id = app.scheduled_run(tick, "old-release:1", None).await;
    for (app_id, b, s, rate) in [("upApp001", 1, 8, "12.50"), ("upApp002", 2, 3, "66.67")] {
        sqlx::query(
            "INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
             window_end, backfill_number, cardinal_number, rate, callback_time, state) \
             VALUES ($1, $2, '460', $3, $3 - interval '1 day', $3, $4, $5, $6::numeric, \
                 '2026-01-01T00:00:00+08:00', 'pending')",
        )
        .bind(run_id)
        .bind(app_id)
        .bind(tick)
        .bind(b)
        .bind(s)
        .bind(rate)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    let daemon = Daemon::start(&app);
    eventually(Duration::from_secs(30), "the old rows sent", || async {
        app.submissions_in("succeeded").await == 2
    })
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert!(log.contains("applied migration 20261129000001"), "{log}");
    let mut rates: Vec<String> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| {
            format!(
                "{} {}",
                b["appId"].as_str().unwrap(),
                b["backfillNow"].as_str().unwrap()
            )
        })
        .collect();
    rates.sort();
    assert_eq!(rates, ["upApp001 12.5", "upApp002 66.67"]);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM report_runs WHERE finished_at IS NOT NULL AND succeeded = 2"
        )
        .await,
        1,
        "the old run is closed"
    );
}

#[sqlx::test]
async fn retention_deletes_old_rows_in_batches_and_keeps_pending_and_recent_ones(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let now = Utc::now();
    for (age_days, state, n) in [
        (100, "succeeded", 12_000),
        (100, "pending", 2),
        (10, "succeeded", 5),
    ] {
        let at = now - chrono::Duration::days(age_days);
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, \
                 finished_at) VALUES ($1, 'once', $1, $1, 't', $1) RETURNING id",
        )
        .bind(at)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
                 window_end, callback_time, state) \
             SELECT $1, $3 || g, '460', $2, $2, $2, 'x', $3 FROM generate_series(1, $4) g",
        )
        .bind(run_id)
        .bind(at)
        .bind(state)
        .bind(n)
        .execute(&app.pool)
        .await
        .unwrap();
    }

    let cutoff = backfill_reporter::queue::retention::cutoff(now, Duration::from_secs(90 * 86_400));
    let pruned = backfill_reporter::queue::retention::prune(&app.pool.clone().into(), cutoff)
        .await
        .unwrap();

    assert_eq!(
        pruned.submissions,
        12_000,
        "in batches of {}",
        backfill_reporter::queue::retention::BATCH
    );
    assert_eq!(
        pruned.runs, 1,
        "the emptied old run; the one holding pending rows stays"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM report_submissions").await,
        7
    );
    assert_eq!(app.submissions_in("pending").await, 2);
}
