//! `status`: the state of every (app, MCC) pair at a glance: country, latest rate and outcome,
//! baseline, a sparkline of the rates the provider accepted at the last 24 ticks (a gap where
//! it accepted none) and the route-health alarm. Reads the
//! report tables only (one query); the rendering is pure so that the 80-column layout, the
//! colours and the JSON are tested without a database.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::Db;

use crate::config::AlarmSettings;
use crate::domain::mcc;
use crate::domain::rate::Rate;
use crate::domain::run::State;
use crate::domain::status::ProviderStatus;

/// How many ticks the sparkline shows.
pub const SPARK_LEN: usize = 24;

/// A tick in the sparkline without a rate the provider accepted: failed, pending, skipped,
/// invalid or superseded. Visible, and not a block that a rate of 0 would also draw.
pub const GAP: char = '·';

/// One pair, as `status --json` prints it. Rates are numbers in percent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusRow {
    /// The provider account of its latest submission; `None` for the unnamed account.
    pub account: Option<String>,
    pub app_id: String,
    pub mcc: String,
    /// Short country name ("unknown" for a code not in the E.212 list).
    pub country: String,
    /// The name ITU publishes, when the code is in the list.
    pub country_itu: Option<String>,
    /// The tick of the latest submission.
    pub tick: DateTime<Utc>,
    #[serde(serialize_with = "percent_opt")]
    pub rate: Option<Rate>,
    /// The latest submission's state: succeeded, failed, skipped, invalid or pending.
    pub state: State,
    pub provider_status: Option<ProviderStatus>,
    /// Why it failed, was skipped or invalid.
    pub detail: Option<String>,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    /// The latest baseline the pair was judged against.
    #[serde(serialize_with = "percent_opt")]
    pub baseline: Option<Rate>,
    /// The pair's last 24 ticks, oldest first: the rate the provider accepted, or `None` (JSON
    /// `null`) where it accepted none.
    #[serde(serialize_with = "percents")]
    pub rates: Vec<Option<Rate>>,
    /// true: the alarm is firing; false: judged and fine; null: never judged (no baseline yet).
    pub alarm: Option<bool>,
    pub alarm_since: Option<DateTime<Utc>>,
}

/// A rate as a JSON number in percent (12.5), as `status --json` has always printed it.
fn percent_opt<S: serde::Serializer>(rate: &Option<Rate>, s: S) -> Result<S::Ok, S::Error> {
    match rate {
        Some(r) => s.serialize_f64(r.percent()),
        None => s.serialize_none(),
    }
}

fn percents<S: serde::Serializer>(rates: &[Option<Rate>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(rates.iter().map(|r| r.map(Rate::percent)))
}

/// Every pair's status, ordered by account, app and MCC; only `app_id`'s, or only those whose
/// latest submission is `account`'s, when given.
#[tracing::instrument(skip_all)]
pub async fn rows(
    pool: &Db,
    app_id: Option<&str>,
    account: Option<&str>,
) -> anyhow::Result<Vec<StatusRow>> {
    let rows = sqlx::query_file!("src/views/status.sql", app_id, SPARK_LEN as i64, account,)
        .fetch_all(pool)
        .await
        .context("reading the pairs' status from report_submissions")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let country = mcc::lookup(&r.mcc);
            StatusRow {
                account: r.account,
                app_id: r.app_id,
                country: country.map_or("unknown", |c| c.name).to_owned(),
                country_itu: country.map(|c| c.itu_name.to_owned()),
                mcc: r.mcc,
                tick: r.tick,
                rate: r.hundredths.and_then(Rate::from_hundredths),
                state: r.state,
                provider_status: r.provider_status,
                detail: r.detail,
                backfill_number: r.backfill_number,
                cardinal_number: r.cardinal_number,
                rates: r
                    .rates
                    .into_iter()
                    .map(|h| h.and_then(Rate::from_hundredths))
                    .collect(),
                baseline: r.baseline.and_then(Rate::from_hundredths),
                alarm: if r.firing {
                    Some(true)
                } else {
                    r.judged.then_some(false)
                },
                alarm_since: r.alarm_since,
            }
        })
        .collect())
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything but "" (no-color.org).
pub fn use_color(stdout_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stdout_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A rate in the form sent ("12.5", "100"), or "-".
fn pct(v: Option<Rate>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One block per accepted rate on an absolute 0–100 scale (▁ below 12.5, █ from 87.5), oldest
/// first, so that a collapse shows as a step down at the right end whatever the pair's usual
/// level; [`GAP`] for a tick without one. A failed or pending rate is not plotted: the provider
/// never took it.
pub fn sparkline(rates: &[Option<Rate>]) -> String {
    const BLOCKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    rates
        .iter()
        .map(|r| r.map_or(GAP, |r| BLOCKS[usize::from(r.hundredths() / 1250).min(7)]))
        .collect()
}

/// An app id (or any text from the report tables) for the terminal: it may hold an ESC or a
/// right-to-left override, which [`clean`](crate::domain::excerpt::clean) escapes.
fn shown(text: &str) -> String {
    crate::domain::excerpt::clean(text, 64)
}

/// Cuts `s` to `width` characters, marking a cut with "…".
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}

fn pad(s: &str, width: usize) -> String {
    let s = fit(s, width);
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width - n))
}

