//! The route-health check at scale, printed as figures: `alarm::judge_run` over one run of
//! BENCH_ALARM_PAIRS pairs (default 240,000) with BENCH_ALARM_HISTORY earlier succeeded reports
//! each (default 12), 1% of the pairs collapsing. One statement per run, however many pairs.
//! Run with `cargo bench --bench alarm`; needs the database of `scripts/test-db` or
//! DATABASE_URL. Creates and drops its own database.

// Benchmarks arrange and inspect the database with sqlx's own types; the product may not
// (clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::time::Instant;

use backfill_reporter::db::Db;
use backfill_reporter::{config, views::alarm};
use sqlx::{Executor, PgPool};
use support::{env_or, BenchDb};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = BenchDb::create("alarm").await?;
    let result = run(&db.url).await;
    db.drop_now().await?;
    result
}

async fn run(url: &str) -> anyhow::Result<()> {
    let pairs = env_or("BENCH_ALARM_PAIRS", 240_000);
    let history = env_or("BENCH_ALARM_HISTORY", 12);
    let pool = PgPool::connect(url).await?;
    let settings = config::from_toml(
        "[provider]\napi_key = \"benchKey\"\n[alarm]\nbaseline_samples = 12\n",
        std::path::Path::new("bench.toml"),
        &|_| None,
    )?;
    let started = Instant::now();
    let run_id = seed(&pool, pairs, history).await?;
    println!(
        "setup: {pairs} pairs x {history} earlier reports + 1 run to judge in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let db = Db::from(pool.clone());
    let mut tx = db.begin().await?;
    let evaluation = alarm::judge_run(&mut tx, &settings, run_id).await?;
    tx.commit().await?;
    let took = started.elapsed();
    println!(
        "judge_run: {} pairs judged, {} dropped ({} new) in {:.2}s = {:.0} pairs/s, one statement",
        evaluation.judged,
        evaluation.dropped.len(),
        evaluation.started,
        took.as_secs_f64(),
        evaluation.judged as f64 / took.as_secs_f64()
    );
    let firing = alarm::firing_count(&db).await?;
    println!("route_alarms: {firing} firing");
    Ok(())
}

/// `history` succeeded reports of every pair, then the run to judge (returned): every pair
/// pending, 1% of them down to 10%.
async fn seed(pool: &PgPool, pairs: usize, history: usize) -> anyhow::Result<i64> {
    // One run row per history tick, then the pairs' succeeded reports at those ticks.
    pool.execute(
        format!(
            "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, \
                 finished_at) \
             SELECT t, 'schedule', t - interval '1 hour', t, 'bench:1', t \
             FROM generate_series(1, {history}) k, \
                  LATERAL (SELECT timestamptz '2026-01-01' + k * interval '10 minutes' AS t) x; \
             INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
                 window_end, backfill_number, cardinal_number, rate, callback_time, state) \
             SELECT r.id, 'app' || (p / 1000), lpad((p % 1000)::text, 3, '0'), r.scheduled_for, \
                 r.window_start, r.window_end, 80 + (p % 7), 100, 80 + (p % 7), 'x', 'succeeded' \
             FROM report_runs r, generate_series(0, {pairs} - 1) p;"
        )
        .as_str(),
    )
    .await?;
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance) \
         VALUES (timestamptz '2026-01-02', 'schedule', timestamptz '2026-01-02' - interval '1 hour', \
             timestamptz '2026-01-02', 'bench:1') RETURNING id",
    )
    .fetch_one(pool)
    .await?;
    pool.execute(
        format!(
            "INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
                 window_end, backfill_number, cardinal_number, rate, callback_time, state) \
             SELECT {run_id}, 'app' || (p / 1000), lpad((p % 1000)::text, 3, '0'), \
                 timestamptz '2026-01-02', timestamptz '2026-01-02' - interval '1 hour', \
                 timestamptz '2026-01-02', CASE WHEN p % 100 = 0 THEN 10 ELSE 81 END, 100, \
                 CASE WHEN p % 100 = 0 THEN 10 ELSE 81 END, 'x', 'pending' \
             FROM generate_series(0, {pairs} - 1) p"
        )
        .as_str(),
    )
    .await?;
    // As autovacuum would have by then: the visibility map makes the baseline lookups
    // index-only.
    pool.execute("VACUUM ANALYZE report_submissions").await?;
    Ok(run_id)
}
