//! The route-health alarm: rates judged against their pair's baseline, the verdict recorded with
//! the submission, one WARN line, one webhook POST per pair until it recovers, and a webhook
//! that fails never holding up a report.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Router;
use backfill_reporter::domain::run::Trigger;
use backfill_reporter::queue::tick;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::helpers::{eventually, utc, Output, TestApp, TestConfig};

/// The first tick; tick `n` is `n` hours later. Windows are one hour, so each tick reports the
/// counts seeded just before it.
const FIRST_TICK: &str = "2026-02-01T00:00:00+08:00";

fn tick(n: i64) -> DateTime<Utc> {
    utc(FIRST_TICK) + chrono::Duration::hours(n)
}

/// How a test webhook answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Ok,
    Fail,
    Hang,
    /// This 3xx, with this `Location`.
    Redirect(u16, String),
}

/// One request a [`Webhook`] got, whatever its method or path.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: axum::http::HeaderMap,
    /// The body as JSON, `Null` when it is none.
    pub body: Value,
}

/// A local HTTP server standing in for a chat webhook: records every request it gets (any
/// method, any path, so that a redirected GET shows too) and answers as told.
pub struct Webhook {
    pub url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    answer: Arc<Mutex<Answer>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = (Arc<Mutex<Vec<Request>>>, Arc<Mutex<Answer>>);

async fn receive(
    State((requests, answer)): State<Shared>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    requests.lock().unwrap().push(Request {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    });
    let answer = answer.lock().unwrap().clone();
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Fail => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Answer::Redirect(http, to) => (
            StatusCode::from_u16(http).unwrap(),
            [(axum::http::header::LOCATION, to)],
        )
            .into_response(),
    }
}

impl Webhook {
    pub async fn start(answer: Answer) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(receive)
            .with_state((requests.clone(), answer.clone()));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hooks/T000/B000/secret-token"),
            requests,
            answer,
            task,
        }
    }

    /// Every request, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The JSON bodies POSTed to the hook's URL.
    pub fn bodies(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.path == "/hooks/T000/B000/secret-token")
            .map(|r| r.body)
            .collect()
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// A TestApp with one-hour windows and the given `[alarm]` lines appended to its config.
pub async fn app_with_alarm(pool: PgPool, alarm: &str) -> TestApp {
    let app = TestApp::with(
        pool,
        TestConfig {
            window: "1h".into(),
            ..TestConfig::default()
        },
    )
    .await;
    append_config(&app, &format!("[alarm]\n{alarm}"));
    app
}

pub fn append_config(app: &TestApp, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&app.config_path)
        .unwrap();
    writeln!(f, "{text}").unwrap();
}