fn pad_left(s: &str, width: usize) -> String {
    let s = fit(s, width);
    let n = s.chars().count();
    format!("{}{s}", " ".repeat(width - n))
}

/// The latest outcome in at most 7 characters.
fn outcome(row: &StatusRow) -> &str {
    match row.state {
        State::Succeeded => "ok",
        other => other.as_str(),
    }
}

const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[33m";
const GREEN: &str = "\x1b[32m";
const RESET: &str = "\x1b[0m";

/// The table: one line per pair, then a legend and one line per firing alarm with the numbers
/// the columns leave out; every line is at most 79 characters wide.
pub fn render_table(rows: &[StatusRow], alarm: &AlarmSettings, color: bool) -> String {
    let paint = Paint(color);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} MCC {} {} {} {} {} ALARM",
        pad("APP", 9),
        pad("COUNTRY", 14),
        pad_left("RATE", 5),
        pad_left("BASE", 5),
        pad("ACCEPTED, 24 TICKS", SPARK_LEN),
        pad("OUTCOME", 7),
    );
    let named = rows.iter().any(|r| r.account.is_some());
    for (i, r) in rows.iter().enumerate() {
        if named && (i == 0 || rows[i - 1].account != r.account) {
            let _ = writeln!(out, "{}", account_line(rows, &r.account));
        }
        let _ = writeln!(out, "{}", pair_line(r, paint));
    }
    let firing: Vec<&StatusRow> = rows.iter().filter(|r| r.alarm == Some(true)).collect();
    legend(&mut out, rows.len(), firing.len(), alarm);
    for r in firing.iter().take(20) {
        alarm_lines(&mut out, r, paint);
    }
    if firing.len() > 20 {
        let _ = writeln!(
            out,
            "… and {} more alarms (status --json lists them all)",
            firing.len() - 20
        );
    }
    out
}

/// ANSI colour, or none.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn apply(self, text: String, code: &str) -> String {
        if self.0 {
            format!("{code}{text}{RESET}")
        } else {
            text
        }
    }
}

/// The heading of an account's pairs, when the deployment has named accounts: "account shop:
/// 5 pairs, 1 alarm firing". The unnamed account's (rows planned before `[[accounts]]`) is
/// called so.
fn account_line(rows: &[StatusRow], account: &Option<String>) -> String {
    let own: Vec<&StatusRow> = rows.iter().filter(|r| r.account == *account).collect();
    let firing = own.iter().filter(|r| r.alarm == Some(true)).count();
    let name = account.as_deref().map_or_else(
        || "(unnamed: provider.api_key)".to_owned(),
        |a| fit(&shown(a), 32),
    );
    format!(
        "account {name}: {} pair{}, {firing} alarm{} firing",
        own.len(),
        if own.len() == 1 { "" } else { "s" },
        if firing == 1 { "" } else { "s" }
    )
}

fn pair_line(r: &StatusRow, paint: Paint) -> String {
    let spark = sparkline(&r.rates[r.rates.len().saturating_sub(SPARK_LEN)..]);
    let outcome_cell = pad(outcome(r), 7);
    let outcome_cell = match r.state {
        State::Succeeded => paint.apply(outcome_cell, GREEN),
        State::Failed | State::Invalid => paint.apply(outcome_cell, YELLOW),
        _ => outcome_cell,
    };
    let alarm_cell = match r.alarm {
        Some(true) => paint.apply("ALARM".to_owned(), RED),
        Some(false) => "ok".to_owned(),
        None => "-".to_owned(),
    };
    format!(
        "{} {} {} {} {} {} {} {}",
        pad(&shown(&r.app_id), 9),
        pad(&shown(&r.mcc), 3),
        pad(&r.country, 14),
        pad_left(&pct(r.rate), 5),
        pad_left(&pct(r.baseline), 5),
        pad_left(&spark, SPARK_LEN),
        outcome_cell,
        alarm_cell
    )
}

