//! Whether a tick fits its interval: a tick that will not be done by the next one is said once,
//! with by how much and what would help; `status` shows the last tick against its interval.

use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use crate::helpers::{Daemon, TestApp, TestConfig};

#[sqlx::test]
async fn a_tick_that_will_not_fit_its_interval_is_said_once_with_what_would_help(pool: PgPool) {
    // Every minute, two requests at once of 200 ms: 10 pairs a second, and 2,000 pairs to send.
    let app = TestApp::with(
        pool,
        TestConfig {
            cron: "* * * * *".into(),
            timezone: "UTC".into(),
            max_in_flight: 2,
            concurrency: Some("2".into()),
            ..TestConfig::default()
        },
    )
    .await;
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'paceApp' || (p % 50), 200 + p / 50, now() - interval '30 minutes', 10, 4 \
         FROM generate_series(0, 1999) p",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // A tick run an hour ago: the daemon catches up the latest tick at once.
    let old = Utc::now() - chrono::Duration::hours(1);
    app.scheduled_run(old, "old:1", Some(old)).await;
    app.provider.set_latency(Duration::from_millis(200));

    let daemon = Daemon::start(&app);
    daemon
        .wait_log("will not be done by the next tick", Duration::from_secs(40))
        .await;
    let stopped = daemon.stop().await;

    let warnings: Vec<&str> = stopped
        .log
        .lines()
        .filter(|l| l.contains("will not be done by the next tick"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", stopped.log);
    assert!(
        warnings[0].contains("pairs left at")
            && warnings[0].contains("raise it, or run more instances"),
        "{}",
        warnings[0]
    );

    let status = app.run(&["status"]).await;
    assert!(
        status.out.starts_with("last tick ") && status.out.contains("of its 1m interval"),
        "{}",
        status.out
    );
}
