//! `/metrics` and `/healthz` of a running daemon, scraped over HTTP as Prometheus would.

use std::time::Duration;

use sqlx::PgPool;

use crate::alarm::append_config;
use crate::helpers::{eventually, Daemon, Stopped, TestAccount, TestApp, TestConfig};

/// `http://127.0.0.1:PORT`, from the daemon's "metrics on …" line (it binds port 0).
async fn endpoint(daemon: &Daemon) -> String {
    daemon
        .wait_log("metrics on http://", Duration::from_secs(15))
        .await;
    let log = daemon.log();
    let at = log.find("metrics on http://").unwrap() + "metrics on ".len();
    let url = log[at..].split_whitespace().next().unwrap();
    url.trim_end_matches(',')
        .trim_end_matches("/metrics")
        .to_owned()
}

/// An endpoint's answer.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(url: &str) -> Answer {
    let r = reqwest::get(url).await.expect("the endpoint answers");
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: r.text().await.unwrap(),
    }
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Scrapes `base` until a scheduled cycle with `result` is counted.
async fn wait_for_cycle(base: &str, result: &str) {
    let series =
        format!("backfill_reporter_cycles_total{{trigger=\"schedule\",result=\"{result}\"}}");
    eventually(
        Duration::from_secs(20),
        "the cycle in the metrics",
        || async {
            let body = get(&format!("{base}/metrics")).await.body;
            sample(&body, &series).is_some()
        },
    )
    .await;
}

/// A schedule whose only tick in the next day is a few seconds from now, so that the counters
/// hold still once its cycle is done.
fn one_tick_soon() -> TestConfig {
    use chrono::Timelike;
    let t = chrono::Utc::now() + chrono::Duration::seconds(8);
    TestConfig {
        cron: format!("{} {} {} * * *", t.second(), t.minute(), t.hour()),
        timezone: "UTC".into(),
        ..TestConfig::default()
    }
}

