//! Throughput of one reporting cycle and the cost of the window query, printed as figures.
//! Run with `bench/run` (or `cargo bench --bench cycle`); needs the database of
//! `scripts/test-db` or DATABASE_URL. Creates and drops its own database.
//!
//! - cycle: N pairs through claim → read → judge → submit (to a loopback stand-in for the
//!   provider that checks the signature) → record, reported as pairs per second, with the
//!   share of time spent in the database writes;
//! - window query: the default source query over a large `otp_counts`, with its plan, to show
//!   that it reads only the window through the bucket_start index.

// Benchmarks arrange and inspect the database with sqlx's own types; the product may not
// (clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backfill_reporter::config;
use backfill_reporter::domain::run::Trigger;
use backfill_reporter::queue::context::Context;
use backfill_reporter::queue::tick;
use sqlx::PgPool;
use support::{env_or, provider, BenchDb, KEY, SECRET};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pairs = env_or("BENCH_PAIRS", 2000);
    let rows = env_or("BENCH_ROWS", 2_000_000);
    let db = BenchDb::create("cycle").await?;
    let result = run(&db.url, pairs, rows).await;
    db.drop_now().await?;
    result
}

async fn run(db_url: &str, pairs: usize, rows: usize) -> anyhow::Result<()> {
    let (addr, received) = provider(Duration::ZERO).await;
    let text = format!(
        "[provider]\nbase_url = \"http://{addr}/otp\"\napi_key = \"{KEY}\"\napi_secret = \"{SECRET}\"\n\
         max_in_flight = 16\n[database]\nurl = \"{db_url}\"\nmax_connections = 8\n[schedule]\ntimezone = \"Asia/Shanghai\"\n"
    );
    let settings = config::from_toml(&text, std::path::Path::new("bench.toml"), &|_| None)?;
    let pool = PgPool::connect(db_url).await?;
    let ctx = Context::new(settings, pool.clone(), "bench:1".into())?;
    let tick = backfill_reporter::queue::runs::now_tick(&ctx.pool).await?;
    cycle_throughput(&ctx, pairs, tick).await?;
    assert_eq!(received.load(Ordering::Relaxed) as usize, pairs);
    window_query(&ctx, rows, tick).await
}

/// `pairs` pairs through claim → read → judge → submit → record, in process.
async fn cycle_throughput(
    ctx: &Context,
    pairs: usize,
    tick: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    // Pairs: apps × MCCs, 24 hourly buckets each.
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'benchApp' || (p / 50), 200 + (p % 50), $1 - make_interval(hours => h), 100, 37 \
         FROM generate_series(0, $2 - 1) p, generate_series(1, 24) h",
    )
    .bind(tick)
    .bind(pairs as i32)
    .execute(pool)
    .await?;

    let started = Instant::now();
    let report = tick::run(ctx, tick, Trigger::Once, &CancellationToken::new())
        .await?
        .expect("claimed");
    let elapsed = started.elapsed();
    assert_eq!(
        report.tally.succeeded as usize, pairs,
        "every pair succeeded"
    );
    println!(
        "cycle: {pairs} pairs in {:.3} s = {:.0} pairs/s (max_in_flight 16, loopback provider)",
        elapsed.as_secs_f64(),
        pairs as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

/// The window query over a large table (`rows` buckets spread over about a year), with its plan.
async fn window_query(
    ctx: &Context,
    rows: usize,
    tick: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let pool = &ctx.pool;
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'histApp' || (g % 200), 300 + (g % 97), $1 - make_interval(mins => 1 + g / 5), 10, 3 \
         FROM generate_series(0, $2 - 1) g ON CONFLICT DO NOTHING",
    )
    .bind(tick)
    .bind(rows as i32)
    .execute(pool)
    .await?;
    sqlx::query("VACUUM ANALYZE otp_counts")
        .execute(pool)
        .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM otp_counts")
        .fetch_one(pool)
        .await?;
    let window_start = tick - chrono::Duration::hours(24);
    let started = Instant::now();
    let preview = tick::preview(pool, &ctx.settings, tick).await?;
    println!(
        "window query: {} pairs from a table of {total} rows read and judged in {:.1} ms",
        preview.pairs.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        backfill_reporter::queue::source::DEFAULT_QUERY
            .replace(
                "$1",
                &format!("'{}'::timestamptz", window_start.to_rfc3339())
            )
            .replace("$2", &format!("'{}'::timestamptz", tick.to_rfc3339()))
    ))
    .fetch_all(pool)
    .await?;
    println!("plan:\n  {}", plan.join("\n  "));
    Ok(())
}
