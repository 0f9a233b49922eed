//! SIGHUP after a credential rotation: the daemon signs with the new API secret from
//! `$CREDENTIALS_DIRECTORY` without a restart.

use std::time::{Duration, SystemTime};

use sqlx::PgPool;

use crate::fake_provider::BACKFILL_PATH;
use crate::helpers::{eventually, Daemon, Stopped, TestAccount, TestApp, TestConfig, API_SECRET};

#[sqlx::test]
async fn sighup_picks_up_a_rotated_api_secret_credential(pool: PgPool) {
    let app = TestApp::with(pool, TestConfig::every_two_seconds()).await;
    app.seed_recent("rotaApp1").await;
    let credentials = tempfile::tempdir().unwrap();
    let secret_file = credentials.path().join("api_secret");
    std::fs::write(&secret_file, format!("{API_SECRET}\n")).unwrap();
    let daemon = Daemon::start_with(&app, &[("CREDENTIALS_DIRECTORY", credentials.path())]);
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
    daemon.signal("HUP").await;
    daemon
        .wait_log("config reloaded", Duration::from_secs(20))
        .await;
    let reloaded = SystemTime::now();
    eventually(
        Duration::from_secs(20),
        "a submission signed with the rotated secret",
        || async { accepted_since(reloaded) > 0 },
    )
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
}

#[sqlx::test]
async fn sighup_moves_new_connections_to_a_rotated_database_credential(_pool: PgPool) {
    let server = crate::chaos::PgServer::start();
    let admin = PgPool::connect(&server.url("postgres")).await.unwrap();
    for sql in [
        "CREATE ROLE rot_old LOGIN SUPERUSER",
        "CREATE ROLE rot_new LOGIN SUPERUSER",
        "CREATE DATABASE rot",
    ] {
        sqlx::query(sql).execute(&admin).await.unwrap();
    }
    let as_role = |role: &str| server.url("rot").replace("postgres@", &format!("{role}@"));
    let pool = PgPool::connect(&server.url("rot")).await.unwrap();
    backfill_reporter::db::migrate(&pool.clone().into())
        .await
        .unwrap();
    let app = TestApp::on(pool, as_role("rot_old"), TestConfig::every_two_seconds()).await;
    app.seed_recent("rotaDb01").await;
    let credentials = tempfile::tempdir().unwrap();
    let credential = credentials.path().join("database_url");
    std::fs::write(&credential, format!("{}\n", as_role("rot_old"))).unwrap();
    let daemon = Daemon::start_with(&app, &[("CREDENTIALS_DIRECTORY", credentials.path())]);
    daemon.wait_log("cycle for", Duration::from_secs(15)).await;

    std::fs::write(&credential, format!("{}\n", as_role("rot_new"))).unwrap();
    daemon.signal("HUP").await;
    daemon
        .wait_log("database settings reloaded", Duration::from_secs(10))
        .await;
    // The old credential is revoked and its sessions cut: the daemon carries on as the new one.
    sqlx::query("ALTER ROLE rot_old NOLOGIN")
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rot_old'")
        .execute(&admin)
        .await
        .unwrap();
    let revoked = chrono::Utc::now();
    eventually(
        Duration::from_secs(20),
        "a cycle after the rotation",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM report_runs WHERE started_at > $1 AND succeeded = 1",
            )
            .bind(revoked)
            .fetch_one(&app.pool)
            .await
            .unwrap()
                >= 2
        },
    )
    .await;
    let roles: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity \
         WHERE datname = 'rot' AND application_name = 'backfill-reporter'",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert_eq!(roles, ["rot_new"], "{log}");
    admin.close().await;
}

#[sqlx::test]
async fn sighup_adds_an_account_whose_apps_are_then_signed_with_its_key(pool: PgPool) {
    let two = TestConfig {
        accounts: TestAccount::two(&["shopApp1"], &["bankApp1"]),
        ..TestConfig::every_two_seconds()
    };
    let app = TestApp::with(pool, two.clone()).await;
    let mut shop_only = two.clone();
    shop_only.accounts.truncate(1);
    app.write_config(&shop_only);
    app.seed_recent("shopApp1").await;
    app.seed_recent("bankApp1").await;
    let signed_by = |key: &str| {
        app.provider
            .received()
            .into_iter()
            .filter(|r| r.path == BACKFILL_PATH && r.headers["api-key"] == key)
            .filter(|r| r.answered_status.as_deref() == Some("0"))
            .count()
    };
    let daemon = Daemon::start(&app);
    daemon
        .wait_log("in no provider account", Duration::from_secs(20))
        .await;

    app.write_config(&two);
    daemon.signal("HUP").await;
    daemon
        .wait_log("config reloaded", Duration::from_secs(20))
        .await;
    eventually(
        Duration::from_secs(20),
        "bankApp1 reported by the bank account",
        || async { signed_by("bankKey1") > 0 },
    )
    .await;
    let Stopped { code, log } = daemon.stop().await;

    assert_eq!(code, 0, "{log}");
    assert!(signed_by("shopKey1") > 0);
    let bank: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM report_submissions WHERE app_id = 'bankApp1' ORDER BY scheduled_for",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        bank.first().map(String::as_str),
        Some("invalid"),
        "{bank:?}"
    );
    assert!(bank.iter().any(|s| s == "succeeded"), "{bank:?}");
}
