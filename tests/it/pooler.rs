//! Through a real PgBouncer (Debian's, stock but for its address, server, pool mode and login;
//! not even `extra_float_digits` ignored): `migrate` (alone and over `direct_url`), `check`,
//! `run --once` and two daemons sharing a tick deliver every pair once; the statement timeout
//! still cuts a slow source query; and without `pooler` set, the daemon says in one line which
//! key to set.

use std::time::{Duration, Instant};

use backfill_reporter::db;
use sqlx::PgPool;

use crate::drills::{assert_each_sent_once, catch_up_app};
use crate::helpers::{command_with, eventually, Daemon, Output, TestAccount, TestApp, TestConfig};
use crate::migrations::{existing_otp_counts, source_index};
use crate::pgbouncer::PgBouncer;

const TRANSACTION: &str = "pooler = \"transaction\"\n";

/// `config` with `lines` in its `[database]` section.
fn with_database(config: TestConfig, lines: &str) -> TestConfig {
    TestConfig {
        database_extra: lines.to_owned(),
        ..config
    }
}

/// From now on, `app`'s commands and daemons reach its database through `bouncer`; the test's
/// own pool still goes to the server. Returns the server's URL (a `direct_url`).
fn through(app: &mut TestApp, bouncer: &PgBouncer) -> String {
    let pooled = app.db_url_via(bouncer.addr);
    let direct = std::mem::replace(&mut app.db_url, pooled);
    app.write_config(&app.config.clone());
    direct
}

/// How many distinct transactions applied the migrations (each row's `installed_on` is its
/// transaction's `now()`).
async fn migration_transactions(app: &TestApp) -> i64 {
    app.count("SELECT count(DISTINCT installed_on) FROM _sqlx_migrations")
        .await
}

