//! A local sandbox of the iTniotech OTP API for `scripts/demo` and `scripts/systemd-smoke`: the
//! strict fake the integration tests use (`tests/it/fake_provider.rs`, included as it is, so
//! there is one fake to keep right), served on loopback until SIGTERM or SIGINT, plus a webhook
//! sink that prints the alerts it receives. Nothing here reaches the internet.
//!
//! ```text
//! sandbox_provider --api-key KEY --secret-file PATH [--apps APP,APP…] [--api-key KEY …]
//! ```
//!
//! Each `--api-key` starts an account, with the `--secret-file` and `--apps` after it (an
//! account without `--apps` takes any app; `SANDBOX_FAIL_RATE=0.1` fails that share of the
//! requests transiently), as a company with several accounts has them. It
//! prints `provider URL` and `webhook URL` lines first, then one line per alert, and at exit
//! the number of backfillRate requests by the status answered. The secret is read from a file:
//! a command line is visible to every user of the machine.

#[path = "../tests/it/fake_provider.rs"]
mod fake_provider;

use std::collections::BTreeMap;
use std::io::Write;

use axum::routing::post;
use axum::Router;
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ! {
    eprintln!(
        "usage: sandbox_provider --api-key KEY --secret-file PATH [--apps APP,APP…] [--api-key KEY …]"
    );
    std::process::exit(2);
}

/// One `--api-key` with what follows it.
#[derive(Default)]
struct Account {
    key: String,
    secret_file: Option<String>,
    apps: Vec<String>,
}

fn accounts() -> Vec<Account> {
    let mut accounts: Vec<Account> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match (arg.as_str(), accounts.last_mut()) {
            ("--api-key", _) => accounts.push(Account {
                key: value,
                ..Account::default()
            }),
            ("--secret-file", Some(a)) => a.secret_file = Some(value),
            ("--apps", Some(a)) => a.apps = value.split(',').map(str::to_owned).collect(),
            _ => usage(),
        }
    }
    if accounts.is_empty() || accounts.iter().any(|a| a.secret_file.is_none()) {
        usage();
    }
    accounts
}

fn read_secret(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
        Err(e) => {
            eprintln!("sandbox_provider: reading {path}: {e}");
            std::process::exit(2);
        }
    }
}

/// Prints each alert's `text` (the line a chat would show) as it arrives.
async fn alert(body: String) -> &'static str {
    let text = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["text"].as_str().map(str::to_owned))
        .unwrap_or(body);
    println!("webhook received:\n{text}");
    let _ = std::io::stdout().flush();
    "ok"
}

#[tokio::main]
async fn main() {
    let accounts = accounts();
    let first = &accounts[0];
    let secret = read_secret(first.secret_file.as_deref().unwrap_or_default());
    let provider = fake_provider::FakeProvider::start(&first.key, &secret).await;
    // Every account again, the first one too, so that each takes only its own apps.
    for a in &accounts {
        let apps: Vec<&str> = a.apps.iter().map(String::as_str).collect();
        let secret = read_secret(a.secret_file.as_deref().unwrap_or_default());
        provider.add_account(&a.key, &secret, &apps);
    }
    if let Ok(rate) = std::env::var("SANDBOX_FAIL_RATE") {
        // A flaky provider, for a demo whose retries and failures have something to show.
        provider.fail_randomly(rate.parse().unwrap_or(0.0));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding the webhook sink on loopback");
    let webhook = format!(
        "http://{}/hooks/demo",
        listener.local_addr().expect("webhook address")
    );
    tokio::spawn(async move {
        let app = Router::new().route("/hooks/demo", post(alert));
        let _ = axum::serve(listener, app).await;
    });
    println!("provider {}", provider.base_url);
    println!("webhook {webhook}");
    let _ = std::io::stdout().flush();

    let (mut term, mut int) = (
        signal(SignalKind::terminate()).expect("SIGTERM handler"),
        signal(SignalKind::interrupt()).expect("SIGINT handler"),
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    for r in provider
        .received()
        .iter()
        .filter(|r| r.path == fake_provider::BACKFILL_PATH)
    {
        let status = r
            .answered_status
            .clone()
            .unwrap_or_else(|| format!("HTTP {}", r.answered_http));
        *by_status.entry(status).or_default() += 1;
    }
    println!("backfillRate requests by status: {by_status:?}");
}
