//! The binary as operators use it: exit codes, what it prints, what it never prints.

use backfill_reporter::app::cli::Cli;
use clap::CommandFactory;
use sqlx::PgPool;

use crate::fake_provider::{docs_record_example, Scripted};
use crate::helpers::{isolated, Output, TestApp, TestConfig, API_SECRET, BIN};

#[sqlx::test]
async fn record_prints_a_readable_summary_and_exits_0_when_found(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.provider
        .put_record("1234566", docs_record_example()["data"].clone());

    let Output { code, out, err } = app
        .run(&["record", "1234566", "--app-id", "ad454212"])
        .await;

    assert_eq!(code, 0, "{err}");
    for expected in [
        "order      1234566",
        "channel    call",
        "matched    verified (0)",
        "checked at 2022-07-12T13:39:47+08:00",
        "sms #1",
        "status   success (successR)",
        "0.000002 in total for 1 charged part (currency not stated by the provider)",
        "settled 0.01368 EUR in total (unit price 0.01 EUR, quoted exchange rate 0.938)",
        "call #1",
        "status   failed (code 100005: Temporarily Unavailable)",
        "billing 20+20",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    for wrong in ["charged parts", "unit 0.01", ") (", "verified 2022"] {
        assert!(!out.contains(wrong), "{wrong:?} in:\n{out}");
    }
}

#[sqlx::test]
async fn record_says_verification_failed_never_verified_when_the_check_failed(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut data = docs_record_example()["data"].clone();
    data["verifications"]["matched"] = 2.into();
    data["sms"][0]["chargeCnt"] = 2.into();
    data["call"][0]["terminationReason"] = serde_json::Value::Null;
    app.provider.put_record("1234566", data);

    let Output { code, out, err } = app.run(&["record", "1234566"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("matched    verification failed (2)\n"),
        "{out}"
    );
    assert!(
        out.contains("checked at 2022-07-12T13:39:47+08:00\n"),
        "{out}"
    );
    assert!(!out.contains("verified"), "{out}");
    assert!(out.contains("for 2 charged parts"), "{out}");
    assert!(out.contains("status   failed (code 100005)\n"), "{out}");
}

#[sqlx::test]
async fn record_json_prints_the_providers_answer(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.provider
        .put_record("1234566", docs_record_example()["data"].clone());
    let Output { code, out, .. } = app.run(&["record", "1234566", "--json"]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "0");
    assert_eq!(v["data"], docs_record_example()["data"]);
}

#[sqlx::test]
async fn record_exits_1_with_the_providers_status_and_reason_on_stderr(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let Output { code, out, err } = app.run(&["record", "no-such-order"]).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("status -22, reason orderId not found"),
        "{err}"
    );

    app.provider
        .script_all(vec![Scripted::Status("-2", "ip not allowed")]);
    let Output { code, err, .. } = app.run(&["record", "1234566"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("status -2, reason ip not allowed"), "{err}");
}

#[sqlx::test]
async fn a_bad_config_exits_2_naming_the_key_and_the_file(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(
        &app.config_path,
        text.replace("request_timeout", "request_timout"),
    )
    .unwrap();
    let Output { code, err, .. } = app.run(&["record", "1234566"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("request_timout"), "{err}");
    assert!(err.contains(app.config_path.to_str().unwrap()), "{err}");

    std::fs::write(
        &app.config_path,
        text.replace(
            &format!("cron = {:?}", app.config.cron),
            "cron = \"*/10 * *\"",
        ),
    )
    .unwrap();
    let Output { code, err, .. } = app.run(&["check"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("schedule.cron"), "{err}");
}

#[sqlx::test]
async fn usage_errors_exit_2(pool: PgPool) {
    let app = TestApp::new(pool).await;
    assert_eq!(app.run(&["record"]).await.code, 2);
    assert_eq!(app.run(&["record", "x", "--app-id", "abc"]).await.code, 2);
    assert_eq!(app.run(&["run", "--dry-run"]).await.code, 2);
    assert_eq!(app.run(&["frobnicate"]).await.code, 2);
}

#[sqlx::test]
async fn the_secret_never_reaches_the_output_even_at_trace_level(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.provider
        .put_record("1234566", docs_record_example()["data"].clone());
    let out = app
        .command(&["record", "1234566"])
        .env("RUST_LOG", "trace")
        .output()
        .await
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{all}");
    assert!(!all.contains(API_SECRET), "the secret leaked:\n{all}");
    let sign = &app.provider.received()[0].headers["sign"];
    assert!(!all.contains(sign.as_str()), "the signature leaked");
}

/// The subcommands by name: the systemd unit, the package's scripts, the README and every
/// operator's cron job call them so, so a rename breaks them and must show up here.
const SUBCOMMANDS: [&str; 6] = ["run", "record", "migrate", "check", "history", "status"];

#[tokio::test]
async fn help_and_version_work_without_a_config_and_name_every_subcommand() {
    let defined: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    assert_eq!(
        defined, SUBCOMMANDS,
        "a subcommand was added, renamed or removed"
    );

    let out = isolated(BIN).arg("--help").output().await.unwrap();

    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    // The first word of each entry under "Commands:" (a wrapped description goes deeper).
    let listed: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(listed[..SUBCOMMANDS.len()], SUBCOMMANDS, "{help}");
    assert_eq!(listed[SUBCOMMANDS.len()..], ["help"], "{help}");
    for name in SUBCOMMANDS {
        let out = isolated(BIN).args([name, "--help"]).output().await.unwrap();
        let usage = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name} --help: {usage}");
        assert!(
            usage.contains(&format!("Usage: backfill-reporter {name}")),
            "{name} --help: {usage}"
        );
    }
    let out = isolated(BIN).arg("--version").output().await.unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("backfill-reporter "));
}

#[sqlx::test]
async fn history_shows_the_callback_time_that_was_sent_beside_the_tick(pool: PgPool) {
    let app = TestApp::new(pool).await; // schedule.timezone Asia/Shanghai
    app.seed_recent("cbTime01").await;
    assert_eq!(app.run(&["run", "--once"]).await.code, 0);
    let sent = app.provider.backfill_bodies()[0]["callbackTime"]
        .as_str()
        .unwrap()
        .to_owned();

    let Output { code, out, err } = app.run(&["history"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(sent.ends_with("+08:00"), "{sent}");
    assert!(out.contains("callbackTime sent"), "{out}");
    let row = out.lines().find(|l| l.contains("cbTime01")).unwrap();
    assert!(row.contains(&format!("| {sent} |")), "{sent} not in {row}");
}

#[tokio::test]
async fn run_help_and_its_man_page_give_exit_3_for_an_unreachable_database() {
    let out = isolated(BIN)
        .args(["run", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout).replace('\n', " ");
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let page = include_str!("../../dist/man/backfill-reporter-run.1");

    assert!(out.status.success());
    assert!(
        help.contains("2 on a config error, 3 when the database cannot be reached"),
        "{help}"
    );
    assert!(!help.contains("config or database error"), "{help}");
    assert!(
        page.contains("3 when the database cannot be reached"),
        "{page}"
    );
}

#[sqlx::test]
async fn check_validates_everything_and_prints_the_next_five_fire_times(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let Output { code, out, err } = app.run(&["check"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("database") && out.contains("connected"),
        "{out}"
    );
    assert!(
        out.contains("columns app_id, mcc, backfill_number, cardinal_number present"),
        "{out}"
    );
    let times: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(times.len(), 5, "{out}");
    let times: Vec<_> = times
        .iter()
        .map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap())
        .collect();
    for t in &times {
        assert_eq!(t.offset().local_minus_utc(), 8 * 3600, "in Asia/Shanghai");
        assert_eq!(t.timestamp() % 60, 0, "on a whole minute");
    }
    assert!(
        times
            .windows(2)
            .all(|w| (w[1] - w[0]).num_seconds() == 3600),
        "hourly, as the default test schedule: {out}"
    );
    assert!(app.provider.received().is_empty(), "check sends nothing");
}

#[sqlx::test]
async fn json_logs_are_one_object_per_line_with_the_cycle_summary(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_recent("jsonApp1").await;

    let Output { code, err, .. } = app.run(&["--log-format", "json", "run", "--once"]).await;

    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let summary = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("cycle for"))
        })
        .expect("a summary line");
    assert_eq!(summary["level"], "INFO");
    assert_eq!(
        (summary["pairs"].as_i64(), summary["succeeded"].as_i64()),
        (Some(1), Some(1))
    );
    assert!(
        !err.contains('\u{1b}'),
        "no colour codes when not on a terminal"
    );
}

#[tokio::test]
async fn the_unedited_example_config_is_refused_until_the_accounts_key_is_put_in() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"),
        &config,
    )
    .unwrap();
    for args in [&["check", "--offline"][..], &["check"], &["run"]] {
        let out = isolated(BIN)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("BACKFILL_REPORTER_API_SECRET", "s3cret")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);

        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("provider.api_key"), "{args:?}: {err}");
        assert!(err.contains("\"YOUR_API_KEY\""), "{args:?}: {err}");
        assert!(
            err.contains("put your account's API key there"),
            "{args:?}: {err}"
        );
    }
}

