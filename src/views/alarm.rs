//! Route-health alarm. The provider's page says only that it receives the backfill rate, not
//! what it does with it; this project's reading is that a country whose rate collapses is
//! usually a country whose delivery broke, so the rates are watched here. Each new rate of a
//! run is compared, in one set-based statement, with its pair's baseline (the median of its
//! last succeeded reports); a drop of more than `[alarm] drop_points` is logged, recorded with
//! the submission, and sent once per pair to `[alarm] webhook_url` until the pair recovers.
//! Nothing here may delay or fail a report: errors are logged, the webhook is called from a
//! background task.

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::db::{Db, Tx};
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::domain::mcc;
use crate::domain::rate::Rate;

/// At most this many pairs get their own log line per run; the rest are counted in one line,
/// so that a provider-wide outage does not write a line per pair.
const MAX_LOG_LINES: usize = 20;
/// At most this many pairs are spelled out in a webhook's `text`; `alerts` lists them all.
const MAX_TEXT_LINES: usize = 20;
/// Webhook attempts, and the wait before the second (doubling).
const WEBHOOK_ATTEMPTS: u32 = 3;
const WEBHOOK_BACKOFF: Duration = Duration::from_secs(1);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// Notifications still being sent, so that `run --once` and shutdown can wait for them.
static NOTIFICATIONS: LazyLock<TaskTracker> = LazyLock::new(TaskTracker::new);

/// One pair whose alarm fired, continued or ended in this run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairAlarm {
    pub app_id: String,
    pub mcc: String,
    pub country: String,
    /// The rate of this run, in JSON in the form sent ("12.5").
    #[serde(serialize_with = "as_sent")]
    pub rate: Rate,
    /// The median it was compared with.
    #[serde(serialize_with = "as_sent")]
    pub baseline: Rate,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    /// When the rate first fell (the start of the current alarm).
    pub since: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub submission_id: i64,
    /// Whether the webhook already took this alarm.
    #[serde(skip)]
    pub notified: bool,
}

impl PairAlarm {
    /// Baseline minus rate, in percentage points.
    pub fn drop_points(&self) -> f64 {
        let hundredths = i32::from(self.baseline.hundredths()) - i32::from(self.rate.hundredths());
        f64::from(hundredths) / 100.0
    }

    /// This alarm in words, in `form`.
    pub fn words(&self, form: AlarmForm) -> AlarmWords<'_> {
        AlarmWords {
            app_id: &self.app_id,
            mcc: &self.mcc,
            country: &self.country,
            rate: &self.rate,
            baseline: &self.baseline,
            backfill_number: self.backfill_number.as_deref(),
            cardinal_number: self.cardinal_number.as_deref(),
            form,
        }
    }
}

/// One pair's alarm as people read it. Its facts (the route, the rate, the codes typed back,
/// the baseline) are worded here and nowhere else, in the form each reader gets: the WARN
/// line, a line of the webhook's text, and `status`'s two lines under its table.
#[derive(Clone, Copy)]
pub struct AlarmWords<'a> {
    pub app_id: &'a str,
    pub mcc: &'a str,
    pub country: &'a str,
    /// Written as the rate was sent ("12.5"), or "-": a [`Rate`], or its text.
    pub rate: &'a dyn std::fmt::Display,
    /// Written as `rate` is.
    pub baseline: &'a dyn std::fmt::Display,
    pub backfill_number: Option<&'a str>,
    pub cardinal_number: Option<&'a str>,
    pub form: AlarmForm,
}

/// Where an alarm is read, which decides how much of it is said.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AlarmForm {
    /// The WARN line: how far below its baseline the rate fell, what the baseline is the median
    /// of, and since when the alarm fires (once the webhook took it).
    Log {
        points_below: f64,
        samples: u32,
        since: Option<DateTime<Utc>>,
    },
    /// A line of the webhook's `text`.
    Webhook,
    /// `status`: a heading, then the codes and since when it fires, indented under it.
    Status { since: Option<DateTime<Utc>> },
}

