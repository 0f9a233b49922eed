//! The provider's pace: a tick through the real binary (release build), with the default
//! configuration (adaptive concurrency, `max_in_flight` at its default ceiling), against a
//! loopback stand-in that serves N requests at once in L each and queues the excess, or answers
//! it `HTTP 429` with `Retry-After: 1` and a Spring-style JSON body. Prints the time against the
//! capacity-bound ideal (pairs ÷ N × L), the share of requests answered 429, and the failures.
//!
//! - 2,000 pairs, N = 32, L = 100 ms (ideal 6.25 s): queued and throttled, one instance and two;
//! - 240,000 pairs, N = 256, L = 100 ms (ideal 93.75 s): one instance (`BENCH_ONLY=big`).
//!
//! `cargo bench --bench pace` (or `bench/run`); `BENCH_ONLY=small|big` picks one part. Needs the
//! database of `scripts/test-db` or DATABASE_URL; each run works in a database of its own.

// The benchmark measures from outside: its own connections, not the daemon's handle.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use support::{
    binary, capacity_provider, missed_yearly_tick, run_span, write_config, BenchDb, Excess,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let latency = Duration::from_millis(100);
    if only.is_empty() || only == "small" {
        for excess in [Excess::Queued, Excess::Throttled] {
            for instances in [1, 2] {
                tick(2_000, 32, latency, excess, instances).await?;
            }
        }
    }
    if only.is_empty() || only == "big" {
        tick(240_000, 256, latency, Excess::Queued, 1).await?;
    }
    Ok(())
}

/// One tick of `pairs` against the stand-in, sent by `instances` daemons that start together on
/// a missed yearly tick (one claims it, all send).
async fn tick(
    pairs: usize,
    capacity: usize,
    latency: Duration,
    excess: Excess,
    instances: usize,
) -> anyhow::Result<()> {
    let db = BenchDb::create("pace").await?;
    let pool = db.pool().await?;
    let tick = missed_yearly_tick(&pool, pairs).await?;
    let (addr, served) = capacity_provider(capacity, latency, excess).await;
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), addr, &db.binary_url, None, "0 0 1 1 *");
    let mut daemons = Vec::new();
    for _ in 0..instances {
        daemons.push(binary(&config, &["run"]).spawn()?);
    }
    wait_closed(&pool, tick).await?;
    let (span, succeeded) = run_span(&pool).await?;
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM report_submissions WHERE state <> 'succeeded'")
            .fetch_one(&pool)
            .await?;
    for mut d in daemons {
        let _ = d.kill().await;
    }
    let (accepted, throttled) = (
        served.accepted.load(Ordering::Relaxed),
        served.throttled.load(Ordering::Relaxed),
    );
    let ideal = latency.as_secs_f64() * pairs as f64 / capacity as f64;
    println!(
        "pace: {excess:?} excess, {instances} instance{}: {pairs} pairs in {:.2} s against the ideal {ideal:.2} s ({:.2}x); {succeeded} succeeded, {failed} not; {throttled} 429s ({:.1}% of {} requests)",
        if instances == 1 { "" } else { "s" },
        span.as_secs_f64(),
        span.as_secs_f64() / ideal,
        100.0 * throttled as f64 / (accepted + throttled).max(1) as f64,
        accepted + throttled
    );
    pool.close().await;
    db.drop_now().await
}

async fn wait_closed(pool: &sqlx::PgPool, tick: chrono::DateTime<Utc>) -> anyhow::Result<()> {
    loop {
        let done: bool = sqlx::query_scalar(
            "SELECT count(*) = 1 FROM report_runs WHERE scheduled_for = $1 AND finished_at IS NOT NULL",
        )
        .bind(tick)
        .fetch_one(pool)
        .await?;
        if done {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
