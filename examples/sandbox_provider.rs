//! A local sandbox of the iTniotech OTP API for `scripts/demo` and `scripts/systemd-smoke`: the
//! strict fake the integration tests use (`tests/it/fake_provider.rs`, included as it is, so
//! there is one fake to keep right), served on loopback until SIGTERM or SIGINT, plus a webhook
//! sink that prints the alerts it receives. Nothing here reaches the internet.
//!
//! ```text
//! sandbox_provider --api-key KEY --secret-file PATH
//! ```
//!
//! It prints `provider URL` and `webhook URL` lines first, then one line per alert, and at exit
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
    eprintln!("usage: sandbox_provider --api-key KEY --secret-file PATH");
    std::process::exit(2);
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
    let mut args = std::env::args().skip(1);
    let (mut key, mut secret_file) = (None, None);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--api-key" => key = args.next(),
            "--secret-file" => secret_file = args.next(),
            _ => usage(),
        }
    }
    let (Some(key), Some(secret_file)) = (key, secret_file) else {
        usage()
    };
    let secret = match std::fs::read_to_string(&secret_file) {
        Ok(s) => s.trim_end_matches(['\n', '\r']).to_owned(),
        Err(e) => {
            eprintln!("sandbox_provider: reading {secret_file}: {e}");
            std::process::exit(2);
        }
    };

    let provider = fake_provider::FakeProvider::start(&key, &secret).await;
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