/// Seeds `backfilled` of `sent` for each (app, mcc) in the window of tick `n`, then runs it.
pub async fn run_tick(
    app: &TestApp,
    n: i64,
    pairs: &[(&str, i32, i64, i64)],
) -> backfill_reporter::domain::run::RunSummary {
    for &(a, mcc, sent, backfilled) in pairs {
        app.seed(
            a,
            mcc,
            tick(n) - chrono::Duration::minutes(5),
            sent,
            backfilled,
        )
        .await;
    }
    tick::run(
        &app.ctx(),
        tick(n),
        Trigger::Schedule,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
    .expect("the tick was not claimed before")
}

/// What the alarm made of a submission: the baseline it was judged against (as text) and
/// whether it fired; both `None` when it was not judged.
#[derive(Debug, PartialEq, Eq, sqlx::FromRow)]
struct Verdict {
    baseline: Option<String>,
    alarm: Option<bool>,
}

impl Verdict {
    const NOT_JUDGED: Verdict = Verdict {
        baseline: None,
        alarm: None,
    };

    fn judged(baseline: &str, alarm: bool) -> Self {
        Self {
            baseline: Some(baseline.into()),
            alarm: Some(alarm),
        }
    }
}

/// The verdict on the pair's submission at tick `n`.
async fn verdict(app: &TestApp, mcc: &str, n: i64) -> Verdict {
    sqlx::query_as(
        "SELECT baseline::text AS baseline, alarm FROM report_submissions WHERE mcc = $1 AND scheduled_for = $2",
    )
    .bind(mcc)
    .bind(tick(n))
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// A row of `route_alarms`: a pair whose alarm is firing, with its rate and baseline as text.
#[derive(Debug, PartialEq, Eq, sqlx::FromRow)]
struct Firing {
    app_id: String,
    mcc: String,
    rate: String,
    baseline: String,
}

async fn firing(app: &TestApp) -> Vec<Firing> {
    sqlx::query_as(
        "SELECT app_id, mcc, rate::text AS rate, baseline::text AS baseline FROM route_alarms ORDER BY app_id, mcc",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

const HEALTHY: [(&str, i32, i64, i64); 2] = [("demoShop", 460, 40, 32), ("demoShop", 510, 50, 30)];
const COLLAPSED: [(&str, i32, i64, i64); 2] = [("demoShop", 460, 40, 4), ("demoShop", 510, 50, 30)];

/// Ticks 0 to 3 at the HEALTHY rates: a baseline of four samples for both pairs.
async fn healthy_history(app: &TestApp) {
    for n in 0..4 {
        run_tick(app, n, &HEALTHY).await;
    }
}

/// An app whose alarm takes four samples and posts to `hook`, after a healthy history.
async fn app_with_webhook(pool: PgPool, hook: &Webhook) -> TestApp {
    let app = app_with_alarm(
        pool,
        &format!("baseline_samples = 4\nwebhook_url = {:?}", hook.url),
    )
    .await;
    healthy_history(&app).await;
    app
}

/// How many firing alarms the webhook has taken.
async fn alerts_sent(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM route_alarms WHERE notified_at IS NOT NULL")
        .await
}

#[sqlx::test]
async fn a_rate_far_below_the_median_of_its_recent_reports_fires_and_is_recorded(pool: PgPool) {
    let app = app_with_alarm(pool, "baseline_samples = 4").await;
    // 460: 80% four times; 510: 60%.
    healthy_history(&app).await;
    assert_eq!(
        verdict(&app, "460", 0).await,
        Verdict::NOT_JUDGED,
        "no baseline yet"
    );
    assert_eq!(
        verdict(&app, "460", 2).await,
        Verdict::judged("80.00", false),
        "two earlier reports are enough for a baseline of 4 samples"
    );

    let report = run_tick(&app, 4, &COLLAPSED).await;

    assert!(report.all_good(), "the alarm does not change the report");
    assert_eq!(
        verdict(&app, "460", 4).await,
        Verdict::judged("80.00", true)
    );
    assert_eq!(
        verdict(&app, "510", 4).await,
        Verdict::judged("60.00", false)
    );
    assert_eq!(
        firing(&app).await,
        vec![Firing {
            app_id: "demoShop".into(),
            mcc: "460".into(),
            rate: "10.00".into(),
            baseline: "80.00".into()
        }]
    );
    let sent: Vec<String> = app
        .provider
        .backfill_bodies()
        .iter()
        .filter(|b| b["mcc"] == "460")
        .map(|b| b["backfillNow"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        sent,
        ["80", "80", "80", "80", "10"],
        "the collapsed rate is still reported"
    );
}

#[sqlx::test]
async fn a_drop_of_exactly_drop_points_does_not_fire_and_a_dropped_rate_stays_out_of_the_baseline(
    pool: PgPool,
) {
    let app = app_with_alarm(pool, "baseline_samples = 3\ndrop_points = 30").await;
    for n in 0..3 {
        run_tick(&app, n, &[("demoShop", 460, 40, 32)]).await; // 80%
    }
    run_tick(&app, 3, &[("demoShop", 460, 40, 20)]).await; // 50%: exactly 30 points
    assert_eq!(verdict(&app, "460", 3).await.alarm, Some(false));

    run_tick(&app, 4, &[("demoShop", 460, 40, 8)]).await; // 20%: fires
    run_tick(&app, 5, &[("demoShop", 460, 40, 8)]).await;
    run_tick(&app, 6, &[("demoShop", 460, 40, 8)]).await;

    // The baseline of tick 6 is the median of 80, 50 and 80 (ticks 2, 3 and 1): the dropped
    // reports of ticks 4 and 5 are left out, so a route that stays broken keeps firing.
    assert_eq!(
        verdict(&app, "460", 6).await,
        Verdict::judged("80.00", true)
    );
}

#[sqlx::test]
async fn reports_of_fewer_than_min_cardinal_codes_are_not_baseline_samples(pool: PgPool) {
    let app = app_with_alarm(pool, "baseline_samples = 2").await;
    run_tick(&app, 0, &[("demoShop", 460, 10, 1)]).await; // 10% of 10 codes, sent
                                                          // The operator raises source.min_cardinal: the 10-code report is no sample any more.
    app.write_config(&TestConfig {
        window: "1h".into(),
        min_cardinal: 20,
        ..TestConfig::default()
    });
    append_config(&app, "[alarm]\nbaseline_samples = 2");
    run_tick(&app, 1, &[("demoShop", 460, 40, 32)]).await; // 80%
    run_tick(&app, 2, &[("demoShop", 460, 10, 0)]).await; // skipped: 10 < 20
    run_tick(&app, 3, &[("demoShop", 460, 40, 2)]).await; // 5%

    assert_eq!(
        verdict(&app, "460", 2).await,
        Verdict::NOT_JUDGED,
        "a skipped pair is not judged"
    );
    assert_eq!(
        verdict(&app, "460", 3).await,
        Verdict::judged("80.00", true),
        "the baseline is tick 1 alone, not the median of 10 and 80"
    );
}

#[sqlx::test]
async fn the_webhook_gets_one_alert_per_pair_until_it_recovers(pool: PgPool) {
    let hook = Webhook::start(Answer::Ok).await;
    let app = app_with_webhook(pool, &hook).await;

    run_tick(&app, 4, &COLLAPSED).await;
    eventually(
        Duration::from_secs(10),
        "the alert is marked as sent",
        || async { alerts_sent(&app).await == 1 },
    )
    .await;
    run_tick(&app, 5, &COLLAPSED).await; // still down: no second alert
    run_tick(&app, 6, &HEALTHY).await; // recovered
    eventually(Duration::from_secs(10), "the recovery message", || async {
        hook.bodies().len() == 2
    })
    .await;
    run_tick(&app, 7, &COLLAPSED).await; // down again: a new alert
    eventually(Duration::from_secs(10), "the second alert", || async {
        hook.bodies().len() == 3
    })
    .await;

    let bodies = hook.bodies();
    let statuses: Vec<&str> = bodies
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "resolved", "firing"]);
    let text = bodies[0]["text"].as_str().unwrap();
    assert!(
        text.contains(
            "• China (mcc 460), app demoShop: 10% (4 of 40 codes typed back), baseline 80%"
        ),
        "{text}"
    );
    assert_eq!(bodies[0]["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(bodies[0]["alerts"][0]["country"], "China");
    assert_eq!(bodies[0]["alerts"][0]["rate"], "10");
    assert!(bodies[1]["text"]
        .as_str()
        .unwrap()
        .contains("1 route recovered"));
}

#[sqlx::test]
async fn a_webhook_that_hangs_or_fails_never_delays_or_fails_a_report(pool: PgPool) {
    let hook = Webhook::start(Answer::Hang).await;
    let app = app_with_webhook(pool, &hook).await;

    let started = Instant::now();
    let report = run_tick(&app, 4, &COLLAPSED).await;
    let took = started.elapsed();

    assert!(report.all_good());
    assert_eq!(app.provider.backfill_bodies().len(), 10);
    eventually(Duration::from_secs(10), "the webhook is called", || async {
        !hook.bodies().is_empty()
    })
    .await;
    assert!(
        took < Duration::from_secs(5),
        "the cycle waited for the webhook: {took:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM route_alarms WHERE notified_at IS NULL")
            .await,
        1,
        "an alert the webhook did not take stays unsent"
    );

    // A webhook that answers 500 is retried in the background; the next tick's report is
    // unaffected, and the alert is sent once the webhook works again.
    hook.answer(Answer::Fail);
    let report = run_tick(&app, 5, &COLLAPSED).await;
    assert!(report.all_good());
    hook.answer(Answer::Ok);
    run_tick(&app, 6, &COLLAPSED).await;
    eventually(
        Duration::from_secs(15),
        "the alert is sent once the webhook works",
        || async { alerts_sent(&app).await == 1 },
    )
    .await;
}

#[sqlx::test]
async fn run_once_logs_one_warn_line_naming_the_country_the_numbers_and_the_baseline(pool: PgPool) {
    let app = app_with_alarm(pool, "baseline_samples = 4").await;
    // History at past hourly ticks, then the collapse in the hour before now.
    let now = Utc::now();
    for h in (2..6).rev() {
        let t = now - chrono::Duration::hours(h);
        app.seed("demoShop", 460, t - chrono::Duration::minutes(5), 40, 32)
            .await;
        tick::run(&app.ctx(), t, Trigger::Schedule, &CancellationToken::new())
            .await
            .unwrap();
    }
    app.seed("demoShop", 460, now - chrono::Duration::minutes(10), 40, 4)
        .await;

    let Output { code, err, .. } = app.run(&["run", "--once"]).await;

    assert_eq!(code, 0, "{err}");
    let warns: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("backfill rate"))
        .collect();
    assert_eq!(warns.len(), 1, "{err}");
    assert!(
        warns[0].contains(
            "backfill rate for China (mcc 460) of app demoShop fell to 10% (4 of 40 codes typed \
             back), 70.00 points below its baseline of 80%"
        ),
        "{}",
        warns[0]
    );
}

#[sqlx::test]
async fn a_webhook_that_redirects_is_not_followed_and_the_alert_stays_unsent(pool: PgPool) {
    let elsewhere = Webhook::start(Answer::Ok).await;
    let hook = Webhook::start(Answer::Ok).await;
    let app = app_with_webhook(pool, &hook).await;
    for (n, http) in [(4, 302), (5, 307)] {
        let tries = hook.requests().len();
        hook.answer(Answer::Redirect(http, elsewhere.url.clone()));

        let report = run_tick(&app, n, &COLLAPSED).await;

        assert!(report.all_good());
        // Three tries, each answered with the redirect; none reaches the other host.
        eventually(Duration::from_secs(15), "three tries", || async {
            hook.requests().len() == tries + 3
        })
        .await;
        for r in &hook.requests()[tries..] {
            assert_eq!(r.method, "POST");
            assert!(r.headers.get("referer").is_none(), "{:?}", r.headers);
        }
        assert!(
            elsewhere.requests().is_empty(),
            "HTTP {http}: the redirect was followed: {:?}",
            elsewhere.requests()
        );
        assert_eq!(alerts_sent(&app).await, 0, "HTTP {http}: marked as sent");
    }
}
