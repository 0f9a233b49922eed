//! What the benchmarks share: a database of their own, a stand-in provider that checks every
//! signature (with a latency to set), seeded pairs, and the real binary run as a child process
//! whose peak memory is read from /proc.

#![allow(dead_code)] // each bench target uses part of it

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::routing::post;
use md5::{Digest, Md5};
use sqlx::{Connection, Executor, PgConnection, PgPool};

#[path = "../../tests/it/pgbouncer.rs"]
mod pgbouncer;

use pgbouncer::PgBouncer;

pub const KEY: &str = "benchKey";
pub const SECRET: &str = "benchSecret";

pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `BENCH_POOLER` (`transaction` or `session`): the binary reaches its database through a
/// PgBouncer of the benchmark's own in that mode, with `[database] pooler` set to match.
pub fn pooler_mode() -> Option<String> {
    std::env::var("BENCH_POOLER")
        .ok()
        .filter(|m| !m.is_empty() && m != "none")
}

/// A database of the benchmark's own, dropped by [`BenchDb::drop_now`].
pub struct BenchDb {
    master: String,
    pub name: String,
    /// The server's: the benchmark's own statements.
    pub url: String,
    /// The binary's: `url`, or through the PgBouncer of [`pooler_mode`].
    pub binary_url: String,
    _bouncer: Option<PgBouncer>,
}

