//! One reporting cycle against a real database and the fake provider.

use backfill_reporter::domain::run::{RunSummary, Trigger};
use backfill_reporter::queue::tick;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::fake_provider::Scripted;
use crate::helpers::{utc, Output, Submission, TestApp, TestConfig};

const TICK: &str = "2026-02-01T00:00:00+08:00";

pub(crate) fn tick() -> DateTime<Utc> {
    utc(TICK)
}

/// One pair, 10 codes sent and `backfilled` typed back, a minute before the tick.
async fn seed_before_tick(app: &TestApp, app_id: &str, backfilled: i64) {
    let bucket = tick() - chrono::Duration::minutes(1);
    app.seed(app_id, 460, bucket, 10, backfilled).await;
}

pub(crate) async fn run_cycle(app: &TestApp) -> RunSummary {
    tick::run(
        &app.ctx(),
        tick(),
        Trigger::Schedule,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
    .expect("the tick was not claimed before")
}

#[sqlx::test]
async fn the_provider_receives_exactly_the_documented_body(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed(
        "mRELxtHc",
        460,
        tick() - chrono::Duration::hours(1),
        1000,
        100,
    )
    .await;

    let report = run_cycle(&app).await;

    assert!(report.all_good());
    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 1);
    let body = bodies[0].as_object().unwrap();
    assert_eq!(body.len(), 6, "no extra fields: {body:?}");
    assert_eq!(body["appId"], json!("mRELxtHc"));
    assert_eq!(body["mcc"], json!("460"));
    assert_eq!(body["backfillNumber"], json!("100"));
    assert_eq!(body["backfillCardinalNumber"], json!("1000"));
    assert_eq!(body["backfillNow"], json!("10"));
    assert_eq!(body["callbackTime"], json!("2026-02-01T00:00:00+08:00"));
    let rows = app.submissions().await;
    assert_eq!(
        rows,
        vec![Submission {
            app_id: "mRELxtHc".into(),
            mcc: "460".into(),
            state: "succeeded".into(),
            attempts: 1,
            provider_status: Some("0".into()),
            reason: None
        }]
    );
    let (rate, callback_time, window_start, window_end): (
        String,
        String,
        DateTime<Utc>,
        DateTime<Utc>,
    ) = sqlx::query_as(
        "SELECT rate::text, callback_time, window_start, window_end FROM report_submissions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rate, "10.00");
    assert_eq!(callback_time, TICK);
    assert_eq!(window_start, tick() - chrono::Duration::hours(24));
    assert_eq!(window_end, tick());
}

#[sqlx::test]
async fn each_rounding_case_is_sent_as_the_exact_decimal(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let bucket = tick() - chrono::Duration::minutes(5);
    for (i, (sent, backfilled)) in [(1000, 100), (8, 1), (3, 1), (3, 2), (5, 0), (5, 5), (32, 1)]
        .iter()
        .enumerate()
    {
        app.seed(&format!("app{i:02}"), 460, bucket, *sent, *backfilled)
            .await;
    }
    run_cycle(&app).await;
    let mut got: Vec<(String, String)> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| {
            (
                b["appId"].as_str().unwrap().to_owned(),
                b["backfillNow"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    let want = ["10", "12.5", "33.33", "66.67", "0", "100", "3.13"];
    let want: Vec<(String, String)> = want
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("app{i:02}"), r.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[sqlx::test]
async fn a_bucket_at_the_window_start_is_in_and_one_at_the_end_is_out(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let start = tick() - chrono::Duration::hours(24);
    app.seed("edgeApp1", 460, start, 10, 4).await; // in: the window is [start, tick)
    app.seed(
        "edgeApp1",
        460,
        start - chrono::Duration::seconds(1),
        1000,
        0,
    )
    .await; // out
    app.seed("edgeApp1", 460, tick(), 1000, 0).await; // out
    app.seed(
        "edgeApp1",
        460,
        tick() - chrono::Duration::seconds(1),
        10,
        1,
    )
    .await; // in

    run_cycle(&app).await;

    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["backfillCardinalNumber"], "20");
    assert_eq!(bodies[0]["backfillNumber"], "5");
    assert_eq!(bodies[0]["backfillNow"], "25");
}

#[sqlx::test]
async fn a_custom_query_over_raw_events_is_used(pool: PgPool) {
    let query = "SELECT app_id, mcc, count(*) FILTER (WHERE verified) AS backfill_number, \
                 count(*) AS cardinal_number FROM otp_events \
                 WHERE created_at >= $1 AND created_at < $2 GROUP BY 1, 2 -- per app and country";
    let app = TestApp::with(
        pool,
        TestConfig {
            query: Some(query.into()),
            ..TestConfig::default()
        },
    )
    .await;
    sqlx::query(
        "CREATE TABLE otp_events (app_id text, mcc text, created_at timestamptz, verified bool)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    for verified in [true, true, false] {
        sqlx::query("INSERT INTO otp_events VALUES ('evtApp01', '234', $1, $2)")
            .bind(tick() - chrono::Duration::minutes(30))
            .bind(verified)
            .execute(&app.pool)
            .await
            .unwrap();
    }

    run_cycle(&app).await;

    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 1);
    assert_eq!(bodies[0]["mcc"], "234");
    assert_eq!(bodies[0]["backfillNow"], "66.67");
}

#[sqlx::test]
async fn a_custom_query_with_a_wrong_column_is_an_error_before_anything_is_sent(pool: PgPool) {
    let query = "SELECT app_id, mcc, sent AS cardinal_number, 'x'::text AS backfill_number \
                 FROM otp_counts WHERE bucket_start >= $1 AND bucket_start < $2";
    let app = TestApp::with(
        pool,
        TestConfig {
            query: Some(query.into()),
            ..TestConfig::default()
        },
    )
    .await;
    seed_before_tick(&app, "appWrong", 1).await;
    let err = tick::run(
        &app.ctx(),
        tick(),
        Trigger::Schedule,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("backfill_number") && msg.contains("TEXT"),
        "{msg}"
    );
    assert!(app.provider.received().is_empty());
    assert_eq!(app.count("SELECT count(*) FROM report_runs").await, 0);

    let missing = "SELECT app_id, mcc, sent AS cardinal_number FROM otp_counts \
                   WHERE bucket_start >= $1 AND bucket_start < $2";
    app.write_config(&TestConfig {
        query: Some(missing.into()),
        ..TestConfig::default()
    });
    let Output { code, err, .. } = app.run(&["check"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("no column \"backfill_number\""), "{err}");
}

#[sqlx::test]
async fn each_skip_and_invalid_kind_is_recorded_with_its_reason_and_never_sent(pool: PgPool) {
    let query = "SELECT * FROM (VALUES \
        ('goodApp1', '460', 5::bigint, 10::bigint), \
        ('zeroSent', '460', 0, 0), \
        ('fewSent1', '460', 1, 2), \
        ('tooMany1', '460', 11, 10), \
        ('negative', '460', -1, 10), \
        ('badMcc01', '46', 1, 10), \
        ('abc', '460', 1, 10)) AS v(app_id, mcc, backfill_number, cardinal_number) \
        WHERE $1::timestamptz IS NOT NULL AND $2::timestamptz IS NOT NULL";
    let app = TestApp::with(
        pool,
        TestConfig {
            query: Some(query.into()),
            min_cardinal: 3,
            ..TestConfig::default()
        },
    )
    .await;

    let report = run_cycle(&app).await;

    assert!(!report.all_good());
    assert_eq!(
        (
            report.tally.succeeded,
            report.tally.skipped,
            report.tally.invalid
        ),
        (1, 2, 4)
    );
    let sent: Vec<_> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| b["appId"].clone())
        .collect();
    assert_eq!(sent, vec![json!("goodApp1")]);
    let rows = app.submissions().await;
    let find = |app: &str| rows.iter().find(|r| r.app_id == app).unwrap().clone();
    for (app_id, state, needle) in [
        ("zeroSent", "skipped", "no codes sent"),
        ("fewSent1", "skipped", "min_cardinal"),
        ("tooMany1", "invalid", "greater than sent"),
        ("negative", "invalid", "negative"),
        ("badMcc01", "invalid", "three-digit"),
        ("abc", "invalid", "4 to 32"),
    ] {
        let r = find(app_id);
        assert_eq!(r.state, state, "{app_id}");
        assert_eq!(r.attempts, 0, "{app_id} was never attempted");
        assert!(
            r.reason.as_deref().unwrap().contains(needle),
            "{app_id}: {:?}",
            r.reason
        );
    }
    let runs: (i32, i32, i32, i32, i32) =
        sqlx::query_as("SELECT pairs, succeeded, failed, skipped, invalid FROM report_runs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(runs, (7, 1, 0, 2, 4));
}

#[sqlx::test]
async fn a_transient_failure_twice_then_success_records_three_attempts(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::default().next_tick_a_day_away()).await;
    seed_before_tick(&app, "flakyApp", 5).await;
    app.provider.script(
        "flakyApp",
        vec![Scripted::Http(500), Scripted::Status("-18", "busy")],
    );

    let report = run_cycle(&app).await;

    assert!(report.all_good());
    let rows = app.submissions().await;
    assert_eq!(rows[0].state, "succeeded");
    assert_eq!(rows[0].attempts, 3);
    let received = app.provider.received();
    assert_eq!(received.len(), 3);
    // re-signed for each attempt: every request carries a valid signature for its own timestamp
    assert!(received
        .iter()
        .all(|r| r.headers["sign"] == app.provider.sign_for(&r.headers["timestamp"])));
}

#[sqlx::test]
async fn a_transient_failure_that_persists_gives_up_after_max_attempts(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            max_attempts: Some(3),
            ..TestConfig::default()
        }
        .next_tick_a_day_away(),
    )
    .await;
    seed_before_tick(&app, "downApp1", 5).await;
    app.provider
        .script("downApp1", vec![Scripted::Http(503); 5]);
    run_cycle(&app).await;
    let (state, attempts, http_status, reason): (String, i32, Option<i32>, Option<String>) =
        sqlx::query_as("SELECT state, attempts, http_status, reason FROM report_submissions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), attempts, http_status),
        ("failed", 3, Some(503))
    );
    assert!(reason
        .unwrap()
        .contains("gave up after 3 attempts: HTTP 503"));
    // `history` says why, and shows the rate as it was sent (5 of 10: "50", not "50.00").
    let history = app.run(&["history", "--state", "failed"]).await;
    assert_eq!(history.code, 0, "{}", history.err);
    assert!(
        history.out.contains("gave up after 3 attempts: HTTP 503")
            && history.out.contains("| 50 ")
            && !history.out.contains("50.00"),
        "{}",
        history.out
    );
}

#[sqlx::test]
async fn a_minus_22_is_recorded_and_not_retried(pool: PgPool) {
    let app = TestApp::new(pool).await;
    seed_before_tick(&app, "paramApp", 5).await;
    app.provider.script(
        "paramApp",
        vec![Scripted::Status("-22", "backfillNow invalid")],
    );

    let report = run_cycle(&app).await;

    assert_eq!(report.tally.failed, 1);
    assert_eq!(app.provider.received().len(), 1);
    let row: (String, i32, Option<String>, Option<String>, Option<i32>) = sqlx::query_as(
        "SELECT state, attempts, provider_status, provider_reason, http_status FROM report_submissions",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (
            "failed".into(),
            1,
            Some("-22".into()),
            Some("backfillNow invalid".into()),
            Some(200)
        )
    );
}

#[sqlx::test]
async fn an_authentication_rejection_stops_the_rest_of_the_cycle(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            max_in_flight: 1,
            ..TestConfig::default()
        },
    )
    .await;
    for app_id in ["authApp1", "authApp2", "authApp3"] {
        seed_before_tick(&app, app_id, 5).await;
    }
    app.provider
        .script_all(vec![Scripted::Status("-1", "sign error")]);

    let report = run_cycle(&app).await;

    assert_eq!(report.tally.failed, 3);
    assert_eq!(
        app.provider.received().len(),
        1,
        "nothing is sent after a -1"
    );
    let rows = app.submissions().await;
    let not_sent: Vec<_> = rows.iter().filter(|r| r.attempts == 0).collect();
    assert_eq!(not_sent.len(), 2);
    for r in not_sent {
        assert_eq!(r.state, "failed");
        let reason = r.reason.as_deref().unwrap();
        assert!(
            reason.contains("not sent") && reason.contains("-1") && reason.contains("api_key"),
            "{reason}"
        );
    }
}