#[sqlx::test]
async fn a_scrape_after_a_cycle_counts_the_cycle_its_submissions_and_their_latency(pool: PgPool) {
    let app = TestApp::with(pool, one_tick_soon()).await;
    append_config(&app, "[metrics]\nlisten = \"127.0.0.1:0\"");
    let recent = chrono::Utc::now() - chrono::Duration::minutes(30);
    app.seed("metricsA", 460, recent, 10, 4).await;
    app.seed("metricsB", 510, recent, 10, 9).await;
    app.seed("metricsC", 404, recent, 0, 0).await; // skipped: nothing sent

    let daemon = Daemon::start(&app);
    let base = endpoint(&daemon).await;
    wait_for_cycle(&base, "ok").await;
    let metrics = get(&format!("{base}/metrics")).await;
    let health = get(&format!("{base}/healthz")).await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    let body = &metrics.body;
    let value = |series: &str| sample(body, series).unwrap_or_else(|| panic!("{series}:\n{body}"));
    assert_eq!(
        value(r#"backfill_reporter_cycles_total{trigger="schedule",result="ok"}"#),
        1.0
    );
    assert_eq!(
        value(r#"backfill_reporter_submissions_total{state="succeeded",provider_status="0"}"#),
        2.0
    );
    assert_eq!(
        value(r#"backfill_reporter_submissions_total{state="skipped",provider_status="none"}"#),
        1.0
    );
    assert_eq!(
        value(r#"backfill_reporter_provider_request_duration_seconds_count{outcome="success"}"#),
        2.0
    );
    assert_eq!(
        value(r#"backfill_reporter_cycle_duration_seconds_count{trigger="schedule"}"#),
        1.0
    );
    let last = value("backfill_reporter_last_success_timestamp_seconds");
    assert!(
        (chrono::Utc::now().timestamp() as f64 - last).abs() < 60.0,
        "{last}"
    );
    assert_eq!(value("backfill_reporter_pending_submissions"), 0.0);
    assert_eq!(value("backfill_reporter_alarms_firing"), 0.0);
    assert_eq!(
        value(&format!(
            "backfill_reporter_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    assert_eq!(
        app.submissions_in("succeeded").await,
        2,
        "the database agrees"
    );
    assert_eq!(health.status, 200, "{}", health.body);
}

#[sqlx::test]
async fn with_two_accounts_the_metrics_carry_the_account_and_serve_what_the_alert_rules_read(
    pool: PgPool,
) {
    let config = TestConfig {
        accounts: TestAccount::two(&["shopApp1", "shopApp2"], &["bankApp1"]),
        ..one_tick_soon()
    };
    let app = TestApp::with(pool, config).await;
    // Every bank request is refused -1: a wrong secret.
    app.write_account_secret("bank", "not-the-bank-secret");
    append_config(&app, "[metrics]\nlisten = \"127.0.0.1:0\"");
    for id in ["shopApp1", "shopApp2", "bankApp1"] {
        app.seed_recent(id).await;
    }

    let daemon = Daemon::start(&app);
    let base = endpoint(&daemon).await;
    wait_for_cycle(&base, "failed_pairs").await;
    let body = get(&format!("{base}/metrics")).await.body;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let value = |series: &str| sample(&body, series).unwrap_or_else(|| panic!("{series}:\n{body}"));
    let submissions = |state: &str, status: &str, account: &str| {
        value(&format!(
            "backfill_reporter_submissions_total{{state=\"{state}\",provider_status=\"{status}\",account=\"{account}\"}}"
        ))
    };
    assert_eq!(submissions("succeeded", "0", "shop"), 2.0);
    assert_eq!(submissions("failed", "-1", "bank"), 1.0);
    assert_eq!(submissions("failed", "-1", "shop"), 0.0, "declared at zero");
    for account in ["shop", "bank"] {
        assert_eq!(
            value(&format!(
                "backfill_reporter_breaker_open{{account=\"{account}\"}}"
            )),
            0.0
        );
        assert!(
            value(&format!(
                "backfill_reporter_concurrency_limit{{account=\"{account}\"}}"
            )) >= 1.0
        );
    }
    assert_eq!(
        value("backfill_reporter_schedule_interval_seconds"),
        86_400.0,
        "a daily schedule"
    );
    let started = value("backfill_reporter_start_time_seconds");
    assert!(
        (chrono::Utc::now().timestamp() as f64 - started).abs() < 120.0,
        "{started}"
    );
    for name in crate::prometheus::metrics_the_rules_read() {
        assert!(
            body.lines().any(|l| l.starts_with(&name)),
            "the rules read {name}, which the daemon does not serve:\n{body}"
        );
    }
}

#[sqlx::test]
async fn healthz_is_503_while_cycles_fail_and_200_again_once_one_succeeds(pool: PgPool) {
    let query = "SELECT app_id, mcc, backfilled AS backfill_number, sent AS cardinal_number \
                 FROM probe_counts WHERE at >= $1 AND at < $2";
    let app = TestApp::with(
        pool,
        TestConfig {
            query: Some(query.into()),
            ..TestConfig::every_two_seconds()
        },
    )
    .await;
    append_config(&app, "[metrics]\nlisten = \"127.0.0.1:0\"");
    let create = "CREATE TABLE probe_counts (app_id text, mcc text, at timestamptz, \
                  sent bigint, backfilled bigint)";
    sqlx::query(create).execute(&app.pool).await.unwrap();

    let daemon = Daemon::start(&app);
    let base = endpoint(&daemon).await;
    let healthz = format!("{base}/healthz");
    eventually(Duration::from_secs(15), "healthy once armed", || async {
        get(&healthz).await.status == 200
    })
    .await;

    // The source breaks: every cycle now fails before recording anything.
    sqlx::query("DROP TABLE probe_counts")
        .execute(&app.pool)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(15),
        "503 after a failed cycle",
        || async { get(&healthz).await.status == 503 },
    )
    .await;
    let why = get(&healthz).await.body;
    let metrics = get(&format!("{base}/metrics")).await.body;

    sqlx::query(create).execute(&app.pool).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "200 after a good cycle",
        || async { get(&healthz).await.status == 200 },
    )
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    // The actual cause, not a guess at it.
    assert!(why.contains("last claim of a tick failed"), "{why}");
    assert!(why.contains("\"probe_counts\" does not exist"), "{why}");
    assert!(
        sample(
            &metrics,
            r#"backfill_reporter_cycles_total{trigger="schedule",result="error"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
}

#[sqlx::test]
async fn without_metrics_listen_no_endpoint_is_opened(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::every_two_seconds()).await;

    let daemon = Daemon::start(&app);
    daemon.wait_log("started", Duration::from_secs(15)).await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("metrics on"), "{log}");
}

/// Connections the server side holds open on 127.0.0.1:`port` (TCP state ESTABLISHED with that
/// local port), from /proc/net/tcp: what the daemon's file descriptors pay for. The file is not
/// read atomically (a socket that moves meanwhile can be listed twice), so peers are counted once.
fn held_open(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    let peers: std::collections::HashSet<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().take(4).collect();
            (fields.len() == 4 && fields[1] == local && fields[3] == "01").then(|| fields[2])
        })
        .collect();
    peers.len()
}

#[sqlx::test]
async fn half_requests_are_closed_by_the_header_timeout_and_never_held_beyond_the_cap(
    pool: PgPool,
) {
    use backfill_reporter::views::metrics::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: usize = 200;
    let app = TestApp::new(pool).await;
    append_config(&app, "[metrics]\nlisten = \"127.0.0.1:0\"");
    let daemon = Daemon::start(&app);
    let base = endpoint(&daemon).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    // Slowloris: half a request line on each connection, then silence.
    let started = tokio::time::Instant::now();
    let mut watchers = Vec::new();
    for _ in 0..CLIENTS {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(b"GET /metr").await.unwrap();
        watchers.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            started.elapsed()
        }));
    }
    let closed = || watchers.iter().filter(|w| w.is_finished()).count();
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(3);
    eventually(limit, "the connections over the cap closed", || {
        let closed = closed();
        async move { closed >= CLIENTS - MAX_CONNECTIONS }
    })
    .await;
    // Until the last is closed, count what the daemon holds (the kernel's accept queue, which
    // costs the daemon nothing, is empty by now).
    let peak = AtomicUsize::new(0);
    eventually(Duration::from_secs(20), "every half request closed", || {
        let h = held_open(port);
        peak.fetch_max(h, Ordering::Relaxed);
        let closed = closed();
        async move { closed == CLIENTS }
    })
    .await;
    let mut closed_after = Vec::new();
    for w in watchers {
        closed_after.push(w.await.unwrap());
    }
    let scrape = get(&format!("{base}/metrics")).await;
    let Stopped { code, log } = daemon.stop().await;

    let peak = peak.into_inner();
    let at_once = closed_after
        .iter()
        .filter(|d| **d < HEADER_READ_TIMEOUT)
        .count();
    let last = closed_after.iter().max().unwrap();
    println!(
        "{CLIENTS} half requests: at most {peak} held open by the daemon (cap {MAX_CONNECTIONS}), \
         {at_once} closed at once, the last after {:.1}s",
        last.as_secs_f64()
    );
    assert_eq!(code, 0, "{log}");
    assert!(peak <= MAX_CONNECTIONS, "{peak} connections held open");
    assert!(
        at_once >= CLIENTS - MAX_CONNECTIONS,
        "{at_once} closed over the cap"
    );
    assert!(
        *last < HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "the last half request lived {last:?}"
    );
    assert_eq!(scrape.status, 200, "the endpoint still serves a scrape");
}

#[sqlx::test]
async fn a_metrics_address_beyond_loopback_is_warned_about_once(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::every_two_seconds()).await;
    append_config(&app, "[metrics]\nlisten = \"0.0.0.0:0\"");

    let daemon = Daemon::start(&app);
    endpoint(&daemon).await;
    daemon.wait_log("cycle for", Duration::from_secs(15)).await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is not a loopback address"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("WARN"), "{log}");
    assert!(warnings[0].contains("no authentication"), "{log}");
}
