//! A provider behind a throttling gateway: answers that carry the HTTP code again as a JSON
//! `status` (Spring's default error body) are retried after their `Retry-After`, never taken
//! for a provider status that rejects the pair.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::fake_provider::{Scripted, BACKFILL_PATH};
use crate::helpers::{Output, TestApp, TestConfig};

/// `pairs` pairs (apps `thr00000`, `thr00001`, …, all mcc 460) counted half an hour ago.
async fn seed_pairs(app: &TestApp, pairs: i32) {
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'thr' || lpad(i::text, 5, '0'), 460, now() - interval '30 minutes', 10, 4 \
         FROM generate_series(1, $1) AS i",
    )
    .bind(pairs)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// The scene at a smaller scale: a gateway serves 8 at once and answers the rest 429.
/// Returns (requests, of which 429) once every pair succeeded.
async fn throttled_run(pool: PgPool, concurrency: Option<&str>) -> (usize, usize) {
    const PAIRS: i32 = 300;
    let app = TestApp::with(
        pool,
        TestConfig {
            max_in_flight: 32,
            concurrency: concurrency.map(str::to_owned),
            ..TestConfig::default()
        }
        .next_tick_a_day_away(),
    )
    .await;
    app.provider.throttle(8);
    app.provider.set_latency(Duration::from_millis(20));
    seed_pairs(&app, PAIRS).await;

    let started = Instant::now();
    let Output { code, out, err } = app.run(&["run", "--once"]).await;
    let took = started.elapsed();

    let received = app.provider.received();
    let throttled = received.iter().filter(|r| r.answered_http == 429).count();
    println!(
        "{PAIRS} pairs, concurrency {concurrency:?} (max_in_flight 32) against a capacity of 8: \
         {} requests, {throttled} answered 429, {:.1}s",
        received.len(),
        took.as_secs_f64()
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(app.submissions_in("succeeded").await, i64::from(PAIRS));
    assert_eq!(app.submissions_in("failed").await, 0);
    let mut accepted: Vec<String> = app
        .provider
        .backfill_bodies()
        .iter()
        .map(|b| b["appId"].as_str().unwrap().to_owned())
        .collect();
    accepted.sort();
    accepted.dedup();
    assert_eq!(
        accepted.len(),
        PAIRS as usize,
        "every pair reached the provider"
    );
    assert!(received.iter().all(|r| r.path == BACKFILL_PATH));
    (received.len(), throttled)
}

#[sqlx::test]
async fn a_provider_throttling_with_429_and_a_spring_body_gets_every_pair_in_the_end(pool: PgPool) {
    // 32 at once, fixed: most are answered 429, and every pair still gets through.
    let (_, throttled) = throttled_run(pool, Some("32")).await;
    assert!(throttled > 0, "the gateway throttled some requests");
}

#[sqlx::test]
async fn with_adaptive_concurrency_a_throttling_provider_sees_few_429s(pool: PgPool) {
    let (requests, throttled) = throttled_run(pool, None).await;
    assert!(
        throttled * 10 <= requests,
        "{throttled} of {requests} requests answered 429"
    );
}

#[sqlx::test]
async fn an_http_500_with_a_spring_body_is_retried_not_failed(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::default().next_tick_a_day_away()).await;
    for app_id in ["srvErr01", "srvErr02"] {
        app.seed_recent(app_id).await;
    }
    let spring_500 = serde_json::json!({"timestamp": "2026-01-01T00:00:00.000+00:00",
        "status": 500, "error": "Internal Server Error", "path": BACKFILL_PATH});
    app.provider.script_all(vec![
        Scripted::json(500, spring_500.clone()),
        Scripted::json(500, spring_500),
    ]);

    let Output { code, out, err } = app.run(&["run", "--once"]).await;

    assert_eq!(code, 0, "{out}\n{err}");
    let rows = app.submissions().await;
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row.state, "succeeded", "{row:?}");
        assert_eq!(row.provider_status.as_deref(), Some("0"), "{row:?}");
    }
    let answered: Vec<u16> = app
        .provider
        .received()
        .iter()
        .map(|r| r.answered_http)
        .collect();
    assert_eq!(
        answered.iter().filter(|&&h| h == 500).count(),
        2,
        "{answered:?}"
    );
    assert_eq!(
        answered.iter().filter(|&&h| h == 200).count(),
        2,
        "{answered:?}"
    );
}
