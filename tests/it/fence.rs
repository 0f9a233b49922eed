//! The lease as a fence, one clock for every decision, and source rows that cannot stop a
//! tick: the faults an attack on the queue found, each reproduced with the real binary.

use std::collections::HashMap;
use std::time::Duration;

use backfill_reporter::domain::run::Trigger;
use backfill_reporter::queue::runs;
use backfill_reporter::queue::tick::{self, Plan};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::chaos::{Fault, Proxy};
use crate::helpers::{command_with, eventually, skew_clock, Daemon, TestApp, TestConfig};

/// A yearly schedule whose ticks are about half a year away on either side at any date: the
/// daemons of these tests never plan a tick of their own; they work the rows the test queues,
/// whose deadline (the next tick) is far away.
fn yearly(config: TestConfig) -> TestConfig {
    TestConfig {
        cron: TestConfig::yearly_ticked_half_a_year_ago().0,
        timezone: "UTC".into(),
        ..config
    }
}

/// `n` pairs, 10 codes sent and 4 typed back, half an hour ago.
async fn seed(app: &TestApp, n: i32) {
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'fenceApp' || p, 460, now() - interval '30 minutes', 10, 4 \
         FROM generate_series(1, $1) p",
    )
    .bind(n)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// Queues a tick of the source now, as an instance on time would: its rows wait in the queue.
async fn queue_a_tick(app: &TestApp) -> i64 {
    let tick = runs::now_tick(&app.ctx().pool).await.unwrap();
    match tick::plan(&app.ctx(), tick, Trigger::Schedule, None)
        .await
        .unwrap()
    {
        Plan::Planned(p) => p.run_id,
        other => panic!("the tick was planned: {other:?}"),
    }
}