fn legend(out: &mut String, pairs: usize, firing: usize, alarm: &AlarmSettings) {
    let _ = writeln!(
        out,
        "{} pair{}, {} alarm{} firing. Rates in %; BASE is the median of up to {} earlier",
        pairs,
        if pairs == 1 { "" } else { "s" },
        firing,
        if firing == 1 { "" } else { "s" },
        alarm.baseline_samples
    );
    let _ = writeln!(
        out,
        "succeeded reports; ALARM: the rate fell more than {} points below it.",
        alarm.drop_points
    );
    let _ = writeln!(
        out,
        "ACCEPTED: the rates the provider took at the last {SPARK_LEN} ticks; {GAP}: none taken."
    );
}

/// The numbers behind a firing alarm, in two lines, each cut to 79 columns.
fn alarm_lines(out: &mut String, r: &StatusRow, paint: Paint) {
    use crate::views::alarm::{AlarmForm, AlarmWords};
    let (app_id, mcc, rate, baseline) = (
        shown(&r.app_id),
        shown(&r.mcc),
        pct(r.rate),
        pct(r.baseline),
    );
    let words = AlarmWords {
        app_id: &app_id,
        mcc: &mcc,
        country: &r.country,
        rate: &rate,
        baseline: &baseline,
        backfill_number: r.backfill_number.as_deref(),
        cardinal_number: r.cardinal_number.as_deref(),
        form: AlarmForm::Status {
            since: r.alarm_since,
        },
    }
    .to_string();
    let (head, detail) = words.split_once('\n').unwrap_or((&words, ""));
    let _ = writeln!(out, "{}", paint.apply(fit(head, 79), RED));
    let _ = writeln!(out, "{}", fit(detail, 79));
}