impl std::fmt::Display for AlarmWords<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            app_id: app,
            mcc,
            country,
            rate,
            baseline,
            ..
        } = *self;
        let codes = format!(
            "{} of {} codes typed back",
            self.backfill_number.unwrap_or("?"),
            self.cardinal_number.unwrap_or("?")
        );
        match self.form {
            AlarmForm::Log {
                points_below,
                samples,
                since,
            } => {
                write!(
                    f,
                    "backfill rate for {country} (mcc {mcc}) of app {app} fell to {rate}% \
                     ({codes}), {points_below:.2} points below its baseline of {baseline}% \
                     (median of up to {samples} earlier reports)"
                )?;
                match since {
                    Some(s) => write!(
                        f,
                        "; alarm firing since {}",
                        s.format("%Y-%m-%d %H:%M:%S UTC")
                    ),
                    None => Ok(()),
                }
            }
            AlarmForm::Webhook => write!(
                f,
                "• {country} (mcc {mcc}), app {app}: {rate}% ({codes}), baseline {baseline}%"
            ),
            AlarmForm::Status { since } => {
                write!(
                    f,
                    "ALARM {app} {mcc} {country}: {rate}% vs baseline {baseline}%\n      {codes}"
                )?;
                match since {
                    Some(s) => write!(f, "; firing since {}", s.format("%Y-%m-%d %H:%M UTC")),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A rate as a JSON string in the form sent ("12.5"), as the webhook's alerts have it.
fn as_sent<S: serde::Serializer>(rate: &Rate, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(rate)
}

/// What one evaluation found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// Pairs compared with a baseline.
    pub judged: u64,
    /// Pairs that fell in this run, newly or again.
    pub dropped: Vec<PairAlarm>,
    /// Of those, the ones that were not firing before.
    pub started: usize,
    /// Pairs whose alarm ended in this run.
    pub recovered: Vec<PairAlarm>,
}

/// Judges every rate of the run `run_id` against its pair's baseline and records the verdicts,
/// inside the transaction that queues the run (before any sender can see, or lock, its rows).
/// It never fails the cycle: an error is logged and rolled back to a savepoint, and the run is
/// queued unjudged. [`announce`] the result once the transaction has committed.
pub async fn judge_in(conn: &mut Tx, settings: &Settings, run_id: i64) -> Evaluation {
    let judged = async {
        sqlx::query!("SAVEPOINT route_health")
            .execute(&mut *conn)
            .await?;
        match judge_run(&mut *conn, settings, run_id).await {
            Ok(evaluation) => {
                sqlx::query!("RELEASE SAVEPOINT route_health")
                    .execute(&mut *conn)
                    .await?;
                Ok(evaluation)
            }
            Err(e) => {
                sqlx::query!("ROLLBACK TO SAVEPOINT route_health")
                    .execute(&mut *conn)
                    .await?;
                Err(e)
            }
        }
    }
    .await;
    judged.unwrap_or_else(|e: anyhow::Error| {
        tracing::warn!(run_id, "route-health check skipped: {e:#}");
        Evaluation::default()
    })
}

/// Logs the drops and recoveries of an evaluation and hands new alerts to the webhook, in the
/// background; returns at once.
pub fn announce(pool: &Db, settings: &Settings, evaluation: &Evaluation) {
    report(settings, evaluation);
    notify(pool, settings, evaluation);
}

/// The set-based step: one statement compares every judged pair of the run with the median of
/// its last `baseline_samples` succeeded, not-alarmed reports of at least `min_cardinal` codes,
/// stores baseline and verdict on the submission, opens (`route_alarms` row) or closes (row
/// deleted) each pair's alarm, and returns the pairs that dropped or recovered, and a last row
/// with only the count of pairs judged. The baseline lookup is one index probe per pair
/// (`report_submissions_baseline`), with no round trip. (`closed` runs although nothing reads
/// it: PostgreSQL runs every data-modifying WITH.)
#[tracing::instrument(skip_all, fields(run_id = run_id))]
pub async fn judge_run(
    conn: &mut Tx,
    settings: &Settings,
    run_id: i64,
) -> anyhow::Result<Evaluation> {
    let alarm = &settings.alarm;
    let min_cardinal = i64::try_from(settings.source.min_cardinal).unwrap_or(i64::MAX);
    let rows = sqlx::query_file!(
        "src/views/judge_run.sql",
        run_id,
        min_cardinal,
        i64::from(alarm.baseline_samples),
        i64::from(alarm.min_samples()),
        alarm.drop_points,
    )
    .fetch_all(conn)
    .await
    .context("comparing the run's rates with their baselines")?;
    let mut evaluation = Evaluation::default();
    for r in rows {
        evaluation.judged = u64::try_from(r.judged).unwrap_or(0);
        let (Some(id), Some(app_id), Some(mcc)) = (r.id, r.app_id, r.mcc) else {
            continue;
        };
        let pair = PairAlarm {
            app_id,
            country: mcc::name(&mcc).to_owned(),
            mcc,
            rate: stored_rate(r.rate, "rate")?,
            baseline: stored_rate(r.baseline, "baseline")?,
            backfill_number: r.backfill_number,
            cardinal_number: r.cardinal_number,
            since: r.since,
            submission_id: id,
            notified: r.notified.unwrap_or(false),
        };
        evaluation.note(
            pair,
            r.dropped.unwrap_or(false),
            r.was_firing.unwrap_or(false),
        );
    }
    Ok(evaluation)
}

impl Evaluation {
    fn note(&mut self, pair: PairAlarm, dropped: bool, was_firing: bool) {
        if dropped {
            if !was_firing {
                self.started += 1;
            }
            self.dropped.push(pair);
        } else {
            self.recovered.push(pair);
        }
    }
}

/// A judged rate or baseline, stored as numeric(5,2) and read as hundredths: one outside
/// 0–100 % (a hand edit) is an error, never shown as another value.
fn stored_rate(hundredths: Option<i32>, column: &str) -> anyhow::Result<Rate> {
    hundredths
        .and_then(Rate::from_hundredths)
        .with_context(|| format!("a judged submission's {column} {hundredths:?} is not a rate"))
}

/// One WARN line per pair that fell (up to [`MAX_LOG_LINES`]), one INFO line per recovery.
fn report(settings: &Settings, evaluation: &Evaluation) {
    let samples = settings.alarm.baseline_samples;
    for p in evaluation.dropped.iter().take(MAX_LOG_LINES) {
        let form = AlarmForm::Log {
            points_below: p.drop_points(),
            samples,
            since: p.since.filter(|_| p.notified),
        };
        tracing::warn!(
            app_id = %p.app_id,
            mcc = %p.mcc,
            country = %p.country,
            rate = %p.rate,
            baseline = %p.baseline,
            "{}",
            p.words(form)
        );
    }
    if evaluation.dropped.len() > MAX_LOG_LINES {
        tracing::warn!(
            "{} more pairs fell more than {} points below their baseline (see `status`)",
            evaluation.dropped.len() - MAX_LOG_LINES,
            settings.alarm.drop_points
        );
    }
    for p in evaluation.recovered.iter().take(MAX_LOG_LINES) {
        tracing::info!(
            app_id = %p.app_id,
            mcc = %p.mcc,
            country = %p.country,
            "backfill rate for {} (mcc {}) of app {} recovered: {}% against a baseline of {}%",
            p.country,
            p.mcc,
            p.app_id,
            p.rate,
            p.baseline
        );
    }
}

/// The JSON a webhook receives: Slack's (and Mattermost's, Rocket.Chat's) `text`, and the same
/// alerts as data for anything else.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    text: String,
    status: &'static str,
    drop_points: f64,
    alerts: &'a [PairAlarm],
}

/// Hands the alerts not sent yet, and the recoveries of alerts that were sent, to a background
/// task; returns at once.
fn notify(pool: &Db, settings: &Settings, evaluation: &Evaluation) {
    let Some(url) = settings.alarm.webhook_url.clone() else {
        return;
    };
    let fresh: Vec<PairAlarm> = evaluation
        .dropped
        .iter()
        .filter(|p| !p.notified)
        .cloned()
        .collect();
    let recovered: Vec<PairAlarm> = evaluation
        .recovered
        .iter()
        .filter(|p| p.notified)
        .cloned()
        .collect();
    let drop_points = settings.alarm.drop_points;
    let pool = pool.clone();
    NOTIFICATIONS.spawn(async move {
        if !fresh.is_empty() {
            let text = alert_text(&fresh, drop_points);
            let payload = Payload {
                text,
                status: "firing",
                drop_points,
                alerts: &fresh,
            };
            if post(&url, &payload).await {
                mark_notified(&pool, &fresh).await;
            }
        }
        if !recovered.is_empty() {
            let payload = Payload {
                text: recovery_text(&recovered),
                status: "resolved",
                drop_points,
                alerts: &recovered,
            };
            post(&url, &payload).await;
        }
    });
}

/// The message people read: one line per pair, the worst first.
pub fn alert_text(alerts: &[PairAlarm], drop_points: f64) -> String {
    let mut sorted: Vec<&PairAlarm> = alerts.iter().collect();
    sorted.sort_by(|a, b| b.drop_points().total_cmp(&a.drop_points()));
    let mut text = format!(
        ":rotating_light: backfill-reporter: the backfill rate fell more than {drop_points} points \
         below its baseline for {} route{}",
        alerts.len(),
        if alerts.len() == 1 { "" } else { "s" }
    );
    for p in sorted.iter().take(MAX_TEXT_LINES) {
        text.push_str(&format!("\n{}", p.words(AlarmForm::Webhook)));
    }
    if sorted.len() > MAX_TEXT_LINES {
        text.push_str(&format!(
            "\n… and {} more (backfill-reporter status)",
            sorted.len() - MAX_TEXT_LINES
        ));
    }
    text
}

fn recovery_text(recovered: &[PairAlarm]) -> String {
    let mut text = format!(
        ":white_check_mark: backfill-reporter: {} route{} recovered",
        recovered.len(),
        if recovered.len() == 1 { "" } else { "s" }
    );
    for p in recovered.iter().take(MAX_TEXT_LINES) {
        text.push_str(&format!(
            "\n• {} (mcc {}), app {}: {}%, baseline {}%",
            p.country, p.mcc, p.app_id, p.rate, p.baseline
        ));
    }
    text
}

/// POSTs the payload, retrying a few times; `true` once a 2xx answer came. The URL is never
/// logged: it is the webhook's credential. A redirect is never followed: it would take the
/// alert (307) or a bodiless GET (302) to a host nobody configured, announcing the webhook's
/// secret path in `Referer`, and count as delivered; a 3xx is a failure like any other non-2xx.
async fn post(url: &SecretString, payload: &Payload<'_>) -> bool {
    let client = match reqwest::Client::builder()
        .timeout(WEBHOOK_TIMEOUT)
        .user_agent(concat!("backfill-reporter/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("alarm webhook: building the HTTP client: {e}");
            return false;
        }
    };
    let mut wait = WEBHOOK_BACKOFF;
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let outcome = client.post(url.expose_secret()).json(payload).send().await;
        let problem = match outcome {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) if r.status().is_redirection() => {
                format!("HTTP {} (a redirect, not followed)", r.status())
            }
            Ok(r) => format!("HTTP {}", r.status()),
            // without_url: reqwest's Display names the URL, which holds the token.
            Err(e) => e.without_url().to_string(),
        };
        tracing::warn!(
            attempt,
            "alarm webhook did not take the {} alert: {problem}",
            payload.status
        );
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
    false
}