#[sqlx::test]
async fn the_unique_key_stops_a_second_submission_of_the_same_tick(pool: PgPool) {
    let app = TestApp::new(pool).await;
    seed_before_tick(&app, "onceApp1", 5).await;
    let ctx = app.ctx();
    let none = CancellationToken::new();

    tick::run(&ctx, tick(), Trigger::Once, &none)
        .await
        .unwrap()
        .unwrap();
    let second = tick::run(&ctx, tick(), Trigger::Once, &none)
        .await
        .unwrap()
        .unwrap();
    let scheduled_again = tick::run(&ctx, tick(), Trigger::Schedule, &none)
        .await
        .unwrap();
    let scheduled_thrice = tick::run(&ctx, tick(), Trigger::Schedule, &none)
        .await
        .unwrap();

    assert_eq!(second.tally.pairs, 0);
    assert_eq!(scheduled_again.unwrap().tally.pairs, 0);
    assert!(
        scheduled_thrice.is_none(),
        "a scheduled tick is claimed once"
    );
    assert_eq!(app.provider.received().len(), 1);
    assert_eq!(
        app.count("SELECT count(*) FROM report_submissions").await,
        1
    );
}

#[sqlx::test]
async fn the_allow_list_limits_the_apps_reported(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            apps: vec!["keepApp1".into()],
            ..TestConfig::default()
        },
    )
    .await;
    seed_before_tick(&app, "keepApp1", 5).await;
    seed_before_tick(&app, "dropApp1", 5).await;
    run_cycle(&app).await;
    let sent: Vec<_> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| b["appId"].clone())
        .collect();
    assert_eq!(sent, vec![json!("keepApp1")]);
}