#[sqlx::test]
async fn a_minus_2_is_explained_with_the_pages_words_and_no_more(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_recent("ipLimit1").await;
    app.provider
        .script_all(vec![Scripted::Status("-2", "ip limited")]);

    let Output { code, out, err } = app.run(&["run", "--once"]).await;

    assert_eq!(code, 1, "{out}\n{err}");
    let stop = err
        .lines()
        .find(|l| l.contains("stopping the cycle"))
        .unwrap_or_else(|| panic!("no stop line in {err}"));
    assert!(stop.contains("provider status -2 (ip limited)"), "{stop}");
    assert!(stop.contains("\"ip限制\" (IP restriction)"), "{stop}");
    for claim in ["allow-list", "console"] {
        assert!(!stop.contains(claim), "claims {claim:?}: {stop}");
    }
}

#[sqlx::test]
async fn record_json_prints_the_body_as_received_even_when_the_provider_refuses(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let refusal = serde_json::json!({"status": "-1", "reason": "auth", "trace": "a1b2"});
    app.provider
        .script_all(vec![Scripted::json(401, refusal.clone()), Scripted::Html]);

    let Output { code, out, err } = app.run(&["record", "1234566", "--json"]).await;
    let Output {
        code: html_code,
        out: html_out,
        ..
    } = app.run(&["record", "1234566", "--json"]).await;

    assert_eq!(code, 1, "{err}");
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(printed, refusal);
    assert!(err.contains("status -1, reason auth, HTTP 401"), "{err}");
    assert_eq!(html_code, 1);
    assert!(html_out.starts_with("<html>"), "{html_out}");
}

