//! `status` through the binary: one line per pair that fits 80 columns, the collapsing country
//! flagged, no colour when not on a terminal, and `--json` with an `alarm` field per row.

use serde_json::Value;
use sqlx::PgPool;

use crate::alarm::{app_with_alarm, run_tick};
use crate::fake_provider::Scripted;
use crate::helpers::{Output, TestApp, TestConfig};

/// Five hourly ticks: demoShop/460 at 80% then 10%, demoShop/510 at 60%, demoBank/404 once.
async fn history(app: &TestApp) {
    for n in 0..4 {
        run_tick(
            app,
            n,
            &[("demoShop", 460, 40, 32), ("demoShop", 510, 50, 30)],
        )
        .await;
    }
    let last = [
        ("demoShop", 460, 40, 4),
        ("demoShop", 510, 50, 30),
        ("demoBank", 404, 8, 7),
    ];
    run_tick(app, 4, &last).await;
}

#[sqlx::test]
async fn status_shows_each_pair_with_its_country_sparkline_and_the_collapse_flagged(pool: PgPool) {
    let app = app_with_alarm(pool, "baseline_samples = 4").await;
    history(&app).await;

    let Output { code, out, err } = app.run(&["status"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(!out.contains('\x1b'), "no colour on a pipe: {out:?}");
    for line in out.lines() {
        assert!(line.chars().count() <= 79, "too wide: {line:?}");
    }
    let all: Vec<&str> = out.lines().collect();
    // The ticks are on the whole hour, the test schedule hourly at minute M: the interval from
    // the last tick to the schedule's next one is M minutes (an hour when M is 0).
    let minute: u32 = app.config.cron.split(' ').next().unwrap().parse().unwrap();
    let interval = match minute {
        0 => "1h".to_owned(),
        m => format!("{m}m"),
    };
    assert!(
        all[0].starts_with("last tick ")
            && all[0].ends_with(&format!(" of its {interval} interval (3 pairs)")),
        "the last tick against its interval first: {out}"
    );
    let lines = &all[1..];
    assert!(
        lines[0].starts_with("APP       MCC COUNTRY         RATE  BASE ACCEPTED, 24 TICKS"),
        "{out}"
    );
    assert_eq!(
        lines[1],
        "demoBank  404 India           87.5     -                        █ ok      -"
    );
    assert_eq!(
        lines[2],
        "demoShop  460 China             10    80                    ▇▇▇▇▁ ok      ALARM"
    );
    assert_eq!(
        lines[3],
        "demoShop  510 Indonesia         60    60                    ▅▅▅▅▅ ok      ok"
    );
    assert!(out.contains("3 pairs, 1 alarm firing."), "{out}");
    assert_eq!(lines[7], "ALARM demoShop 460 China: 10% vs baseline 80%");
    assert!(
        lines[8].starts_with("      4 of 40 codes typed back; firing since "),
        "{out}"
    );
    assert!(lines[8].ends_with(" UTC"), "{out}");
}

#[sqlx::test]
async fn status_json_has_one_object_per_pair_with_an_alarm_field(pool: PgPool) {
    let app = app_with_alarm(pool, "baseline_samples = 4").await;
    history(&app).await;

    let Output { code, out, err } = app.run(&["status", "--json"]).await;

    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).expect("one JSON document");
    let rows = rows.as_array().unwrap();
    let by_pair = |app_id: &str, mcc: &str| {
        rows.iter()
            .find(|r| r["app_id"] == app_id && r["mcc"] == mcc)
            .unwrap_or_else(|| panic!("{app_id}/{mcc} in {out}"))
            .clone()
    };
    let collapsed = by_pair("demoShop", "460");
    assert_eq!(collapsed["alarm"], true);
    assert_eq!(collapsed["country"], "China");
    assert_eq!(collapsed["country_itu"], "China (People's Republic of)");
    assert_eq!(collapsed["rate"], 10.0);
    assert_eq!(collapsed["baseline"], 80.0);
    assert_eq!(
        collapsed["rates"],
        serde_json::json!([80.0, 80.0, 80.0, 80.0, 10.0])
    );
    assert_eq!(collapsed["state"], "succeeded");
    assert!(collapsed["alarm_since"].is_string());
    assert_eq!(by_pair("demoShop", "510")["alarm"], false);
    assert_eq!(by_pair("demoBank", "404")["alarm"], Value::Null);
    assert_eq!(rows.len(), 3);
}

#[sqlx::test]
async fn status_app_id_limits_the_rows_and_a_bad_one_exits_2(pool: PgPool) {
    let app = app_with_alarm(pool, "baseline_samples = 4").await;
    history(&app).await;

    let Output { code, out, err } = app.run(&["status", "--app-id", "demoBank", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["app_id"], "demoBank");

    let Output { code, err, .. } = app.run(&["status", "--app-id", "ab"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--app-id"), "{err}");
}

#[sqlx::test]
async fn status_on_an_empty_database_says_so(pool: PgPool) {
    let app = TestApp::new(pool).await;

    let Output { code, out, err } = app.run(&["status"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 pairs, 0 alarms firing."), "{out}");
    let Output { code, out, .. } = app.run(&["status", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");
}

#[sqlx::test]
async fn the_sparkline_plots_only_accepted_rates_and_marks_the_ticks_without_one(pool: PgPool) {
    let window = TestConfig {
        window: "1h".into(),
        ..TestConfig::default()
    };
    let app = TestApp::with(pool, window).await;
    // Five hourly ticks at 80%, but the provider refuses tick 2's report (a 10% rate) and
    // tick 3 has too few codes to send.
    app.provider.script(
        "gapShop1",
        vec![
            Scripted::Status("0", "success"),
            Scripted::Status("0", "success"),
            Scripted::Status("-22", "param"),
        ],
    );
    for n in 0..5 {
        let (sent, backfilled) = match n {
            2 => (40, 4),
            3 => (0, 0),
            _ => (40, 32),
        };
        run_tick(&app, n, &[("gapShop1", 460, sent, backfilled)]).await;
    }
    let states: Vec<String> = app
        .submissions()
        .await
        .into_iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        states,
        ["succeeded", "succeeded", "failed", "skipped", "succeeded"]
    );

    let table = app.run(&["status"]).await.out;
    let json = app.run(&["status", "--json"]).await.out;

    let line = table.lines().find(|l| l.starts_with("gapShop1")).unwrap();
    assert!(line.contains(" ▇▇··▇ ok "), "{table}");
    assert!(table.contains("·: none taken."), "{table}");
    let rows: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        rows[0]["rates"],
        serde_json::json!([80.0, 80.0, null, null, 80.0])
    );
}