#[sqlx::test]
async fn pending_rows_left_by_a_crash_are_sent_again_and_stale_ones_superseded(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let old = tick() - chrono::Duration::minutes(10);
    // What a crash leaves behind: runs and pending rows, nothing sent, the older one still
    // under the dead instance's (now expired) lease when the newer tick was planned.
    for (t, rate) in [(old, "40"), (tick(), "50")] {
        let run_id = app.scheduled_run(t, "dead:1", None).await;
        sqlx::query(
            "INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
             window_end, backfill_number, cardinal_number, rate, callback_time, state, \
             next_attempt_at, deadline, lease_owner, lease_expires_at) \
             VALUES ($1, 'crashApp', '460', $2, $2 - interval '1 day', $2, ($3::numeric / 10)::int, 10, \
                 $3::numeric, $4, 'pending', $2, now() + interval '1 hour', 'dead:1:0', \
                 now() - interval '1 second')",
        )
        .bind(run_id)
        .bind(t)
        .bind(rate)
        .bind(tick::callback_time(t, chrono_tz::Asia::Shanghai))
        .execute(&app.pool)
        .await
        .unwrap();
    }

    app.drain_queue().await;

    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 1, "the stale row is never sent");
    assert_eq!(bodies[0]["backfillNow"], "50");
    assert_eq!(bodies[0]["backfillNumber"], "5");
    assert_eq!(bodies[0]["callbackTime"], TICK);
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state FROM report_submissions ORDER BY scheduled_for")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(states, ["superseded", "succeeded"]);
    assert_eq!(app.open_runs().await, 0, "both runs are closed");
}

