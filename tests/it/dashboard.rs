//! The Grafana dashboard in `dist/grafana/`: on the demo's counts (`scripts/demo-data.sql`,
//! the file `scripts/demo` loads) and two accounts, 24 hourly ticks fill the report tables;
//! then every variable query and every panel query runs as Grafana would run it (variables
//! interpolated as its SQL data sources quote them, then the PostgreSQL data source's macros
//! expanded), and each must return rows of the shape its panel draws.

use backfill_reporter::domain::run::Trigger;
use backfill_reporter::queue::tick;
use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Timelike, Utc};
use serde_json::Value;
use sqlx::{Column, PgPool, Row, TypeInfo};
use tokio_util::sync::CancellationToken;

use crate::alarm::append_config;
use crate::fake_provider::Scripted;
use crate::helpers::{TestAccount, TestApp, TestConfig};

const DASHBOARD: &str = include_str!("../../dist/grafana/backfill-reporter.json");
const DEMO_DATA: &str = include_str!("../../scripts/demo-data.sql");

/// A variable's value: one (a single-value variable), or several (multi-value or "All").
#[derive(Debug, Clone)]
enum Var {
    One(String),
    Many(Vec<String>),
}

/// Grafana's SQL data sources interpolate a single value with its quotes doubled and nothing
/// around it (the query writes `'$app'`), and a multi-value or "All" variable as quoted
/// literals joined by commas (`IN ($mcc)`). `$name` and `${name}` both name a variable; a
/// name is the whole word after `$`, and `$__…` are Grafana's own.
fn interpolate(sql: &str, vars: &[(&str, Var)]) -> String {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, used) = match after.strip_prefix('{') {
            Some(inner) => {
                let end = inner.find('}').expect("a closed ${…}");
                (&inner[..end], end + 2)
            }
            None => {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            }
        };
        match vars.iter().find(|(n, _)| *n == name) {
            Some((_, Var::One(v))) => out.push_str(&v.replace('\'', "''")),
            Some((_, Var::Many(vs))) => {
                let quoted: Vec<String> = vs
                    .iter()
                    .map(|v| format!("'{}'", v.replace('\'', "''")))
                    .collect();
                out.push_str(&quoted.join(","));
            }
            None => {
                assert!(name.starts_with("__"), "unknown variable ${name} in {sql}");
                out.push('$');
                out.push_str(&after[..used]);
            }
        }
        rest = &after[used..];
    }
    out.push_str(rest);
    out
}

