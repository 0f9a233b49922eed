//! The default source's incremental sums against a full recount: whatever the buckets do
//! between ticks (new ones, late ones within the margin, pairs appearing and leaving, the
//! window jumping or moving back), each tick reads exactly what the whole window holds.

use std::collections::BTreeMap;

use backfill_reporter::db::Db;
use backfill_reporter::queue::source::DEFAULT_QUERY;
use backfill_reporter::queue::sums::{self, Moved, QUERY};
use chrono::{DateTime, Duration, DurationRound, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

use crate::helpers::{Output, TestApp, TestConfig};

type Sums = BTreeMap<(String, String), (String, String)>;

async fn read(db: &Db, sql: &str, a: DateTime<Utc>, b: DateTime<Utc>) -> Sums {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(&format!(
        "SELECT app_id, mcc, backfill_number::text, cardinal_number::text FROM ({sql}) s"
    ))
    .bind(a)
    .bind(b)
    .fetch_all(db)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(app, mcc, backfilled, sent)| ((app, mcc), (backfilled, sent)))
        .collect()
}

/// Moves the sums to `[start, end)` in a committed transaction and reads them as the cursor
/// would; returns them with how they were moved.
async fn tick(db: &Db, start: DateTime<Utc>, end: DateTime<Utc>) -> (Sums, Moved) {
    let mut tx = db.begin().await.unwrap();
    let (settled, moved) = sums::advance(&mut tx, start, end).await.unwrap();
    tx.commit().await.unwrap();
    (read(db, QUERY, settled, end).await, moved)
}

/// Adds buckets for a few random pairs at `at` (upserts, as applications count).
async fn count(pool: &PgPool, rng: &mut StdRng, at: DateTime<Utc>) {
    for _ in 0..rng.random_range(1..6) {
        sqlx::query(
            "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app_id, mcc, bucket_start) \
             DO UPDATE SET sent = otp_counts.sent + EXCLUDED.sent, \
                 backfilled = otp_counts.backfilled + EXCLUDED.backfilled",
        )
        .bind(format!("sumApp{}", rng.random_range(0..8)))
        .bind(rng.random_range(460..464))
        .bind(at)
        .bind(rng.random_range(5..50_i64))
        .bind(rng.random_range(0..5_i64))
        .execute(pool)
        .await
        .unwrap();
    }
}

#[sqlx::test]
async fn incremental_sums_equal_a_full_recount_at_every_tick(pool: PgPool) {
    let db = Db::from(pool.clone());
    let mut rng = StdRng::seed_from_u64(7);
    let window = Duration::hours(2);
    let bucket = Duration::minutes(5);
    let mut now = Utc::now().duration_trunc(Duration::hours(1)).unwrap() - Duration::days(1);
    let (mut incremented, mut recounted) = (0, 0);
    for step in 0..60 {
        // Buckets for the coming interval, and a late one for a bucket just before the tick.
        count(&pool, &mut rng, now).await;
        count(&pool, &mut rng, now - bucket).await;
        now += match step {
            20 => Duration::hours(5),     // a jump past the window
            35 => Duration::minutes(-30), // a tick planned for an earlier time
            _ => Duration::minutes(10),
        };
        let (start, end) = (now - window, now);
        let (incremental, moved) = tick(&db, start, end).await;
        let full = read(&db, DEFAULT_QUERY, start, end).await;
        assert_eq!(
            incremental, full,
            "step {step}, window [{start}, {end}), {moved:?}"
        );
        match moved {
            Moved::Incremented => incremented += 1,
            Moved::Recounted => recounted += 1,
        }
    }
    assert!(incremented >= 40, "mostly incremental: {incremented} of 60");
    assert!(
        recounted >= 3,
        "the first tick, the jump, the move back: {recounted}"
    );
}

#[sqlx::test]
async fn a_tick_through_the_sums_reports_what_the_whole_window_holds(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::default()).await;
    app.seed_recent("sumsApp1").await;
    app.seed("sumsApp2", 1, Utc::now() - Duration::hours(3), 20, 5)
        .await;

    let Output { code, out, err } = app.run(&["run", "--once", "--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    let once = app.run(&["run", "--once"]).await;

    assert_eq!(once.code, 0, "{}", once.err);
    let bodies = app.provider.backfill_bodies();
    assert_eq!(bodies.len(), 2, "{out}");
    let mcc_001 = bodies.iter().find(|b| b["appId"] == "sumsApp2").unwrap();
    assert_eq!(mcc_001["mcc"], "001", "padded as the window query pads it");
    assert_eq!(mcc_001["backfillNow"], "25");
    assert_eq!(
        app.count("SELECT count(*) FROM source_sums").await,
        2,
        "the sums were kept for the next tick"
    );
}

#[sqlx::test]
async fn buckets_older_than_source_keep_are_deleted_in_batches_and_the_window_kept(pool: PgPool) {
    let app = TestApp::new(pool).await;
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'keepApp' || (p % 100), 460, now() - interval '3 days' - p * interval '1 minute', \
             10, 4 FROM generate_series(1, 12000) p",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.seed_recent("keepApp1").await;
    let keep = app.settings().source.keep;
    assert_eq!(
        keep,
        std::time::Duration::from_secs(26 * 3600),
        "the window and two hours"
    );

    let cutoff = backfill_reporter::queue::retention::cutoff(Utc::now(), keep);
    let deleted =
        backfill_reporter::queue::retention::prune_counts(&Db::from(app.pool.clone()), cutoff)
            .await
            .unwrap();

    assert_eq!(
        deleted, 12_000,
        "every old bucket, over three batches of 5,000"
    );
    assert_eq!(app.count("SELECT count(*) FROM otp_counts").await, 1);
}