#[sqlx::test]
async fn run_once_submits_every_pair_and_prints_the_history(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let recent = chrono::Utc::now() - chrono::Duration::minutes(30);
    let seeds = [
        ("shopApp1", 460, 1000, 100),
        ("shopApp1", 234, 8, 1),
        ("bankApp1", 460, 3, 2),
        ("bankApp1", 310, 3, 1),
    ];
    for (a, m, s, b) in seeds {
        app.seed(a, m, recent, s, b).await;
    }

    let Output { code, out, err } = app.run(&["run", "--once"]).await;

    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("4 pairs, 4 succeeded, 0 failed"), "{out}");
    let mut bodies: Vec<(String, String, String, String, String)> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| {
            let s = |k: &str| b[k].as_str().unwrap().to_owned();
            (
                s("appId"),
                s("mcc"),
                s("backfillNumber"),
                s("backfillCardinalNumber"),
                s("backfillNow"),
            )
        })
        .collect();
    bodies.sort();
    let want = |a: &str, m: &str, b: &str, s: &str, r: &str| {
        (a.into(), m.into(), b.into(), s.into(), r.into())
    };
    assert_eq!(
        bodies,
        vec![
            want("bankApp1", "310", "1", "3", "33.33"),
            want("bankApp1", "460", "2", "3", "66.67"),
            want("shopApp1", "234", "1", "8", "12.5"),
            want("shopApp1", "460", "100", "1000", "10"),
        ]
    );
    assert_eq!(app.submissions_in("succeeded").await, 4);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM report_runs WHERE trigger = 'once' AND finished_at IS NOT NULL"
        )
        .await,
        1
    );

    let Output {
        code, out: history, ..
    } = app.run(&["history", "--app-id", "shopApp1"]).await;
    assert_eq!(code, 0);
    assert!(
        history.contains("shopApp1") && !history.contains("bankApp1"),
        "{history}"
    );
    assert!(
        history.contains("succeeded") && history.contains("| 12.5 "),
        "{history}"
    );
}