/// Marks the alarms the webhook took, so that the next run does not send them again; an alarm
/// that recovered (and maybe fell again) in between keeps its own state.
async fn mark_notified(pool: &Db, alerts: &[PairAlarm]) {
    let since: Vec<Option<DateTime<Utc>>> = alerts.iter().map(|p| p.since).collect();
    let result = sqlx::query!(
        "UPDATE route_alarms a SET notified_at = now()
         FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(app_id, mcc, since)
         WHERE a.app_id = u.app_id AND a.mcc = u.mcc AND a.since = u.since",
        &alerts.iter().map(|p| p.app_id.clone()).collect::<Vec<_>>(),
        &alerts.iter().map(|p| p.mcc.clone()).collect::<Vec<_>>(),
        since as _,
    )
    .execute(pool)
    .await;
    if let Err(e) = result {
        tracing::warn!("alarm webhook: recording the alert as sent: {e}; it may be sent again");
    }
}

/// Waits up to `limit` for notifications still being sent (`run --once` and shutdown call it,
/// since the process would otherwise end before the webhook is reached).
pub async fn wait_for_notifications(limit: Duration) {
    NOTIFICATIONS.close();
    if tokio::time::timeout(limit, NOTIFICATIONS.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "alarm webhook still not answered after {limit:?}; the next run sends the alert again"
        );
    }
    NOTIFICATIONS.reopen();
}

