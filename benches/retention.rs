//! Retention on a large table: `report_submissions` filled with tens of millions of rows over
//! 120 days (10-minute ticks), then pruned to `database.keep` = 90 days while a queue workload
//! (enqueue, claim, record) runs beside it. Prints the delete rate, the longest batch, and the
//! longest queue statement during the prune, which shows that no long lock is held.
//!
//! `cargo bench --bench retention`; `BENCH_RETENTION_ROWS` (default 20,000,000) sets the size.
//! Takes several minutes and a few GB of disk in a database of its own, dropped at the end.

// Benchmarks arrange and inspect the database with sqlx's own types; the product may not
// (clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backfill_reporter::queue::retention;
use chrono::Utc;
use sqlx::PgPool;
use support::{env_or, BenchDb};

const TICKS_PER_DAY: i64 = 144;
const DAYS: i64 = 120;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = env_or("BENCH_RETENTION_ROWS", 20_000_000) as i64;
    let db = BenchDb::create("retention").await?;
    let result = run(&db, rows).await;
    db.drop_now().await?;
    result
}

async fn run(db: &BenchDb, rows: i64) -> anyhow::Result<()> {
    let pool = db.pool().await?;
    load(&pool, rows).await?;
    prune_beside_load(&pool).await
}

/// `rows` submissions over 120 days of 10-minute ticks, as a daemon would have left them.
async fn load(pool: &PgPool, rows: i64) -> anyhow::Result<()> {
    let per_tick = (rows / (TICKS_PER_DAY * DAYS)).max(1);
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, \
             finished_at, pairs, succeeded) \
         SELECT t, 'schedule', t - interval '1 day', t, 'bench:1', t, $2, $2 \
         FROM generate_series(now() - make_interval(days => $1::int), now(), interval '10 minutes') t",
    )
    .bind(DAYS as i32)
    .bind(per_tick as i32)
    .execute(pool)
    .await?;
    // Day by day, so that one statement stays reasonable.
    for day in 0..=DAYS {
        sqlx::query(
            "INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
                 window_end, backfill_number, cardinal_number, rate, callback_time, state, attempts, \
                 provider_status, http_status, first_attempt_at, finished_at) \
             SELECT r.id, 'benchApp' || (g % 1000), (200 + g / 1000)::text, r.scheduled_for, \
                 r.window_start, r.window_end, 37, 100, 37.00, 'x', 'succeeded', 1, '0', 200, \
                 r.scheduled_for, r.scheduled_for \
             FROM report_runs r, generate_series(0, $2 - 1) g \
             WHERE r.scheduled_for >= now() - make_interval(days => $1::int + 1) \
               AND r.scheduled_for < now() - make_interval(days => $1::int)",
        )
        .bind((DAYS - day) as i32)
        .bind(per_tick)
        .execute(pool)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE report_submissions")
        .execute(pool)
        .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM report_submissions")
        .fetch_one(pool)
        .await?;
    let size: String =
        sqlx::query_scalar("SELECT pg_size_pretty(pg_total_relation_size('report_submissions'))")
            .fetch_one(pool)
            .await?;
    println!(
        "retention: loaded {total} submissions ({per_tick} per 10-minute tick over {DAYS} days, {size} with indexes) in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prunes to 90 days while [`queue_load`] runs beside it, timing every statement.
async fn prune_beside_load(pool: &PgPool) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(queue_load(pool.clone(), stop.clone()));
    let cutoff = retention::cutoff(Utc::now(), Duration::from_secs(90 * 86_400));
    let db = backfill_reporter::db::Db::from(pool.clone());
    let started = Instant::now();
    let (mut deleted, mut batches, mut longest) = (0u64, 0u64, Duration::ZERO);
    let mut timed = |t: Instant| {
        longest = longest.max(t.elapsed());
        batches += 1;
    };
    loop {
        let runs = retention::old_runs(&db, cutoff).await?;
        if runs.is_empty() {
            break;
        }
        for run_id in runs {
            loop {
                let t = Instant::now();
                let n = retention::delete_submissions(&db, run_id).await?;
                timed(t);
                deleted += n;
                if n < retention::BATCH as u64 {
                    break;
                }
            }
            let t = Instant::now();
            retention::delete_run(&db, run_id).await?;
            timed(t);
        }
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (ops, slowest) = load.await??;
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM report_submissions")
        .fetch_one(pool)
        .await?;
    println!(
        "retention: pruned {deleted} submissions older than 90 days in {:.1} s ({:.0} rows/s, {batches} statements of at most {} rows, longest {:.0} ms); {left} rows left",
        took.as_secs_f64(),
        deleted as f64 / took.as_secs_f64(),
        retention::BATCH,
        longest.as_secs_f64() * 1000.0
    );
    println!(
        "retention: meanwhile {ops} queue statements (enqueue, claim, record) ran beside it; the slowest took {:.0} ms",
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Enqueues, claims and records small batches in a loop, as senders do, timing each statement.
async fn queue_load(pool: PgPool, stop: Arc<AtomicBool>) -> anyhow::Result<(u64, Duration)> {
    let (mut ops, mut slowest, mut tick) = (0u64, Duration::ZERO, 0i64);
    while !stop.load(Ordering::Relaxed) {
        tick += 1;
        let steps = [
            "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance) \
             VALUES (now() + make_interval(secs => $1), 'schedule', now(), now(), 'load:1')",
            "INSERT INTO report_submissions (run_id, app_id, mcc, scheduled_for, window_start, \
                 window_end, callback_time, state, next_attempt_at, deadline) \
             SELECT r.id, 'loadApp' || g, '460', r.scheduled_for, now(), now(), 'x', 'pending', \
                 now(), now() + interval '1 hour' \
             FROM report_runs r, generate_series(1, 50) g \
             WHERE r.scheduled_for = now() + make_interval(secs => $1) AND r.instance = 'load:1'",
            "WITH due AS (SELECT id FROM report_submissions WHERE state = 'pending' \
                 AND next_attempt_at <= now() ORDER BY next_attempt_at, id LIMIT 50 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE report_submissions s SET lease_owner = 'load', \
                 lease_expires_at = now() + interval '20 seconds' \
             FROM due WHERE s.id = due.id AND $1 IS NOT NULL",
            "UPDATE report_submissions SET state = 'succeeded', attempts = 1, finished_at = now(), \
                 lease_owner = NULL WHERE lease_owner = 'load' AND state = 'pending' \
                 AND $1 IS NOT NULL",
        ];
        for sql in steps {
            let t = Instant::now();
            sqlx::query(sql).bind(tick as f64).execute(&pool).await?;
            slowest = slowest.max(t.elapsed());
            ops += 1;
        }
    }
    Ok((ops, slowest))
}