impl BenchDb {
    pub async fn create(tag: &str) -> anyhow::Result<Self> {
        let master = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
            "postgres://backfill_test:backfill_test@127.0.0.1:5432/backfill_test".into()
        });
        let name = format!("backfill_bench_{tag}_{}", std::process::id());
        let mut admin = PgConnection::connect(&master).await?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await?;
        let mut url = reqwest::Url::parse(&master)?;
        url.set_path(&format!("/{name}"));
        let bouncer = match pooler_mode() {
            Some(mode) => Some(PgBouncer::start(&mode).await),
            None => None,
        };
        let mut binary_url = url.clone();
        if let Some(b) = &bouncer {
            binary_url.set_port(Some(b.addr.port())).ok();
        }
        let db = Self {
            master,
            name,
            url: url.to_string(),
            binary_url: binary_url.to_string(),
            _bouncer: bouncer,
        };
        let pool = db.pool().await?;
        backfill_reporter::db::migrate(&pool.clone().into()).await?;
        pool.close().await;
        Ok(db)
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPool::connect(&self.url).await?)
    }

    pub async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = PgConnection::connect(&self.master).await?;
        admin
            .execute(format!("DROP DATABASE {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

/// A loopback provider that checks every signature and answers success after `latency`;
/// returns its address and a count of the requests it accepted.
pub async fn provider(latency: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/otp/backfillRate",
        post(move |headers: HeaderMap, body: String| {
            let c = c.clone();
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                let ts = headers
                    .get("timestamp")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let want = hex::encode(Md5::digest(format!("{KEY}{SECRET}{ts}")));
                let ok = headers.get("sign").and_then(|v| v.to_str().ok()) == Some(want.as_str())
                    && serde_json::from_str::<serde_json::Value>(&body).is_ok();
                if ok {
                    c.fetch_add(1, Ordering::Relaxed);
                    r#"{"status":"0","reason":"success"}"#
                } else {
                    r#"{"status":"-1","reason":"bad sign"}"#
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, count)
}

/// What the capacity stand-in does with a request beyond its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excess {
    /// Waits for a free place (a provider that queues).
    Queued,
    /// Answered at once `HTTP 429`, `Retry-After: 1`, with a Spring-style JSON body.
    Throttled,
}

/// What the capacity stand-in counted.
#[derive(Debug, Default)]
pub struct Served {
    pub accepted: AtomicU64,
    pub throttled: AtomicU64,
}

/// A loopback provider that serves `capacity` requests at once, each in `latency`, checks
/// every signature, and queues or throttles the excess.
pub async fn capacity_provider(
    capacity: usize,
    latency: Duration,
    excess: Excess,
) -> (SocketAddr, Arc<Served>) {
    let served = Arc::new(Served::default());
    let places = Arc::new(tokio::sync::Semaphore::new(capacity));
    let s = served.clone();
    let app = axum::Router::new().route(
        "/otp/backfillRate",
        post(move |headers: HeaderMap, body: String| {
            let (s, places) = (s.clone(), places.clone());
            async move {
                let permit = match excess {
                    Excess::Queued => places.acquire_owned().await.ok(),
                    Excess::Throttled => places.try_acquire_owned().ok(),
                };
                let Some(_permit) = permit else {
                    s.throttled.fetch_add(1, Ordering::Relaxed);
                    return axum::response::Response::builder()
                        .status(429)
                        .header("retry-after", "1")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(
                            r#"{"timestamp":"2026-12-05T00:00:00.000+00:00","status":429,"error":"Too Many Requests","path":"/otp/backfillRate"}"#,
                        ))
                        .unwrap();
                };
                tokio::time::sleep(latency).await;
                let ok = signed(&headers) && serde_json::from_str::<serde_json::Value>(&body).is_ok();
                if ok {
                    s.accepted.fetch_add(1, Ordering::Relaxed);
                }
                let answer = if ok {
                    r#"{"status":"0","reason":"success"}"#
                } else {
                    r#"{"status":"-1","reason":"bad sign"}"#
                };
                axum::response::Response::new(axum::body::Body::from(answer))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, served)
}

fn signed(headers: &HeaderMap) -> bool {
    let ts = headers
        .get("timestamp")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let want = hex::encode(Md5::digest(format!("{KEY}{SECRET}{ts}")));
    headers.get("sign").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

/// This year's 1 January, recorded as a missed tick of a yearly schedule (the run of the year
/// before is there): every instance started on that schedule runs it at once as its catch-up,
/// and the one that claims it plans `n` pairs seeded in the hour before.
pub async fn missed_yearly_tick(
    pool: &PgPool,
    n: usize,
) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    use chrono::{Datelike, TimeZone};
    let tick = chrono::Utc
        .with_ymd_and_hms(chrono::Utc::now().year(), 1, 1, 0, 0, 0)
        .unwrap();
    sqlx::query(
        "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, \
             finished_at) \
         VALUES ($1 - interval '1 year', 'schedule', $1, $1, 'old:1', $1)",
    )
    .bind(tick)
    .execute(pool)
    .await?;
    seed_pairs(pool, tick, n).await?;
    Ok(tick)
}

/// `n` pairs (apps × MCCs) with counts in the hour before `at`.
pub async fn seed_pairs(
    pool: &PgPool,
    at: chrono::DateTime<chrono::Utc>,
    n: usize,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) \
         SELECT 'benchApp' || (p / 240), p % 240 + 200, $1 - interval '30 minutes', 100, 37 \
         FROM generate_series(0, $2 - 1) p",
    )
    .bind(at)
    .bind(n as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Writes a config for the binary into `dir`; returns its path. `in_flight`: a fixed number of
/// requests at once (`concurrency` and `max_in_flight`), or `None` for the defaults (adaptive).
pub fn write_config(
    dir: &Path,
    provider: SocketAddr,
    db_url: &str,
    in_flight: Option<usize>,
    cron: &str,
) -> PathBuf {
    let pace = in_flight.map_or_else(String::new, |n| {
        format!("max_in_flight = {n}\nconcurrency = {n}\n")
    });
    let secret = dir.join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[provider]\nbase_url = \"http://{provider}/otp\"\napi_key = \"{KEY}\"\n\
             api_secret_file = \"{}\"\n{pace}\
             [database]\nurl = \"{db_url}\"\nmax_connections = 8\n{pooler}\
             [schedule]\ncron = \"{cron}\"\ntimezone = \"UTC\"\n",
            secret.display(),
            pooler = pooler_mode()
                .map(|m| format!("pooler = \"{m}\"\n"))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    // It holds the database URL: owner-only, as the daemon asks of a config with a password.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// The binary, with logging kept to warnings.
pub fn binary(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_backfill-reporter"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DATABASE_URL")
        .env(
            "RUST_LOG",
            std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// Runs the command to its end; returns its wall time and peak resident memory (VmHWM, read
/// from /proc every 20 ms until it exits).
pub async fn run_measured(mut cmd: tokio::process::Command) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let status_path = format!("/proc/{}/status", child.id().expect("running"));
    let mut peak_kb = 0;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                if std::env::var_os("BENCH_TRACE_RSS").is_some() && kb > peak_kb + 2048 {
                    eprintln!(
                        "rss peak {kb} kB at {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                peak_kb = peak_kb.max(kb);
            }
        }
        tokio::select! {
            status = child.wait() => {
                anyhow::ensure!(status?.success(), "the binary failed");
                return Ok((started.elapsed(), peak_kb));
            }
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// The span of the latest run in the database: from its claim until it closed.
pub async fn run_span(pool: &PgPool) -> anyhow::Result<(Duration, i64)> {
    let (ms, succeeded): (f64, i32) = sqlx::query_as(
        "SELECT extract(epoch FROM finished_at - started_at)::float8 * 1000, succeeded \
         FROM report_runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    Ok((Duration::from_secs_f64(ms / 1000.0), i64::from(succeeded)))
}
