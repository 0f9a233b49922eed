//! Several provider accounts in one deployment: each submission signed by its app's account
//! (the fake checks every signature against that account's secret), an app in no account
//! recorded invalid, a -1 that stops one account's sending and not the other's, an app in two
//! accounts refused at start, and `history`, `status` and `record` that know the accounts.

use serde_json::Value;
use sqlx::PgPool;

use crate::cycle::{run_cycle, tick};
use crate::fake_provider::{docs_record_example, Scripted, BACKFILL_PATH, RECORD_PATH};
use crate::helpers::{Output, TestAccount, TestApp, TestConfig};

/// Two accounts: shop reports for shopApp1 and shopApp2, bank for bankApp1 and bankApp2.
fn two_accounts() -> TestConfig {
    TestConfig {
        accounts: TestAccount::two(&["shopApp1", "shopApp2"], &["bankApp1", "bankApp2"]),
        max_in_flight: 1,
        ..TestConfig::default()
    }
}

/// One pair per app, 10 codes sent and 4 typed back, a minute before the tick.
async fn seed(app: &TestApp, apps: &[&str]) {
    for (i, app_id) in apps.iter().enumerate() {
        let bucket = tick() - chrono::Duration::minutes(1);
        app.seed(app_id, 460 + i as i32, bucket, 10, 4).await;
    }
}

/// (appId, Api-Key, the provider's status) of every backfillRate request, by appId.
fn requests(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    let mut all: Vec<_> = app
        .provider
        .received()
        .into_iter()
        .filter(|r| r.path == BACKFILL_PATH)
        .map(|r| {
            (
                r.body["appId"].as_str().unwrap_or_default().to_owned(),
                r.headers["api-key"].clone(),
                r.answered_status.clone(),
            )
        })
        .collect();
    all.sort();
    all
}

/// (app_id, account, state, attempts, reason) of every submission, by app.
async fn rows(app: &TestApp) -> Vec<(String, Option<String>, String, i32, Option<String>)> {
    sqlx::query_as(
        "SELECT app_id, account, state, attempts, reason FROM report_submissions ORDER BY app_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn each_submission_is_signed_by_its_apps_account_and_an_app_in_none_is_invalid(pool: PgPool) {
    let app = TestApp::with(pool, two_accounts()).await;
    seed(&app, &["shopApp1", "bankApp1", "shopApp2", "lostApp1"]).await;

    let report = run_cycle(&app).await;

    let ok = Some("0".to_owned());
    assert_eq!(
        requests(&app),
        [
            ("bankApp1".into(), "bankKey1".into(), ok.clone()),
            ("shopApp1".into(), "shopKey1".into(), ok.clone()),
            ("shopApp2".into(), "shopKey1".into(), ok),
        ],
        "each signed by its account, and accepted: the fake checked each Sign against that account's secret"
    );
    assert_eq!((report.tally.succeeded, report.tally.invalid), (3, 1));
    let rows = rows(&app).await;
    let accounts: Vec<(&str, Option<&str>, &str)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_deref(), r.2.as_str()))
        .collect();
    assert_eq!(
        accounts,
        [
            ("bankApp1", Some("bank"), "succeeded"),
            ("lostApp1", None, "invalid"),
            ("shopApp1", Some("shop"), "succeeded"),
            ("shopApp2", Some("shop"), "succeeded"),
        ]
    );
    let reason = rows[1].4.as_deref().unwrap();
    assert!(
        reason.contains("app \"lostApp1\" is in no provider account")
            && reason.contains("(shop, bank)"),
        "{reason}"
    );
}

#[sqlx::test]
async fn a_minus_1_for_one_account_stops_that_accounts_sending_and_not_the_others(pool: PgPool) {
    let app = TestApp::with(pool, two_accounts()).await;
    // The bank account's secret in the config is not the one the provider has: every bank
    // request is refused -1, as a mistyped or rotated secret would be.
    app.write_account_secret("bank", "not-the-bank-secret");
    seed(&app, &["bankApp1", "bankApp2", "shopApp1", "shopApp2"]).await;

    let report = run_cycle(&app).await;

    assert_eq!((report.tally.succeeded, report.tally.failed), (2, 2));
    let sent = requests(&app);
    let bank: Vec<_> = sent.iter().filter(|r| r.1 == "bankKey1").collect();
    assert_eq!(bank.len(), 1, "one bank request, then none: {sent:?}");
    assert_eq!(bank[0].2.as_deref(), Some("-1"));
    assert_eq!(
        sent.iter()
            .filter(|r| r.1 == "shopKey1" && r.2.as_deref() == Some("0"))
            .count(),
        2,
        "the shop account went on: {sent:?}"
    );
    let unsent: Vec<_> = rows(&app).await.into_iter().filter(|r| r.3 == 0).collect();
    assert_eq!(unsent.len(), 1, "{unsent:?}");
    let (app_id, account, state, _, reason) = &unsent[0];
    assert!(app_id.starts_with("bankApp") && account.as_deref() == Some("bank"));
    assert_eq!(state, "failed");
    let reason = reason.as_deref().unwrap();
    assert!(
        reason.contains("not sent: provider status -1")
            && reason.contains("for account bank")
            && reason.contains("the api_key and the API secret of account bank"),
        "{reason}"
    );
}