/// The rows as one JSON array, [safe for a terminal](crate::domain::excerpt::clean_json) with the same
/// values: an app id may hold a right-to-left override or a C1 control, which serde leaves raw.
pub fn render_json(rows: &[StatusRow]) -> String {
    crate::domain::excerpt::clean_json(
        &serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcts(rates: &[f64]) -> Vec<Rate> {
        rates
            .iter()
            .map(|r| Rate::from_hundredths((r * 100.0).round() as i32).unwrap())
            .collect()
    }

    fn accepted(rates: &[f64]) -> Vec<Option<Rate>> {
        pcts(rates).into_iter().map(Some).collect()
    }

    fn row(app: &str, mcc: &str, rates: &[f64], alarm: Option<bool>) -> StatusRow {
        let rates = accepted(rates);
        let country = mcc::lookup(mcc);
        StatusRow {
            account: None,
            app_id: app.into(),
            mcc: mcc.into(),
            country: country.map_or("unknown", |c| c.name).into(),
            country_itu: country.map(|c| c.itu_name.into()),
            tick: DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            rate: rates.last().copied().flatten(),
            state: State::Succeeded,
            provider_status: Some(ProviderStatus::Success),
            detail: None,
            backfill_number: Some("3".into()),
            cardinal_number: Some("40".into()),
            baseline: pcts(&[80.25]).pop(),
            rates,
            alarm,
            alarm_since: None,
        }
    }

    #[test]
    fn the_sparkline_maps_0_to_100_onto_eight_blocks() {
        assert_eq!(
            sparkline(&accepted(&[0.0, 12.49, 12.5, 50.0, 87.49, 87.5, 100.0])),
            "▁▁▂▅▇██"
        );
        assert_eq!(sparkline(&[]), "");
        let mut gappy = accepted(&[80.0, 0.0, 80.0]);
        gappy.insert(1, None);
        assert_eq!(sparkline(&gappy), "▇·▁▇");
    }

    #[test]
    fn every_line_fits_80_columns_even_with_long_names() {
        let rows = vec![
            row(&"x".repeat(32), "234", &[99.99; 24], Some(true)),
            row("demoShop", "308", &[100.0; 30], Some(false)),
            row("demoBank", "999", &[], None),
        ];
        let table = render_table(&rows, &AlarmSettings::default(), false);
        for line in table.lines() {
            assert!(
                line.chars().count() <= 79,
                "{} chars: {line:?}",
                line.chars().count()
            );
        }
        let first = table.lines().nth(1).unwrap();
        assert!(
            first.starts_with("xxxxxxxx… 234 United Kingdom 99.99 80.25 "),
            "{first:?}"
        );
        assert!(first.ends_with(" ok      ALARM"), "{first:?}");
        let second = table.lines().nth(2).unwrap();
        assert!(
            second.contains(&format!(" {} ok ", "█".repeat(24))),
            "{second:?}"
        );
        assert!(
            table.contains(&format!(
                "ALARM {} 234 United Kingdom: 99.99% vs baseline …\n      3 of 40 codes typed \
                 back\n",
                "x".repeat(32)
            )),
            "{table}"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(use_color(true, None));
        assert!(use_color(true, Some(OsStr::new(""))));
        assert!(!use_color(true, Some(OsStr::new("1"))));
        assert!(!use_color(false, None));
        let rows = vec![row("demoShop", "460", &[80.0, 10.0], Some(true))];
        let plain = render_table(&rows, &AlarmSettings::default(), false);
        assert!(!plain.contains('\x1b'), "{plain:?}");
        let coloured = render_table(&rows, &AlarmSettings::default(), true);
        assert!(coloured.contains("\x1b[1;31mALARM\x1b[0m"), "{coloured:?}");
    }

    #[test]
    fn json_has_an_alarm_field_on_every_row() {
        let rows = vec![
            row("demoShop", "460", &[80.0, 10.0], Some(true)),
            row("demoShop", "510", &[80.0], Some(false)),
            row("demoShop", "404", &[80.0], None),
        ];
        let v: serde_json::Value = serde_json::from_str(&render_json(&rows)).unwrap();
        let alarms: Vec<&serde_json::Value> =
            v.as_array().unwrap().iter().map(|r| &r["alarm"]).collect();
        assert_eq!(
            alarms,
            [
                &serde_json::json!(true),
                &serde_json::json!(false),
                &serde_json::Value::Null
            ]
        );
        assert_eq!(v[0]["rates"], serde_json::json!([80.0, 10.0]));
        assert_eq!(v[0]["country"], "China");
    }

    #[test]
    fn rates_print_in_the_form_sent() {
        assert_eq!(pct(pcts(&[33.33]).pop()), "33.33");
        assert_eq!(pct(pcts(&[12.5]).pop()), "12.5");
        assert_eq!(pct(pcts(&[7.0]).pop()), "7");
        assert_eq!(pct(None), "-");
        assert_eq!(Rate::from_hundredths(1250), pcts(&[12.5]).pop());
        assert_eq!(Rate::from_hundredths(10_001), None);
        assert_eq!(Rate::from_hundredths(-1), None);
    }
}

/// The latest scheduled tick that ran: how long from its claim until its last pair was done (so
/// far, while it runs), against the schedule's interval after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickSpan {
    pub tick: DateTime<Utc>,
    pub pairs: i64,
    pub took: std::time::Duration,
    pub interval: std::time::Duration,
    pub done: bool,
}

/// One line of at most 80 columns: "last tick 2026-01-31 20:00:00 UTC took 4m 10s of its 10m
/// interval (240000 pairs)".
impl std::fmt::Display for TickSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |d: std::time::Duration| {
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        };
        write!(
            f,
            "last tick {} {} {} of its {} interval ({} pairs)",
            self.tick.format("%Y-%m-%d %H:%M:%S UTC"),
            if self.done { "took" } else { "running for" },
            secs(self.took),
            secs(self.interval),
            self.pairs,
        )
    }
}

/// A run as [`last_tick`] reads it.
struct LastRun {
    scheduled_for: DateTime<Utc>,
    started_at: DateTime<Utc>,
    ended: DateTime<Utc>,
    done: bool,
    pairs: i64,
}

/// The latest scheduled tick that was run (a tick recorded as not run is passed over).
pub async fn last_tick(
    pool: &Db,
    schedule: &crate::config::ScheduleSettings,
) -> anyhow::Result<Option<TickSpan>> {
    let run = sqlx::query_as!(
        LastRun,
        r#"SELECT r.scheduled_for, r.started_at, COALESCE(r.finished_at, now()) AS "ended!",
             r.finished_at IS NOT NULL AS "done!",
             (SELECT count(*) FROM report_submissions s WHERE s.run_id = r.id) AS "pairs!"
         FROM report_runs r
         WHERE r.trigger = 'schedule' AND COALESCE(r.note, '') NOT LIKE 'not run:%'
         ORDER BY r.scheduled_for DESC LIMIT 1"#
    )
    .fetch_optional(pool)
    .await
    .context("reading the last tick from report_runs")?;
    Ok(run.map(|r| TickSpan {
        tick: r.scheduled_for,
        pairs: r.pairs,
        took: (r.ended - r.started_at).to_std().unwrap_or_default(),
        interval: (schedule.next_tick(r.scheduled_for) - r.scheduled_for)
            .to_std()
            .unwrap_or_default(),
        done: r.done,
    }))
}