#[sqlx::test]
async fn record_reads_a_leg_with_both_currency_keys_and_legs_sent_as_objects(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let mut data = docs_record_example()["data"].clone();
    data["sms"][0]["settleCurrency"] = "USD".into(); // beside the example's "currency": "EUR"
    data["call"] = data["call"][0].clone(); // one object where the table says JSONArray
    data["newTopLevelField"] = serde_json::json!({"x": 1});
    app.provider.put_record("1234566", data);

    let Output { code, out, err } = app.run(&["record", "1234566"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(out.contains("settled 0.01368 USD"), "{out}");
    assert!(out.contains("call #1"), "{out}");
    assert!(
        out.contains("failed (code 100005: Temporarily Unavailable)"),
        "{out}"
    );
}

#[sqlx::test]
async fn record_words_the_call_leg_no_more_precisely_than_the_page(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.provider
        .put_record("1234566", docs_record_example()["data"].clone());

    let Output { code, out, err } = app.run(&["record", "1234566"]).await;

    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("cost     0 USD, rate 0.138 USD, regional supplier 661"),
        "{out}"
    );
    assert!(
        out.contains("duration call 0, charged 0 (unit not stated by the provider)"),
        "{out}"
    );
    for claim in ["USD/min", "region 661", "0 s"] {
        assert!(!out.contains(claim), "claims {claim:?}:\n{out}");
    }
}

/// The test config with `from` replaced by `to`, run through `check`.
async fn check_with(app: &TestApp, from: &str, to: &str) -> Output {
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    assert!(text.contains(from), "{from:?} not in the test config");
    std::fs::write(&app.config_path, text.replacen(from, to, 1)).unwrap();
    let result = app.run(&["check"]).await;
    std::fs::write(&app.config_path, text).unwrap();
    result
}

#[sqlx::test]
async fn check_refuses_cleartext_to_a_remote_provider_and_a_password_in_base_url(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = app.provider.base_url.clone();
    for (url, why) in [
        (
            "http://api.itniotech.com/otp".to_owned(),
            "loopback host only",
        ),
        (
            base.replace("http://", "http://u:hunter2@"),
            "user name or password",
        ),
        (
            "https://u:hunter2@api.itniotech.com/otp".to_owned(),
            "user name or password",
        ),
    ] {
        let Output { code, out, err } = check_with(&app, &base, &url).await;

        assert_eq!(code, 2, "{url}: {out}{err}");
        assert!(
            err.contains("provider.base_url") && err.contains(why),
            "{err}"
        );
        assert!(!format!("{out}{err}").contains("hunter2"), "{out}{err}");
    }
    assert!(app.provider.received().is_empty());
}

#[sqlx::test]
async fn a_base_url_scheme_in_capitals_is_http_all_the_way_to_the_provider(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let upper = app.provider.base_url.replace("http://", "HTTP://");
    app.write_config(&TestConfig {
        base_url: Some(upper),
        max_attempts: Some(1),
        ..app.config.clone()
    });
    app.seed_recent("capsUrl1").await;

    let checked = app.run(&["check", "--offline"]).await;
    let Output { code, out, err } = app.run(&["run", "--once"]).await;

    assert_eq!(checked.code, 0, "{}", checked.err);
    assert!(
        checked
            .out
            .contains(&format!("provider {} with", app.provider.base_url)),
        "{}",
        checked.out
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(app.submissions_in("succeeded").await, 1);
    assert_eq!(app.provider.backfill_bodies().len(), 1);
}

#[sqlx::test]
async fn each_out_of_range_setting_exits_2_naming_the_key_and_the_range(pool: PgPool) {
    let app = TestApp::new(pool).await;
    for (from, to, expected) in [
        (
            "request_timeout = \"5s\"",
            "request_timeout = \"0s\"",
            "provider.request_timeout = \"0s\" is out of range: allowed 1s to 5m",
        ),
        (
            "request_timeout = \"5s\"",
            "request_timeout = \"1h\"",
            "provider.request_timeout = \"1h\" is out of range: allowed 1s to 5m",
        ),
        (
            "max_in_flight = 4",
            "max_in_flight = 5000",
            "provider.max_in_flight = 5000 is out of range: allowed 1 to 1024",
        ),
        (
            "max_in_flight = 4",
            "max_in_flight = 4\nmax_attempts = 0",
            "provider.max_attempts = 0 is out of range: allowed 1 or more",
        ),
        (
            "[database]\n",
            "[database]\nmax_connections = 1\n",
            "database.max_connections = 1 is out of range: allowed 2 to 100",
        ),
        (
            "window = \"24h\"",
            "window = \"400d\"",
            "source.window = \"400d\" is out of range: allowed 1s to 366d",
        ),
        (
            "retry_backoff = \"10ms\"",
            "retry_backoff = \"0s\"",
            "provider.retry_backoff = \"0s\" is out of range: allowed 10ms to 1m",
        ),
    ] {
        let Output { code, err, .. } = check_with(&app, from, to).await;

        assert_eq!(code, 2, "{to}: {err}");
        assert!(err.contains(expected), "{to}: {err}");
    }
}

#[sqlx::test]
async fn a_secret_file_over_4_kib_exits_2_naming_its_key(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let secret = app.dir.path().join("api_secret");
    std::fs::write(&secret, "x".repeat(64 * 1024)).unwrap();

    let Output { code, out, err } = app.run(&["check", "--offline"]).await;

    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("provider.api_secret_file"), "{err}");
    assert!(err.contains("holds more than 4 KiB"), "{err}");
    assert!(!err.contains("xxx"), "{err}");
}

#[sqlx::test]
async fn a_secret_in_an_inline_table_or_under_a_quoted_key_is_not_echoed(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let base = &app.provider.base_url;
    for (text, key) in [
        (
            format!("provider = {{ base_url = {base:?}, api_key = \"bDqJFiq9\", api_secret = 987654321 }}\n"),
            "provider.api_secret",
        ),
        (
            format!("[provider]\nbase_url = {base:?}\napi_key = \"bDqJFiq9\"\n[database]\n\"url\" = 987654321\n"),
            "database.url",
        ),
    ] {
        std::fs::write(&app.config_path, &text).unwrap();

        let Output { code, out, err } = app.run(&["check"]).await;

        assert_eq!(code, 2, "{err}");
        assert!(!format!("{out}{err}").contains("987654321"), "{err}");
        assert!(
            err.contains(&format!("invalid value for {key} (not shown")),
            "{err}"
        );
    }
}

#[sqlx::test]
async fn a_syntax_error_inside_a_multi_line_secret_prints_nothing_from_the_string(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let text = format!(
        "[provider]\nbase_url = {:?}\napi_key = \"bDqJFiq9\"\napi_secret = \"\"\"\nfirst line\ns3cr3tPart=rest\\q\n\"\"\"\n",
        app.provider.base_url
    );
    std::fs::write(&app.config_path, text).unwrap();

    let Output { code, out, err } = app.run(&["check", "--offline"]).await;

    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 6"), "{err}");
    assert!(!format!("{out}{err}").contains("s3cr3t"), "{err}");
}

#[sqlx::test]
async fn a_reason_with_a_newline_cannot_forge_a_log_line_and_is_stored_capped(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_recent("forgApp1").await;
    let reason = format!(
        "bad\nFORGED 2026-01-01T00:00:00Z INFO backfill_reporter: all good\r\n{}",
        "z".repeat(5_000)
    );
    app.provider.script(
        "forgApp1",
        vec![Scripted::json(
            200,
            serde_json::json!({"status": "-22", "reason": reason}),
        )],
    );

    let Output { code, err, .. } = app.run(&["run", "--once"]).await;

    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines().all(|l| !l.starts_with("FORGED")),
        "a forged line reached the log:\n{err}"
    );
    let (stored, error): (String, String) = sqlx::query_as(
        "SELECT provider_reason, error FROM report_submissions WHERE app_id = 'forgApp1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(stored.starts_with("bad\\nFORGED"), "{stored}");
    assert!(stored.chars().count() <= 501, "{}", stored.chars().count());
    assert!(!stored.chars().any(char::is_control));
    assert!(!error.chars().any(char::is_control), "{error}");
}

#[sqlx::test]
async fn an_unreachable_database_exits_3_a_config_error_2_and_check_offline_needs_no_database(
    pool: PgPool,
) {
    let app = TestApp::new(pool).await;
    let text = std::fs::read_to_string(&app.config_path).unwrap();
    // Nothing listens on port 1.
    let closed = text.replace(&app.db_url, "postgres://backfill_test@127.0.0.1:1/nothing");
    std::fs::write(&app.config_path, &closed).unwrap();

    for args in [
        &["check"][..],
        &["run", "--once"],
        &["history"],
        &["migrate"],
    ] {
        let Output { code, err, .. } = app.run(args).await;
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains("connecting to PostgreSQL at"), "{err}");
    }
    let Output { code, out, err } = app.run(&["check", "--offline"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("--offline"), "{out}");

    std::fs::write(
        &app.config_path,
        closed.replace("[schedule]", "[schedule]\nbogus = 1"),
    )
    .unwrap();
    let Output { code, err, .. } = app.run(&["check", "--offline"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bogus"), "{err}");
}

/// Runs the binary with its stdout a pipe whose reader has gone before anything is written,
/// as `… | head -1` is once `head` has its line.
async fn with_reader_gone(app: &TestApp, args: &[&str]) -> Output {
    let mut child = app
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command finishes within 60 s")
        .unwrap();
    Output {
        code: out.status.code().unwrap_or(-1),
        out: String::new(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[sqlx::test]
async fn every_command_exits_quietly_with_its_own_code_when_its_reader_has_gone(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.seed_recent("pipeApp1").await;
    app.provider
        .put_record("1234566", docs_record_example()["data"].clone());
    for (args, code) in [
        (&["run", "--once", "--dry-run"][..], 0),
        (&["run", "--once"], 0),
        (&["history"], 0),
        (&["status"], 0),
        (&["status", "--json"], 0),
        (&["record", "1234566"], 0),
        (&["record", "1234566", "--json"], 0),
        (&["check"], 0),
        (&["check", "--offline"], 0),
        (&["migrate"], 0),
    ] {
        let Output { code: got, err, .. } = with_reader_gone(&app, args).await;

        assert_eq!(got, code, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            !err.to_lowercase().contains("broken pipe"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        app.submissions_in("succeeded").await,
        1,
        "run --once did its work"
    );
}