/// The PostgreSQL data source's macros the dashboard uses, expanded as Grafana's backend does
/// (`pkg/tsdb/grafana-postgresql-datasource/macros.go`): times in RFC 3339, UTC. Any other
/// `$__name(…)` is an unknown macro there, and an error here.
fn expand_macros(sql: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let time = |t: DateTime<Utc>| format!("'{}'", t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__") {
        out.push_str(&rest[..at]);
        let open = rest[at..].find('(').expect("a macro call") + at;
        let close = rest[open..].find(')').expect("a closed macro call") + open;
        let (name, arg) = (&rest[at + 3..open], rest[open + 1..close].trim());
        out.push_str(&match name {
            "timeFilter" => format!("{arg} BETWEEN {} AND {}", time(from), time(to)),
            "timeFrom" => time(from),
            "timeTo" => time(to),
            other => panic!("macro $__{other} is not one the dashboard's tests expand"),
        });
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The demo in miniature: its counts, two accounts (shop: demoShop and demoRide; bank:
/// demoBank), its source and alarm settings, and the last 24 hours as scheduled ticks.
/// The provider answers demoRide's first request 503 (a retry) and demoBank's first -22 (a
/// failure), so that the retry and failure panels have something to show.
///
/// The schedule is hourly at the minute of ten minutes ago, not on the whole hour: each
/// tick's deadline is the next tick after now, some 50 minutes away, so that a test started
/// just before a real hour boundary does not see its retry cut short.
async fn demo(pool: PgPool) -> TestApp {
    let last = (Utc::now() - Duration::minutes(10))
        .duration_trunc(Duration::minutes(1))
        .unwrap();
    let config = TestConfig {
        cron: format!("{} * * * *", last.minute()),
        window: "1h".into(),
        min_cardinal: 20,
        accounts: TestAccount::two(&["demoShop", "demoRide"], &["demoBank"]),
        max_in_flight: 8,
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, config).await;
    append_config(&app, "[alarm]\ndrop_points = 20\nbaseline_samples = 6");
    sqlx::raw_sql(DEMO_DATA).execute(&app.pool).await.unwrap();
    app.provider.script("demoRide", vec![Scripted::Http(503)]);
    app.provider
        .script("demoBank", vec![Scripted::Status("-22", "parameter error")]);
    let ctx = app.ctx();
    for hours_ago in (0..24).rev() {
        let tick = last - Duration::hours(hours_ago);
        tick::run(&ctx, tick, Trigger::Schedule, &CancellationToken::new())
            .await
            .unwrap()
            .expect("a tick of its own");
    }
    app
}

/// A query's rows as JSON objects, and its columns with their PostgreSQL types.
async fn run(pool: &PgPool, sql: &str) -> (Vec<Value>, Vec<(String, String)>) {
    let rows = sqlx::query(sql)
        .fetch_all(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {sql}"));
    let columns = rows.first().map_or_else(Vec::new, |r| {
        r.columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
            .collect()
    });
    let json: Vec<Value> = sqlx::query_scalar(&format!("SELECT to_jsonb(q) FROM ({sql}) q"))
        .fetch_all(pool)
        .await
        .unwrap();
    (json, columns)
}

/// The values a variable offers: its `__value` column, or its only one.
async fn options(pool: &PgPool, sql: &str) -> Vec<String> {
    let (rows, columns) = run(pool, sql).await;
    let column = if columns.iter().any(|(n, _)| n == "__value") {
        "__value".to_owned()
    } else {
        columns[0].0.clone()
    };
    rows.iter()
        .map(|r| r[&column].as_str().unwrap().to_owned())
        .collect()
}

/// What a panel draws from: a time series needs a `time` column of timestamps in order, an
/// optional text `metric` naming the series, and numbers; a table any columns.
fn assert_shape(title: &str, format: &str, rows: &[Value], columns: &[(String, String)]) {
    assert!(!rows.is_empty(), "{title}: no rows on the demo data");
    if format != "time_series" {
        return;
    }
    assert_eq!(columns[0], ("time".into(), "TIMESTAMPTZ".into()), "{title}");
    let numbers = ["INT8", "INT4", "NUMERIC", "FLOAT8"];
    let values = columns[1..]
        .iter()
        .filter(|(name, ty)| {
            if name == "metric" {
                assert_eq!(ty, "TEXT", "{title}: metric");
                return false;
            }
            assert!(numbers.contains(&ty.as_str()), "{title}: {name} is {ty}");
            true
        })
        .count();
    assert!(values > 0, "{title}: no value column");
    let times: Vec<&str> = rows.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "{title}: sorted by time"
    );
}

/// The panel titled `title`: its rows, as `panels` collected them.
fn rows_of<'a>(panels: &'a [(String, Vec<Value>)], title: &str) -> &'a [Value] {
    &panels
        .iter()
        .find(|(t, _)| t.starts_with(title))
        .unwrap_or_else(|| panic!("a panel {title}"))
        .1
}

#[sqlx::test]
async fn every_panel_of_the_dashboard_returns_rows_of_its_shape_on_the_demo_data(pool: PgPool) {
    let app = demo(pool).await;
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let variable = |name: &str| -> String {
        let list = dashboard["templating"]["list"].as_array().unwrap();
        let v = list.iter().find(|v| v["name"] == name).unwrap();
        v["query"].as_str().unwrap().to_owned()
    };
    let to = Utc::now();
    let from = to - Duration::hours(24) - Duration::minutes(5);

    let accounts = options(&app.pool, &interpolate(&variable("account"), &[])).await;
    let chosen_accounts = ("account", Var::Many(accounts.clone()));
    let apps = options(
        &app.pool,
        &interpolate(&variable("app"), std::slice::from_ref(&chosen_accounts)),
    )
    .await;
    let app_var = ("app", Var::One("demoShop".into()));
    let mccs = options(
        &app.pool,
        &interpolate(&variable("mcc"), std::slice::from_ref(&app_var)),
    )
    .await;
    let vars = [chosen_accounts, app_var, ("mcc", Var::Many(mccs.clone()))];
    let mut panels: Vec<(String, Vec<Value>)> = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap().replace("$app", "demoShop");
        for target in panel["targets"].as_array().unwrap() {
            let sql = expand_macros(
                &interpolate(target["rawSql"].as_str().unwrap(), &vars),
                from,
                to,
            );
            let (rows, columns) = run(&app.pool, &sql).await;
            assert_shape(&title, target["format"].as_str().unwrap(), &rows, &columns);
            eprintln!(
                "panel {:?}: {} rows; first: {}; last: {}",
                title,
                rows.len(),
                rows[0],
                rows[rows.len() - 1]
            );
            panels.push((title.clone(), rows));
        }
    }

    assert_eq!(accounts, ["bank", "shop"]);
    assert_eq!(apps, ["demoBank", "demoRide", "demoShop"]);
    assert_eq!(
        mccs,
        ["460", "404", "510"],
        "by country name: China, India, Indonesia"
    );
    assert_eq!(panels.len(), 8);
    let rates = rows_of(&panels, "Backfill rate by country");
    assert_eq!(rates.len(), 24 * 3, "three countries at 24 ticks");
    let indonesia: Vec<f64> = rates
        .iter()
        .filter(|r| r["metric"] == "Indonesia (510)")
        .map(|r| r["rate"].as_f64().unwrap())
        .collect();
    assert!(indonesia[..20].iter().all(|r| *r > 60.0), "{indonesia:?}");
    assert!(
        indonesia[22..].iter().all(|r| *r < 15.0),
        "the collapse: {indonesia:?}"
    );
    let outcomes = rows_of(&panels, "Outcomes per tick");
    assert_eq!(outcomes.len(), 24);
    let count = |rows: &[Value], column: &str| -> i64 {
        rows.iter().map(|r| r[column].as_i64().unwrap()).sum()
    };
    assert_eq!(
        count(outcomes, "succeeded") + count(outcomes, "failed"),
        24 * 8
    );
    let now: Vec<(&str, &str)> = rows_of(&panels, "Alarms firing now")
        .iter()
        .map(|r| {
            (
                r["account"].as_str().unwrap(),
                r["country"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        now,
        [("bank", "Indonesia (510)"), ("shop", "Indonesia (510)")]
    );
    let ticks = rows_of(&panels, "Tick duration against its interval");
    assert_eq!(ticks.len(), 24);
    assert!(
        ticks[..23]
            .iter()
            .all(|t| t["interval"].as_f64() == Some(3600.0)),
        "{ticks:?}"
    );
    assert_eq!(count(rows_of(&panels, "Retries per tick"), "retries"), 1);
    let causes: Vec<&str> = rows_of(&panels, "Failures by cause")
        .iter()
        .map(|r| r["metric"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["status -22"]);
}

#[sqlx::test]
async fn the_country_names_in_the_database_are_the_binarys(pool: PgPool) {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT mcc, name FROM mcc_countries ORDER BY mcc")
            .fetch_all(&pool)
            .await
            .unwrap();
    let mut shipped: Vec<(String, String)> =
        backfill_reporter::domain::mcc::parse(backfill_reporter::domain::mcc::DATA)
            .unwrap()
            .into_iter()
            .map(|c| (c.mcc.to_owned(), c.name.to_owned()))
            .collect();
    shipped.sort();

    assert_eq!(rows, shipped);
}

#[test]
fn variables_and_macros_are_interpolated_as_grafana_does() {
    let vars = [
        ("app", Var::One("o'Shop".into())),
        ("mcc", Var::Many(vec!["460".into(), "5'10".into()])),
    ];
    let from = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let to = from + Duration::hours(1);

    let sql = expand_macros(
        &interpolate(
            "WHERE a = '$app' AND b = '${app}' AND m IN ($mcc) AND $__timeFilter(t)",
            &vars,
        ),
        from,
        to,
    );
    let many = interpolate("m IN ($mcc)", &vars);

    assert_eq!(
        sql,
        "WHERE a = 'o''Shop' AND b = 'o''Shop' AND m IN ('460','5''10') AND t BETWEEN \
         '2026-01-01T00:00:00Z' AND '2026-01-01T01:00:00Z'"
    );
    assert_eq!(many, "m IN ('460','5''10')");
}