#[sqlx::test]
async fn check_names_each_account_and_an_app_in_two_or_a_missing_secret_stops_the_start(
    pool: PgPool,
) {
    let mut config = two_accounts();
    config.accounts[1].apps.push("shopApp2");
    let app = TestApp::with(pool, config).await;

    let both = app.run(&["check", "--offline"]).await;
    app.write_config(&two_accounts());
    let fine = app.run(&["check", "--offline"]).await;
    std::fs::remove_file(app.dir.path().join("api_secret_bank")).unwrap();
    let unset = app.run(&["run", "--once"]).await;

    assert_eq!(both.code, 2, "{both:?}");
    assert!(
        both.err
            .contains("app shopApp2 is in two accounts, shop and bank"),
        "{both:?}"
    );
    assert_eq!(fine.code, 0, "{fine:?}");
    for line in [
        "as account shop with api key shopKey1: secret set, 2 apps",
        "as account bank with api key bankKey1: secret set, 2 apps",
    ] {
        assert!(fine.out.contains(line), "{fine:?}");
    }
    assert_eq!(unset.code, 2, "{unset:?}");
    assert!(unset.err.contains("account bank"), "{unset:?}");
    assert!(!unset.err.contains("shop-secret-1"), "{unset:?}");
}

#[sqlx::test]
async fn history_and_status_show_and_filter_by_account(pool: PgPool) {
    let app = TestApp::with(pool, two_accounts()).await;
    seed(&app, &["shopApp1", "bankApp1", "bankApp2"]).await;
    run_cycle(&app).await;

    let history = app.run(&["history", "--account", "bank"]).await;
    let status = app.run(&["status"]).await;
    let shop = app.run(&["status", "--account", "shop", "--json"]).await;
    let bad = app.run(&["history", "--account", "no such"]).await;

    assert_eq!(history.code, 0, "{history:?}");
    let lines: Vec<&str> = history.out.lines().collect();
    assert!(lines[0].contains("| account |"), "{}", history.out);
    assert_eq!(
        lines.len(),
        4,
        "a header, a rule, two bank rows: {}",
        history.out
    );
    assert!(
        lines[2..].iter().all(|l| l.contains("| bank ")),
        "{}",
        history.out
    );
    assert_eq!(status.code, 0, "{status:?}");
    let headings: Vec<&str> = status
        .out
        .lines()
        .filter(|l| l.starts_with("account "))
        .collect();
    assert_eq!(
        headings,
        [
            "account bank: 2 pairs, 0 alarms firing",
            "account shop: 1 pair, 0 alarms firing"
        ],
        "{}",
        status.out
    );
    let json: Value = serde_json::from_str(&shop.out).unwrap();
    let pairs = json.as_array().unwrap();
    assert_eq!(pairs.len(), 1, "{}", shop.out);
    assert_eq!(pairs[0]["account"], "shop");
    assert_eq!(pairs[0]["app_id"], "shopApp1");
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.err.contains("--account"), "{bad:?}");
}

#[sqlx::test]
async fn record_asks_as_the_account_named_or_the_apps_and_refuses_to_guess(pool: PgPool) {
    let app = TestApp::with(pool, two_accounts()).await;
    let data = docs_record_example()["data"].clone();
    app.provider.put_record("1234566", data);

    let named = app.run(&["record", "1234566", "--account", "bank"]).await;
    let by_app = app
        .run(&["record", "1234566", "--app-id", "shopApp2"])
        .await;
    let guess = app.run(&["record", "1234566"]).await;
    let Output { code, err, .. } = app.run(&["record", "1234566", "--account", "nobody"]).await;

    let keys: Vec<(String, Option<String>)> = app
        .provider
        .received()
        .into_iter()
        .filter(|r| r.path == RECORD_PATH)
        .map(|r| (r.headers["api-key"].clone(), r.answered_status))
        .collect();
    assert_eq!(named.code, 0, "{named:?}");
    assert_eq!(by_app.code, 0, "{by_app:?}");
    assert_eq!(
        keys,
        [
            ("bankKey1".to_owned(), Some("0".to_owned())),
            ("shopKey1".to_owned(), Some("0".to_owned()))
        ]
    );
    assert_eq!(guess.code, 2, "{guess:?}");
    assert!(
        guess.err.contains("several provider accounts") && guess.err.contains("--account"),
        "{guess:?}"
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("no such account in the config (accounts: shop, bank)"),
        "{err}"
    );
}

#[sqlx::test]
async fn an_account_whose_requests_fail_opens_its_own_breaker_and_the_other_sends_on(pool: PgPool) {
    let app = TestApp::with(pool, two_accounts()).await;
    app.seed_recent("bankApp1").await;
    app.seed_recent("shopApp1").await;
    app.seed_recent("shopApp2").await;
    // A 503 with Retry-After opens the breaker at once.
    let unavailable = Scripted::Reply {
        http: 503,
        headers: vec![("retry-after", "1".to_owned())],
        body: "down for maintenance".to_owned(),
    };
    app.provider.script("bankApp1", vec![unavailable; 100]);

    let Output { code, out, err } = app.run(&["run", "--once", "--deadline", "4s"]).await;

    assert_eq!(code, 1, "the bank pair failed: {out}\n{err}");
    assert!(
        err.contains("provider unreachable for account bank (HTTP 503"),
        "{err}"
    );
    assert!(
        !err.contains("provider unreachable for account shop"),
        "{err}"
    );
    let states: Vec<(String, String)> = rows(&app).await.into_iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(
        states,
        [
            ("bankApp1".to_owned(), "failed".to_owned()),
            ("shopApp1".to_owned(), "succeeded".to_owned()),
            ("shopApp2".to_owned(), "succeeded".to_owned()),
        ]
    );
}