#[sqlx::test]
async fn run_once_exits_1_when_a_pair_fails(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_recent("failApp1").await;
    app.provider
        .script("failApp1", vec![Scripted::Status("-22", "nope")]);
    let Output { code, out, .. } = app.run(&["run", "--once"]).await;
    assert_eq!(code, 1, "{out}");
    let Output { out: failed, .. } = app.run(&["history", "--state", "failed"]).await;
    assert!(
        failed.contains("failApp1") && failed.contains("-22"),
        "{failed}"
    );
}

#[sqlx::test]
async fn dry_run_prints_the_plan_and_leaves_database_and_provider_untouched(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            min_cardinal: 5,
            ..TestConfig::default()
        },
    )
    .await;
    let recent = chrono::Utc::now() - chrono::Duration::minutes(30);
    app.seed("dryApp01", 460, recent, 1000, 100).await;
    app.seed("dryApp02", 460, recent, 3, 1).await;
    let before: i64 = app.count("SELECT count(*) FROM report_runs").await
        + app.count("SELECT count(*) FROM report_submissions").await;

    let Output { code, out, err } = app.run(&["run", "--once", "--dry-run"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("dryApp01") && out.contains("send") && out.contains("10"),
        "{out}"
    );
    assert!(
        out.contains("dryApp02") && out.contains("skip: only 3 codes sent"),
        "{out}"
    );
    assert!(app.provider.received().is_empty());
    let after: i64 = app.count("SELECT count(*) FROM report_runs").await
        + app.count("SELECT count(*) FROM report_submissions").await;
    assert_eq!(before, after);
}
