//! Nothing from outside drives the operator's terminal: an app id holding an ESC or a
//! right-to-left override, or a provider text with escape sequences, is escaped in everything
//! the commands print, and `--json` stays the same JSON.

use serde_json::Value;
use sqlx::PgPool;

use crate::fake_provider::Scripted;
use crate::helpers::{Output, TestApp};

/// Refused as an app id (ESC is a control character): recorded as invalid, shown everywhere.
const ESC_APP: &str = "esc\u{1b}[2Japp";
/// Refused as well (a right-to-left override would turn a log line around): invalid.
const RTL_APP: &str = "rtl\u{202e}Shop1";
/// A valid app whose answer carries an escape sequence.
const REASON_APP: &str = "reasonShop1";

/// What a terminal would act on rather than show: C0 and C1 controls (but the newline), DEL,
/// and the bidirectional overrides, embeddings, isolates and marks.
fn raw(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            (c.is_control() && c != '\n')
                || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
        .collect()
}

/// Runs the command and asserts that its output holds nothing raw.
async fn printed(app: &TestApp, args: &[&str]) -> String {
    let Output { code, out, err } = app.run(args).await;
    assert!(code == 0 || code == 1, "{args:?}: {code} {err}");
    assert_eq!(raw(&out), Vec::<char>::new(), "{args:?} printed raw: {out}");
    out
}

/// Three apps, with one run behind them: ESC_APP and RTL_APP invalid, REASON_APP refused by
/// the provider with a reason that carries an escape sequence and a C1 CSI.
async fn app_with_hostile_names(pool: PgPool) -> TestApp {
    let app = TestApp::new(pool).await;
    app.seed_recent(ESC_APP).await;
    app.seed_recent(RTL_APP).await;
    app.seed_recent(REASON_APP).await;
    app.provider.script(
        REASON_APP,
        vec![Scripted::Status("-22", "bad \u{1b}[31mparam\u{9b}2J")],
    );
    app
}

#[sqlx::test]
async fn run_once_dry_run_and_history_escape_an_app_id_and_a_reason(pool: PgPool) {
    let app = app_with_hostile_names(pool).await;

    let dry = printed(&app, &["run", "--once", "--dry-run"]).await;
    let once = printed(&app, &["run", "--once"]).await;
    let history = printed(&app, &["history"]).await;

    for out in [&dry, &once, &history] {
        assert!(out.contains(r"esc\u{1b}[2Japp"), "{out}");
        assert!(out.contains(r"rtl\u{202e}Shop1"), "{out}");
    }
    for out in [&once, &history] {
        assert!(out.contains(r"bad \u{1b}[31mparam\u{9b}2J"), "{out}");
    }
    let sent: Vec<Value> = app
        .provider
        .received()
        .iter()
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(sent.len(), 1, "only the valid app id is sent");
    assert_eq!(sent[0]["appId"], REASON_APP);
}

#[sqlx::test]
async fn status_escapes_an_app_id_in_its_table_and_its_json_keeps_the_value(pool: PgPool) {
    let app = app_with_hostile_names(pool).await;
    app.run(&["run", "--once"]).await;

    let table = printed(&app, &["status"]).await;
    let json = printed(&app, &["status", "--json"]).await;

    assert!(table.contains(r"esc\u{1b…"), "{table}");
    assert!(table.contains(r"rtl\u{20…"), "{table}");
    assert!(json.contains(r"rtl\u202eShop1"), "{json}");
    let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
    let mut apps: Vec<&str> = rows.iter().map(|r| r["app_id"].as_str().unwrap()).collect();
    apps.sort_unstable();
    assert_eq!(
        apps,
        [ESC_APP, REASON_APP, RTL_APP],
        "the JSON still says what is stored"
    );
}

#[sqlx::test]
async fn record_and_record_json_escape_what_the_provider_sent(pool: PgPool) {
    let app = TestApp::new(pool).await;
    let data = serde_json::json!({
        "orderId": "order\u{202e}1",
        "verifications": {"matched": 0, "oriReceiver": "\u{1b}]0;pwned\u{7}", "channel": "sms"},
        "sms": [{"status": 1, "reason": "fail\u{9b}31m\u{2066}", "sender": "\u{202e}abc"}],
    });
    app.provider.put_record("o-1", data.clone());

    let text = printed(&app, &["record", "o-1"]).await;
    let json = printed(&app, &["record", "o-1", "--json"]).await;

    assert!(text.contains(r"order\u{202e}1"), "{text}");
    assert!(text.contains(r"fail\u{9b}31m\u{2066}"), "{text}");
    assert!(json.contains(r"fail\u009b31m\u2066"), "{json}");
    let answer: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        answer["data"], data,
        "record --json is the provider's JSON, value for value"
    );
}

#[sqlx::test]
async fn record_json_escapes_a_body_that_is_not_json_line_by_line(pool: PgPool) {
    let app = TestApp::new(pool).await;
    app.provider.script_all(vec![Scripted::Reply {
        http: 502,
        headers: vec![("content-type", "text/html".into())],
        body: "<html>\n<title>\u{1b}[2JBad gateway\u{202e}</title>\n</html>\n".into(),
    }]);

    let Output { code, out, err } = app.run(&["record", "o-1", "--json"]).await;

    assert_eq!(code, 1, "{err}");
    assert_eq!(raw(&out), Vec::<char>::new(), "{out}");
    assert_eq!(
        out,
        "<html>\n<title>\\u{1b}[2JBad gateway\\u{202e}</title>\n</html>\n"
    );
}