/// How often the provider accepted each (app, MCC, callbackTime).
fn accepted(app: &TestApp) -> HashMap<(String, String, String), usize> {
    let mut seen = HashMap::new();
    for b in app.provider.backfill_bodies() {
        let key = (
            b["appId"].to_string(),
            b["mcc"].to_string(),
            b["callbackTime"].to_string(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

fn duplicates(app: &TestApp) -> usize {
    accepted(app).values().map(|n| n - 1).sum()
}

/// A (`run --once`, one request at a time) reaches PostgreSQL through a proxy that fails in
/// `fault` for `secs`, longer than the lease (2 s + 10 s); meanwhile B works the queue and
/// takes A's rows once their leases expire. Returns the duplicates the provider received.
async fn cut_off_from_the_database(pool: PgPool, fault: Fault, secs: u64) -> usize {
    let config = yearly(TestConfig {
        max_in_flight: 1,
        request_timeout: "2s".into(),
        ..TestConfig::default()
    });
    let app = TestApp::with(pool, config.clone()).await;
    seed(&app, 30).await;
    app.provider.set_latency(Duration::from_millis(300));
    let db: std::net::SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let proxy = Proxy::start(db).await;
    let a_config = app.instance_config("a", &config, &app.db_url_via(proxy.addr));
    let mut a = Daemon::spawn(command_with(&a_config, &["run", "--once"]));
    eventually(Duration::from_secs(20), "A sent three pairs", || async {
        app.provider.backfill_bodies().len() >= 3
    })
    .await;

    proxy.set(fault).await;
    let b = Daemon::start(&app);
    eventually(Duration::from_secs(60), "B sent the rest", || async {
        app.submissions_in("succeeded").await == 30
    })
    .await;
    let healed = std::time::Instant::now() + Duration::from_secs(secs);
    tokio::time::sleep_until(healed.into()).await;
    proxy.set(Fault::Forward).await;
    let a_code = tokio::time::timeout(Duration::from_secs(90), a.child.wait())
        .await
        .expect("A ends once its run is closed")
        .unwrap();
    let b = b.stop().await;
    let a_log = a.kill().await;

    assert_eq!(accepted(&app).len(), 30, "every pair delivered");
    assert_eq!(b.code, 0, "{}", b.log);
    assert!(a_code.code().is_some(), "A exited: {a_log}");
    let dup = duplicates(&app);
    eprintln!("database partition drill ({fault:?}, {secs} s): {dup} duplicates (bound: max_in_flight = 1)");
    assert!(
        dup <= 1,
        "{dup} duplicates, more than max_in_flight (1)\nA:\n{a_log}"
    );
    dup
}

#[sqlx::test]
async fn a_lease_lost_while_cut_off_from_the_database_is_not_sent_again_when_it_heals(
    pool: PgPool,
) {
    cut_off_from_the_database(pool, Fault::Cut, 30).await;
}

#[sqlx::test]
async fn a_lease_lost_behind_a_half_open_database_connection_is_not_sent_again(pool: PgPool) {
    cut_off_from_the_database(pool, Fault::Blackhole, 25).await;
}

#[sqlx::test]
async fn a_process_paused_past_its_lease_sends_nothing_it_lost_when_it_resumes(pool: PgPool) {
    let config = yearly(TestConfig {
        max_in_flight: 2,
        request_timeout: "2s".into(),
        ..TestConfig::default()
    });
    let app = TestApp::with(pool, config).await;
    seed(&app, 40).await;
    app.provider.set_latency(Duration::from_millis(300));
    queue_a_tick(&app).await;
    let a = Daemon::start(&app);
    eventually(Duration::from_secs(20), "A sent four pairs", || async {
        app.provider.backfill_bodies().len() >= 4
    })
    .await;

    a.signal("STOP").await;
    let b = Daemon::start(&app);
    eventually(Duration::from_secs(60), "B sent the rest", || async {
        app.submissions_in("succeeded").await == 40
    })
    .await;
    a.signal("CONT").await;
    // Time for A to send what it held before the pause, had it kept believing it held it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (a, b) = (a.stop().await, b.stop().await);

    assert_eq!(accepted(&app).len(), 40, "every pair delivered");
    let dup = duplicates(&app);
    eprintln!("pause drill: {dup} duplicates (bound: max_in_flight = 2)");
    assert!(dup <= 2, "{dup} duplicates\nA:\n{}", a.log);
    assert_eq!((a.code, b.code), (0, 0), "A:\n{}\nB:\n{}", a.log, b.log);
}

/// Every run's claim (`started_at`) against its tick, by the database's clock, in seconds.
async fn claim_delays(app: &TestApp) -> Vec<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM started_at - scheduled_for)::float8 FROM report_runs \
         WHERE trigger = 'schedule' ORDER BY scheduled_for",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_host_whose_clock_runs_ahead_sends_rows_another_host_planned_until_their_deadline(
    pool: PgPool,
) {
    // A on time queues the rows, with a deadline 60 s away by the database's clock; B's clock
    // runs two minutes ahead.
    let config = yearly(TestConfig {
        retry_deadline: Some("60s".into()),
        ..TestConfig::default()
    });
    let app = TestApp::with(pool, config).await;
    seed(&app, 5).await;
    queue_a_tick(&app).await;

    let mut cmd = app.command(&["run"]);
    skew_clock(&mut cmd, "+2m");
    let b = Daemon::spawn(cmd);
    eventually(Duration::from_secs(20), "B finished the rows", || async {
        app.submissions_in("pending").await == 0
    })
    .await;
    let b = b.stop().await;

    assert_eq!(app.submissions_in("succeeded").await, 5, "{}", b.log);
    let future: i64 = app
        .count("SELECT count(*) FROM report_submissions WHERE finished_at > now()")
        .await;
    assert_eq!(future, 0, "finished_at is the database's time");
    assert!(
        b.log
            .contains("this host's clock is 120 s ahead of the database's")
            || b.log
                .contains("this host's clock is 119 s ahead of the database's"),
        "the skew is said once:\n{}",
        b.log
    );
}

#[sqlx::test]
async fn a_host_whose_clock_runs_ahead_never_claims_a_tick_before_it_is_due(pool: PgPool) {
    let config = TestConfig {
        cron: "*/3 * * * * *".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    app.seed_recent("skewApp1").await;
    let on_time = Daemon::start(&app);
    let mut cmd = app.command(&["run"]);
    skew_clock(&mut cmd, "+2m");
    let ahead = Daemon::spawn(cmd);
    eventually(Duration::from_secs(30), "four ticks claimed", || async {
        claim_delays(&app).await.len() >= 4
    })
    .await;
    let (on_time, ahead) = (on_time.stop().await, ahead.stop().await);

    let delays = claim_delays(&app).await;
    eprintln!("claim delays with one host 2 min ahead: {delays:?}");
    assert!(
        delays.iter().all(|d| (0.0..3.0).contains(d)),
        "every tick claimed when due by the database's clock: {delays:?}\nahead:\n{}",
        ahead.log
    );
    assert_eq!((on_time.code, ahead.code), (0, 0));
}

#[sqlx::test]
async fn a_host_whose_clock_runs_behind_claims_each_tick_on_time(pool: PgPool) {
    let config = TestConfig {
        cron: "*/3 * * * * *".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    app.seed_recent("skewApp2").await;
    let mut cmd = app.command(&["run"]);
    skew_clock(&mut cmd, "-2m");
    let behind = Daemon::spawn(cmd);
    eventually(Duration::from_secs(30), "three ticks claimed", || async {
        claim_delays(&app).await.len() >= 3
    })
    .await;
    let behind = behind.stop().await;

    let delays = claim_delays(&app).await;
    eprintln!("claim delays on a host 2 min behind: {delays:?}");
    assert!(
        delays.iter().all(|d| (0.0..3.0).contains(d)),
        "{delays:?}\n{}",
        behind.log
    );
    let sent: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT DISTINCT scheduled_for FROM report_submissions WHERE state = 'succeeded'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(sent.len() >= 3, "its ticks were sent: {sent:?}");
}

/// A source of the operator's whose rows hold anything.
const HOSTILE: &str = "SELECT app_id, mcc, backfill_number, cardinal_number FROM hostile \
                       WHERE $1::timestamptz < $2::timestamptz";

async fn fill_hostile(app: &TestApp) {
    let statements = [
        "CREATE TABLE hostile (app_id text, mcc text, backfill_number numeric, \
             cardinal_number numeric)",
        "INSERT INTO hostile SELECT 'goodApp' || p, '460', 4, 10 FROM generate_series(1, 10) p",
        // 10 KB and 1 MB of random CJK characters: incompressible, far over an index row.
        "INSERT INTO hostile SELECT (SELECT string_agg(chr(19968 + floor(random() * 20000)::int), '') \
             FROM generate_series(1, n)), '460', 4, 10 FROM (VALUES (3414), (349526)) AS v(n)",
        "INSERT INTO hostile VALUES (E'esc\\x1b[31mApp', '460', 4, 10), \
             (E'rtl\\u202eApp', '460', 4, 10), (NULL, '460', 4, 10), (NULL, '460', 5, 10), \
             ('bigCount', '460', 1e30, 2e30), ('longMcc1', repeat('4', 40), 4, 10), \
             ('hugeCount', '460', 4, repeat('9', 100000)::numeric)",
    ];
    for sql in statements {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
}

#[sqlx::test]
async fn a_source_row_of_any_size_or_shape_is_recorded_invalid_and_every_other_pair_is_sent(
    pool: PgPool,
) {
    let config = yearly(TestConfig {
        query: Some(HOSTILE.into()),
        ..TestConfig::default()
    });
    let app = TestApp::with(pool, config).await;
    fill_hostile(&app).await;

    let out = app.run(&["run", "--once"]).await;

    assert_eq!(
        out.code, 1,
        "an invalid row: exit 1\n{}\n{}",
        out.out, out.err
    );
    assert_eq!(app.provider.backfill_bodies().len(), 10, "{}", out.err);
    assert_eq!(app.submissions_in("succeeded").await, 10);
    assert_eq!(app.submissions_in("invalid").await, 9, "{}", out.err);
    let longest: (i32, i32, i32) = sqlx::query_as(
        "SELECT max(length(app_id)), max(length(mcc)), max(length(reason)) \
         FROM report_submissions WHERE state = 'invalid'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        longest.0 <= 80 && longest.1 <= 80,
        "bounded copies: {longest:?}"
    );
    assert!(longest.2 <= 400, "bounded reasons: {longest:?}");
    let reason: String = app
        .count_text("SELECT reason FROM report_submissions WHERE length(app_id) > 64 LIMIT 1")
        .await;
    assert!(reason.contains("characters, md5 "), "{reason}");
    let nulls = app
        .count("SELECT count(*) FROM report_submissions WHERE app_id IS NULL")
        .await;
    assert_eq!(nulls, 2, "both rows without an app_id are recorded");
    let invalid_lines: Vec<&str> = out
        .err
        .lines()
        .filter(|l| l.contains("invalid source row"))
        .collect();
    assert_eq!(
        invalid_lines.len(),
        1,
        "one line for the tick:\n{}",
        out.err
    );
    assert!(
        out.err
            .contains("claimed: 19 pairs, 10 to send, 0 skipped, 9 invalid"),
        "the claim says what is to be sent, not only what was queued:\n{}",
        out.err
    );
    assert!(
        out.err.lines().all(|l| l.len() < 2_000),
        "no line longer than 2,000 bytes:\n{}",
        out.err
    );
    assert!(!out.err.contains('\u{1b}'), "no raw escape in the log");
}

#[sqlx::test]
async fn a_row_the_database_refuses_is_recorded_invalid_with_the_refusal(pool: PgPool) {
    // A constraint nobody foresaw stands for any refusal of the insert.
    let app = TestApp::with(pool, yearly(TestConfig::default())).await;
    seed(&app, 3).await;
    app.seed_recent("refusedApp").await;
    sqlx::query(
        "ALTER TABLE report_submissions ADD CONSTRAINT not_this_one \
         CHECK (app_id <> 'refusedApp')",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let out = app.run(&["run", "--once"]).await;

    assert_eq!(out.code, 1, "{}\n{}", out.out, out.err);
    assert_eq!(app.submissions_in("succeeded").await, 3, "{}", out.err);
    let reason: String = app
        .count_text("SELECT reason FROM report_submissions WHERE state = 'invalid'")
        .await;
    assert!(
        reason.contains("the database refused to store it") && reason.contains("refusedApp"),
        "{reason}"
    );
}

#[sqlx::test]
async fn a_claim_that_fails_names_its_cause_in_one_bounded_line(pool: PgPool) {
    // A source query that fails when it runs, with a long value in its error.
    let query = format!(
        "SELECT app_id, mcc::text, backfilled AS backfill_number, sent AS cardinal_number \
         FROM otp_counts WHERE bucket_start >= $1 AND bucket_start < $2 \
           AND (CASE WHEN app_id = 'breakApp' THEN ('{}' || app_id)::int ELSE 1 END) = 1",
        "x".repeat(20_000)
    );
    let app = TestApp::with(
        pool,
        TestConfig {
            query: Some(query),
            ..TestConfig::every_two_seconds()
        },
    )
    .await;
    app.seed_recent("breakApp").await;
    let daemon = Daemon::start(&app);
    daemon
        .wait_log("cannot claim the tick", Duration::from_secs(15))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stopped = daemon.stop().await;

    let warn: Vec<&str> = stopped
        .log
        .lines()
        .filter(|l| l.contains("cannot claim the tick"))
        .collect();
    assert!(
        warn[0].contains("invalid input syntax for type integer"),
        "{}",
        warn[0]
    );
    assert!(
        stopped.log.lines().all(|l| l.len() < 2_000),
        "bounded lines:\n{}",
        stopped.log
    );
}

#[sqlx::test]
async fn an_ad_hoc_run_with_the_provider_down_ends_by_its_deadline_with_the_cause(pool: PgPool) {
    let placeholder = TestApp::new(pool).await;
    // A port nothing listens on: every request is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = yearly(TestConfig {
        base_url: Some(format!("http://127.0.0.1:{port}/otp")),
        ..TestConfig::default()
    });
    placeholder.write_config(&config);
    let app = placeholder;
    seed(&app, 3).await;

    let started = std::time::Instant::now();
    let out = app.run(&["run", "--once", "--deadline", "4s"]).await;
    let took = started.elapsed();

    assert_eq!(out.code, 1, "{}\n{}", out.out, out.err);
    assert!(
        took < Duration::from_secs(20),
        "ended by its deadline: {took:?}"
    );
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT regexp_replace(reason, '[0-9]+ attempts?', 'N attempts') \
         FROM report_submissions",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("deadline passed after N attempts: could not connect")),
        "{reasons:?}"
    );
}
