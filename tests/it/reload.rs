//! SIGHUP after a credential rotation: the daemon signs with the new API secret from
//! `$CREDENTIALS_DIRECTORY` without a restart.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::fake_provider::BACKFILL_PATH;
use crate::helpers::{eventually, TestApp, TestConfig, API_SECRET};

#[sqlx::test]
async fn sighup_picks_up_a_rotated_api_secret_credential(pool: PgPool) {
    let app = TestApp::with(
        pool,
        TestConfig {
            cron: "*/2 * * * * *".into(),
            ..TestConfig::default()
        },
    )
    .await;
    app.seed(
        "rotaApp1",
        460,
        chrono::Utc::now() - chrono::Duration::minutes(5),
        10,
        4,
    )
    .await;
    let credentials = tempfile::tempdir().unwrap();
    let secret_file = credentials.path().join("api_secret");
    std::fs::write(&secret_file, format!("{API_SECRET}\n")).unwrap();
    let mut child = app
        .command(&["run"])
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let sink = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let accepted_since = |since: SystemTime| {
        app.provider
            .received()
            .into_iter()
            .filter(|r| r.path == BACKFILL_PATH && r.at >= since)
            .filter(|r| r.answered_status.as_deref() == Some("0"))
            .count()
    };
    eventually(
        Duration::from_secs(20),
        "a submission with the first secret",
        || async { accepted_since(SystemTime::UNIX_EPOCH) > 0 },
    )
    .await;

    // Rotation: the provider's console first, then the credential file, then a reload.
    let rotated = "rotated-secret-2";
    app.provider.set_secret(rotated);
    std::fs::write(&secret_file, format!("{rotated}\n")).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap()
        .success());
    eventually(Duration::from_secs(20), "the reload", || async {
        log.lock().unwrap().contains("config reloaded")
    })
    .await;
    let reloaded = SystemTime::now();
    eventually(
        Duration::from_secs(20),
        "a submission signed with the rotated secret",
        || async { accepted_since(reloaded) > 0 },
    )
    .await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
}
