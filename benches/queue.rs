//! The queue at scale, through the real binary (release build) against a loopback stand-in
//! provider that checks every signature. Prints figures; asserts only that every pair arrived.
//!
//! - memory: peak RSS of `run --once` at 10,000, 100,000 and 240,000 pairs (zero latency),
//!   and the submissions recorded per second;
//! - latency: 10,000 pairs × 50 ms × 32 in flight against the ideal 15.6 s;
//! - instances: one, two and four `run` instances sharing one tick of 4,000 pairs against a
//!   50 ms provider, 8 in flight each.
//!
//! `cargo bench --bench queue` (or `bench/run`); `BENCH_ONLY=memory|latency|instances` picks
//! one part, `BENCH_PAIRS=10000,100000,240000` the memory sizes, `BENCH_POOLER=transaction`
//! (or `session`) puts a PgBouncer of its own in that mode between the binary and the
//! database, with `[database] pooler` set to match. Needs the database of
//! `scripts/test-db` or DATABASE_URL; each part works in a database of its own, dropped after.

// Benchmarks arrange and inspect the database with sqlx's own types; the product may not
// (clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use chrono::Utc;
use support::{
    binary, missed_yearly_tick, provider, run_measured, run_span, seed_pairs, write_config, BenchDb,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if let Some(mode) = support::pooler_mode() {
        println!("through PgBouncer (pool_mode = {mode}), [database] pooler = \"{mode}\"");
    }
    if only.is_empty() || only == "memory" {
        memory().await?;
    }
    if only.is_empty() || only == "latency" {
        latency().await?;
    }
    if only.is_empty() || only == "instances" {
        instances().await?;
    }
    Ok(())
}

async fn memory() -> anyhow::Result<()> {
    let sizes = std::env::var("BENCH_PAIRS").unwrap_or_else(|_| "10000,100000,240000".into());
    for pairs in sizes.split(',').map(|s| s.trim().parse::<usize>()) {
        let pairs = pairs?;
        let db = BenchDb::create("mem").await?;
        let pool = db.pool().await?;
        seed_pairs(&pool, Utc::now(), pairs).await?;
        let (addr, accepted) = provider(Duration::ZERO).await;
        let dir = tempfile::tempdir()?;
        let in_flight = support::env_or("BENCH_IN_FLIGHT", 32);
        let config = write_config(
            dir.path(),
            addr,
            &db.binary_url,
            Some(in_flight),
            "0 0 1 1 *",
        );
        let (wall, peak_kb) = run_measured(binary(&config, &["run", "--once"])).await?;
        let (span, succeeded) = run_span(&pool).await?;
        anyhow::ensure!(
            succeeded as usize == pairs,
            "{succeeded} of {pairs} succeeded"
        );
        anyhow::ensure!(accepted.load(std::sync::atomic::Ordering::Relaxed) as usize == pairs);
        println!(
            "memory: {pairs:>7} pairs: peak RSS {:.1} MB; run --once {:.2} s; {:.0} submissions recorded/s (claim to close {:.2} s, zero latency, {in_flight} in flight)",
            peak_kb as f64 / 1024.0,
            wall.as_secs_f64(),
            pairs as f64 / span.as_secs_f64(),
            span.as_secs_f64()
        );
        pool.close().await;
        db.drop_now().await?;
    }
    Ok(())
}

async fn latency() -> anyhow::Result<()> {
    let (pairs, in_flight, latency) = (10_000usize, 32usize, Duration::from_millis(50));
    let db = BenchDb::create("lat").await?;
    let pool = db.pool().await?;
    seed_pairs(&pool, Utc::now(), pairs).await?;
    let (addr, _) = provider(latency).await;
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        addr,
        &db.binary_url,
        Some(in_flight),
        "0 0 1 1 *",
    );
    let (wall, _) = run_measured(binary(&config, &["run", "--once"])).await?;
    let (span, succeeded) = run_span(&pool).await?;
    anyhow::ensure!(succeeded as usize == pairs);
    let ideal = latency.as_secs_f64() * pairs as f64 / in_flight as f64;
    println!(
        "latency: {pairs} pairs × {} ms × {in_flight} in flight: run --once {:.2} s ({:.3}× the ideal {ideal:.2} s); claim to close {:.2} s ({:.3}×)",
        latency.as_millis(),
        wall.as_secs_f64(),
        wall.as_secs_f64() / ideal,
        span.as_secs_f64(),
        span.as_secs_f64() / ideal
    );
    pool.close().await;
    db.drop_now().await
}

async fn instances() -> anyhow::Result<()> {
    let (pairs, in_flight, latency) = (4_000usize, 8usize, Duration::from_millis(50));
    let mut one = None;
    for k in [1usize, 2, 4] {
        let db = BenchDb::create("inst").await?;
        let pool = db.pool().await?;
        let tick = missed_yearly_tick(&pool, pairs).await?;
        let (addr, accepted) = provider(latency).await;
        let dir = tempfile::tempdir()?;
        let config = write_config(
            dir.path(),
            addr,
            &db.binary_url,
            Some(in_flight),
            "0 0 1 1 *",
        );
        let mut daemons = Vec::new();
        for _ in 0..k {
            daemons.push(binary(&config, &["run"]).spawn()?);
        }
        loop {
            let done: bool = sqlx::query_scalar(
                "SELECT count(*) = 1 FROM report_runs WHERE scheduled_for = $1 AND finished_at IS NOT NULL",
            )
            .bind(tick)
            .fetch_one(&pool)
            .await?;
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (span, succeeded) = run_span(&pool).await?;
        for mut d in daemons {
            let _ = d.kill().await;
        }
        anyhow::ensure!(succeeded as usize == pairs, "{succeeded} of {pairs}");
        anyhow::ensure!(accepted.load(std::sync::atomic::Ordering::Relaxed) as usize == pairs);
        let rate = pairs as f64 / span.as_secs_f64();
        let base = *one.get_or_insert(rate);
        println!(
            "instances: {k}: {pairs} pairs in {:.2} s = {rate:.0} pairs/s ({:.2}× one instance; 50 ms provider, {in_flight} in flight each)",
            span.as_secs_f64(),
            rate / base
        );
        pool.close().await;
        db.drop_now().await?;
    }
    Ok(())
}