#[sqlx::test(migrations = false)]
async fn migrate_and_check_work_through_pgbouncer_alone(pool: PgPool) {
    let bouncer = PgBouncer::start("transaction").await;
    let mut app = TestApp::with(pool, with_database(TestConfig::default(), TRANSACTION)).await;
    through(&mut app, &bouncer);

    let first = app.run(&["migrate"]).await;
    let again = app.run(&["migrate"]).await;
    // Twice: a statement the first left prepared on a server connection would break the next.
    let checks = [app.run(&["check"]).await, app.run(&["check"]).await];

    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(
        first.out.matches("applied ").count(),
        db::MIGRATOR.iter().count(),
        "{first:?}"
    );
    // One transaction under the transaction-level lock: one now() for every migration.
    assert_eq!(migration_transactions(&app).await, 1);
    assert_eq!(again.code, 0, "{again:?}");
    assert!(again.out.contains("database is up to date"), "{again:?}");
    for check in checks {
        assert_eq!(check.code, 0, "{check:?}");
        assert!(
            check.out.contains("without database.direct_url"),
            "{check:?}"
        );
        assert!(
            check.out.contains(
                "source otp_counts: columns app_id, mcc, backfill_number, cardinal_number present"
            ),
            "{check:?}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn migrate_goes_around_the_pooler_over_direct_url(pool: PgPool) {
    let bouncer = PgBouncer::start("transaction").await;
    let mut app = TestApp::new(pool).await;
    let direct = through(&mut app, &bouncer);
    app.config.database_extra = format!("{TRANSACTION}direct_url = {direct:?}\n");
    app.write_config(&app.config.clone());

    let out = app.run(&["migrate"]).await;
    let check = app.run(&["check"]).await;

    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(check.code, 0, "{check:?}");
    let port = reqwest::Url::parse(&direct).unwrap().port().unwrap();
    assert!(
        check.out.contains(&format!(
            "database.direct_url backfill_test@127.0.0.1:{port}/"
        )),
        "{check:?}"
    );
    // Over a session of its own, sqlx's migrator gives each migration its own transaction.
    assert_eq!(
        migration_transactions(&app).await,
        db::MIGRATOR.iter().count() as i64
    );
}

#[sqlx::test(migrations = false)]
async fn two_instances_build_the_source_index_through_the_pooler_one_at_a_time(pool: PgPool) {
    existing_otp_counts(&pool).await;
    // Enough rows that the build takes a moment: the other instance meets it under way.
    sqlx::query(
        "INSERT INTO otp_counts SELECT 'bulk' || (i % 500), 460, \
         now() - i * interval '1 second', 10, 4 FROM generate_series(1, 300000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    let bouncer = PgBouncer::start("transaction").await;
    let mut app = TestApp::with(
        pool.clone(),
        with_database(TestConfig::default(), TRANSACTION),
    )
    .await;
    through(&mut app, &bouncer);

    let (a, b) = tokio::join!(app.run(&["migrate"]), app.run(&["migrate"]));

    assert_eq!((a.code, b.code), (0, 0), "A: {a:?}\nB: {b:?}");
    let builds = [&a, &b]
        .iter()
        .map(|o| o.err.matches("building it concurrently").count())
        .sum::<usize>();
    assert_eq!(builds, 1, "A: {a:?}\nB: {b:?}");
    let appliers = [&a, &b]
        .iter()
        .filter(|o| o.out.contains("applied "))
        .count();
    assert_eq!(appliers, 1, "A: {a:?}\nB: {b:?}");
    let index = source_index(&pool).await;
    assert!(index.valid, "{}", index.definition);
    assert!(index.definition.contains("INCLUDE"), "{}", index.definition);
}

/// 30 pairs (3 apps × 10 MCCs) half an hour ago.
async fn seed_thirty(app: &TestApp) {
    let bucket = chrono::Utc::now() - chrono::Duration::minutes(30);
    for app_id in ["poolApp1", "poolApp2", "poolApp3"] {
        for mcc in 460..470 {
            app.seed(app_id, mcc, bucket, 10, 4).await;
        }
    }
}

async fn run_once_sends_every_pair(pool: PgPool, pool_mode: &str) {
    let bouncer = PgBouncer::start(pool_mode).await;
    let lines = format!("pooler = {pool_mode:?}\n");
    let mut app = TestApp::with(pool, with_database(TestConfig::default(), &lines)).await;
    through(&mut app, &bouncer);
    seed_thirty(&app).await;

    let out = app.run(&["run", "--once"]).await;

    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(app.submissions_in("succeeded").await, 30, "{out:?}");
    assert_each_sent_once(&app, 30);
}

#[sqlx::test]
async fn run_once_through_pgbouncer_in_transaction_mode_sends_every_pair_once(pool: PgPool) {
    run_once_sends_every_pair(pool, "transaction").await;
}

#[sqlx::test]
async fn run_once_through_pgbouncer_in_session_mode_sends_every_pair_once(pool: PgPool) {
    run_once_sends_every_pair(pool, "session").await;
}

#[sqlx::test]
async fn two_accounts_through_pgbouncer_in_transaction_mode_each_stopping_only_itself(
    pool: PgPool,
) {
    let bouncer = PgBouncer::start("transaction").await;
    let config = TestConfig {
        accounts: TestAccount::two(&["shopApp1", "shopApp2"], &["bankApp1", "bankApp2"]),
        ..with_database(TestConfig::default(), TRANSACTION)
    };
    let mut app = TestApp::with(pool, config).await;
    through(&mut app, &bouncer);
    for id in ["shopApp1", "shopApp2", "bankApp1", "bankApp2"] {
        app.seed_recent(id).await;
    }
    // Every bank request is refused -1: its account stops, with the claims that leave it out.
    app.write_account_secret("bank", "not-the-bank-secret");

    let out = app.run(&["run", "--once"]).await;

    assert_eq!(out.code, 1, "{out:?}");
    let states: Vec<(String, String, String)> =
        sqlx::query_as("SELECT app_id, account, state FROM report_submissions ORDER BY app_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let state = |s: &str| s.to_owned();
    assert_eq!(
        states,
        [
            (state("bankApp1"), state("bank"), state("failed")),
            (state("bankApp2"), state("bank"), state("failed")),
            (state("shopApp1"), state("shop"), state("succeeded")),
            (state("shopApp2"), state("shop"), state("succeeded")),
        ],
        "{out:?}"
    );
    assert_each_sent_once(&app, 2);
}

#[sqlx::test]
async fn two_daemons_through_pgbouncer_share_a_tick_and_send_each_pair_once(pool: PgPool) {
    let bouncer = PgBouncer::start("transaction").await;
    let config = TestConfig {
        max_in_flight: 4,
        ..with_database(TestConfig::default(), TRANSACTION)
    };
    let (mut app, tick) = catch_up_app(pool, config, 400).await;
    let direct = through(&mut app, &bouncer);
    // B goes around the pooler for its LISTEN; A, without direct_url, polls (every 2 s: the
    // work lasts longer, so that it joins whoever claims the tick).
    let b_config = with_database(
        app.config.clone(),
        &format!("{TRANSACTION}direct_url = {direct:?}\n"),
    );
    let b_path = app.instance_config("b", &b_config, &app.db_url);
    app.provider.set_latency(Duration::from_millis(50));

    let a = Daemon::start(&app);
    let b = Daemon::spawn(command_with(&b_path, &["run"]));
    eventually(
        Duration::from_secs(60),
        "all 400 pairs succeeded",
        || async { app.submissions_in("succeeded").await == 400 },
    )
    .await;
    let listening = app
        .count(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'backfill-reporter' AND query LIKE 'LISTEN%'",
        )
        .await;
    let (a, b) = (a.stop().await, b.stop().await);

    assert_eq!((a.code, b.code), (0, 0), "A:\n{}\nB:\n{}", a.log, b.log);
    assert_each_sent_once(&app, 400);
    let runs = app
        .count(&format!(
            "SELECT count(*) FROM report_runs WHERE scheduled_for = '{}'",
            tick.to_rfc3339()
        ))
        .await;
    assert_eq!(runs, 1, "the tick was claimed once");
    let senders = app
        .count("SELECT count(DISTINCT attempted_by) FROM report_submissions")
        .await;
    assert_eq!(
        senders, 2,
        "both instances sent:\nA:\n{}\nB:\n{}",
        a.log, b.log
    );
    assert_eq!(listening, 1, "only B listens, over direct_url");
    assert!(
        a.log.contains("looks for queued rows every 2s"),
        "{}",
        a.log
    );
    assert!(!b.log.contains("looks for queued rows"), "{}", b.log);
}

/// A source query that sleeps 5 s, with a statement timeout of 1 s, through `pool_mode`.
async fn slow_source_is_cut(pool: PgPool, pool_mode: &str) {
    let bouncer = PgBouncer::start(pool_mode).await;
    let config = TestConfig {
        query: Some(
            "SELECT app_id, mcc, sum(backfilled) AS backfill_number, sum(sent) AS cardinal_number \
             FROM otp_counts, pg_sleep(5) WHERE bucket_start >= $1 AND bucket_start < $2 \
             GROUP BY 1, 2"
                .into(),
        ),
        ..with_database(
            TestConfig::default(),
            &format!("pooler = {pool_mode:?}\nstatement_timeout = \"1s\"\n"),
        )
    };
    let mut app = TestApp::with(pool, config).await;
    through(&mut app, &bouncer);
    app.seed_recent("slowSrc1").await;

    let started = Instant::now();
    let out = app.run(&["run", "--once"]).await;
    let took = started.elapsed();

    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.err
            .contains("canceling statement due to statement timeout"),
        "{out:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "cut at 1 s, not after 5: {took:?}"
    );
    assert!(app.provider.backfill_bodies().is_empty());
    assert_eq!(app.count("SELECT count(*) FROM report_runs").await, 0);
}

#[sqlx::test]
async fn a_source_query_slower_than_statement_timeout_is_cut_through_a_transaction_pooler(
    pool: PgPool,
) {
    slow_source_is_cut(pool, "transaction").await;
}

#[sqlx::test]
async fn a_source_query_slower_than_statement_timeout_is_cut_through_a_session_pooler(
    pool: PgPool,
) {
    slow_source_is_cut(pool, "session").await;
}

/// The one line of `out` that names the pooler, checked: it says which key to set, with `sign`,
/// and nothing blames the source, the index or an unreachable database.
fn names_the_pooler_key(out: &Output, sign: &str) {
    assert_eq!(out.code, 2, "{out:?}");
    let lines: Vec<&str> = out.err.lines().filter(|l| l.contains("pooler")).collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(
        lines[0].contains("set [database] pooler = \"transaction\""),
        "{out:?}"
    );
    assert!(lines[0].contains(sign), "{out:?}");
    for blame in ["does not prepare", "otp_counts index", "unreachable"] {
        assert!(!out.err.contains(blame), "{blame}: {out:?}");
    }
}

#[sqlx::test]
async fn without_pooler_set_a_stock_pgbouncer_is_named_in_one_line_with_the_key_to_set(
    pool: PgPool,
) {
    let bouncer = PgBouncer::start("transaction").await;
    let mut app = TestApp::new(pool).await;
    through(&mut app, &bouncer);

    let check = app.run(&["check"]).await;
    // The daemon does not wait it out as an outage: it exits, naming the key.
    let daemon = app.run(&["run"]).await;

    names_the_pooler_key(&check, "unsupported startup parameter");
    names_the_pooler_key(&daemon, "unsupported startup parameter");
}

#[sqlx::test]
async fn a_pgbouncer_that_ignores_startup_options_is_named_by_its_prepared_statements(
    pool: PgPool,
) {
    // What an operator tries next: PgBouncer told to ignore the options it refused.
    let bouncer = PgBouncer::start_with(
        "transaction",
        "ignore_startup_parameters = extra_float_digits,options\n",
    )
    .await;
    let mut app = TestApp::new(pool).await;
    through(&mut app, &bouncer);

    // The first leaves its named statements on the server connections the pooler keeps; the
    // next client's collide with them, if its own did not already.
    let _first = app.run(&["check"]).await;
    let second = app.run(&["run", "--once"]).await;

    names_the_pooler_key(&second, "prepared statement \"sqlx_s_");
    assert!(app.provider.backfill_bodies().is_empty());
}
