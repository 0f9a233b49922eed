//! The source side at full scale: `run --once` through the real binary (release build), default
//! config, a zero-latency stand-in provider, over `otp_counts` holding realistic buckets:
//!
//! - 240,000 pairs with 24 hourly buckets each in the window (5.76 million rows);
//! - 40,000 pairs with 288 five-minute buckets each (11.5 million rows).
//!
//! Prints the tick end to end, its planning (claim to commit) and, of that, the time reading
//! the source: the source query's share of the tick. `cargo bench --bench source`;
//! `BENCH_ONLY=hourly|5min` picks one. Needs the database of `scripts/test-db` or DATABASE_URL;
//! each run works in a database of its own (a few GB for a minute).

// The benchmark measures from outside: its own connections, not the daemon's handle.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{provider, write_config, BenchDb};
use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "hourly" {
        scenario("hourly", 240_000, 3_600, 24).await?;
    }
    if only.is_empty() || only == "5min" {
        scenario("5-minute", 40_000, 300, 288).await?;
    }
    Ok(())
}

/// `pairs` pairs with `buckets` buckets of `bucket_secs` each, all in the 24-hour window.
async fn scenario(name: &str, pairs: i64, bucket_secs: i64, buckets: i64) -> anyhow::Result<()> {
    let db = BenchDb::create("source").await?;
    let pool = db.pool().await?;
    backfill_reporter::db::migrate(&pool.clone().into()).await?;
    let seeding = Instant::now();
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'srcApp' || (p / 240), 200 + p % 240, \
             date_bin(make_interval(secs => $2), now(), 'epoch') - make_interval(secs => $2 * b), \
             100, 37 \
         FROM generate_series(0, $1 - 1) p, generate_series(1, $3) b",
    )
    .bind(pairs)
    .bind(bucket_secs as f64)
    .bind(buckets)
    .execute(&pool)
    .await?;
    sqlx::query("VACUUM ANALYZE otp_counts")
        .execute(&pool)
        .await?;
    let rows = pairs * buckets;
    eprintln!(
        "source ({name}): {rows} rows seeded in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );
    let (addr, _) = provider(Duration::ZERO).await;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), addr, &db.binary_url, None, "0 0 1 1 *");
    let started = Instant::now();
    let log = run_once(&config).await?;
    let total = started.elapsed();
    let (planned, read) = planning(&log).unwrap_or_default();
    println!(
        "source ({name}): {pairs} pairs from {rows} rows: run --once {:.1} s, planning {planned:.1} s, reading the source {read:.1} s = {:.0}% of the tick (the first tick: the sums are counted whole)",
        total.as_secs_f64(),
        100.0 * read / total.as_secs_f64()
    );
    next_tick(name, &pool, addr, &db.url, bucket_secs).await?;
    pool.close().await;
    db.drop_now().await
}

/// The tick after: its buckets come in, and its window is read (a dry run, in process) through
/// the incremental sums and whole, for comparison.
async fn next_tick(
    name: &str,
    pool: &sqlx::PgPool,
    provider: std::net::SocketAddr,
    db_url: &str,
    bucket_secs: i64,
) -> anyhow::Result<()> {
    use backfill_reporter::{config, db::Db, queue::runs, queue::tick};
    let tick = runs::now_tick(&Db::from(pool.clone())).await? + chrono::Duration::minutes(10);
    // The buckets of the ten minutes before the next tick, for every pair.
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT DISTINCT app_id, mcc, b, 100, 37 FROM otp_counts, \
             generate_series(date_bin(make_interval(secs => $2), now(), 'epoch'), \
                             $1 - interval '1 second', make_interval(secs => $2)) b \
         ON CONFLICT DO NOTHING",
    )
    .bind(tick)
    .bind(bucket_secs as f64)
    .execute(pool)
    .await?;
    for sums in ["incremental", "full"] {
        let text = format!(
            "[provider]\nbase_url = \"http://{provider}/otp\"\napi_key = \"{}\"\napi_secret = \"{}\"\n\
             [database]\nurl = \"{db_url}\"\n[source]\nsums = \"{sums}\"\n",
            support::KEY,
            support::SECRET
        );
        let settings = config::from_toml(&text, std::path::Path::new("bench.toml"), &|_| None)?;
        let started = Instant::now();
        let preview = tick::preview(&Db::from(pool.clone()), &settings, tick).await?;
        println!(
            "source ({name}): the next tick, read {sums}: {:.2} s ({} pairs)",
            started.elapsed().as_secs_f64(),
            preview.pairs.len()
        );
    }
    Ok(())
}

/// Runs `run --once` at INFO and returns its log.
async fn run_once(config: &std::path::Path) -> anyhow::Result<String> {
    let mut child = support::binary(config, &["run", "--once"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()?;
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut log)
        .await?;
    anyhow::ensure!(child.wait().await?.success(), "run --once failed:\n{log}");
    Ok(log)
}

/// "planned in 12.3s, 4.5s of it reading the source" from the claim's log line.
fn planning(log: &str) -> Option<(f64, f64)> {
    let line = log
        .lines()
        .find(|l| l.contains("of it reading the source"))?;
    let after = line.split("planned in ").nth(1)?;
    let planned = after.split('s').next()?.parse().ok()?;
    let read = after.split(", ").nth(1)?.split('s').next()?.parse().ok()?;
    Some((planned, read))
}