/// How many alarms are firing now (for the metrics gauge and `status`).
pub async fn firing_count(pool: &Db) -> anyhow::Result<i64> {
    sqlx::query_scalar!(r#"SELECT count(*) AS "firing!" FROM route_alarms"#)
        .fetch_one(pool)
        .await
        .context("counting firing alarms")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(app: &str, mcc: &str, rate: &str, baseline: &str) -> PairAlarm {
        let pct = |s: &str| {
            let hundredths = (s.parse::<f64>().unwrap() * 100.0).round() as i32;
            Rate::from_hundredths(hundredths).unwrap()
        };
        PairAlarm {
            app_id: app.into(),
            mcc: mcc.into(),
            country: mcc::name(mcc).into(),
            rate: pct(rate),
            baseline: pct(baseline),
            backfill_number: Some("3".into()),
            cardinal_number: Some("40".into()),
            since: None,
            submission_id: 1,
            notified: false,
        }
    }

    #[test]
    fn the_alert_text_names_country_numbers_and_baseline_worst_first() {
        let text = alert_text(
            &[
                pair("demoShop", "460", "70", "80"),
                pair("demoShop", "510", "7.5", "80.25"),
            ],
            20.0,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("2 routes"), "{text}");
        assert!(lines[1].starts_with("• Indonesia (mcc 510), app demoShop: 7.5% (3 of 40 codes typed back), baseline 80.25%"), "{text}");
        assert!(lines[2].contains("China (mcc 460)"), "{text}");
    }

    #[test]
    fn a_long_alert_lists_twenty_pairs_and_counts_the_rest() {
        let many: Vec<PairAlarm> = (0..25)
            .map(|i| pair(&format!("app{i:04}"), "460", "1", "90"))
            .collect();
        let text = alert_text(&many, 20.0);
        assert_eq!(text.lines().count(), 1 + MAX_TEXT_LINES + 1);
        assert!(
            text.ends_with("… and 5 more (backfill-reporter status)"),
            "{text}"
        );
    }

    #[test]
    fn one_alarm_is_worded_for_the_log_the_webhook_and_status() {
        use chrono::TimeZone;
        let mut p = pair("demoShop", "510", "7.74", "76.27");
        p.backfill_number = Some("25".into());
        p.cardinal_number = Some("323".into());
        let since = Some(Utc.with_ymd_and_hms(2026, 1, 31, 20, 0, 5).unwrap());
        let log = |since| AlarmForm::Log {
            points_below: p.drop_points(),
            samples: 6,
            since,
        };
        let warn = "backfill rate for Indonesia (mcc 510) of app demoShop fell to 7.74% (25 of 323 \
                    codes typed back), 68.53 points below its baseline of 76.27% (median of up to 6 \
                    earlier reports)";
        assert_eq!(p.words(log(None)).to_string(), warn);
        assert_eq!(
            p.words(log(since)).to_string(),
            format!("{warn}; alarm firing since 2026-01-31 20:00:05 UTC")
        );
        assert_eq!(
            p.words(AlarmForm::Webhook).to_string(),
            "• Indonesia (mcc 510), app demoShop: 7.74% (25 of 323 codes typed back), baseline 76.27%"
        );
        assert_eq!(
            p.words(AlarmForm::Status { since }).to_string(),
            "ALARM demoShop 510 Indonesia: 7.74% vs baseline 76.27%\n      25 of 323 codes typed \
             back; firing since 2026-01-31 20:00 UTC"
        );
        p.backfill_number = None;
        assert!(p
            .words(AlarmForm::Webhook)
            .to_string()
            .contains("(? of 323 codes typed back)"));
    }

    #[test]
    fn the_drop_is_baseline_minus_rate() {
        assert_eq!(pair("a", "460", "12.5", "80").drop_points(), 67.5);
    }
}
