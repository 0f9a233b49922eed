//! The PostgreSQL pool and the embedded migrations. Connection settings come from
//! [`DatabaseSettings`]; the URL is a secret (it may carry a password) and is never echoed,
//! not even when it does not parse.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseSettings;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Options for the configured database, with the application name set so that operators see
/// the daemon in `pg_stat_activity`.
pub fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let url = settings.url()?;
    // sqlx's parse error may quote the URL; replace it rather than chain it.
    let options = PgConnectOptions::from_str(url.expose_secret()).map_err(|_| {
        anyhow::anyhow!("database.url is not a valid PostgreSQL URL (postgres://user@host/db)")
    })?;
    let timeout = format!("{}ms", settings.statement_timeout.as_millis());
    Ok(options
        .application_name("backfill-reporter")
        // Bounds every statement and every transaction left idle, so that no query, lock wait
        // or forgotten transaction can stall a cycle (or hold a lock) unseen.
        .options([
            ("statement_timeout", timeout.as_str()),
            ("idle_in_transaction_session_timeout", timeout.as_str()),
        ])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// Where the options point, without the password, for messages.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)")
    )
}

/// The database could not be reached (refused, timed out, shut down): not a config error, so
/// commands exit with their own code for it, and the daemon waits it out.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(String);

/// Whether an error, anywhere in its chain, means the server could not be reached or the
/// connection was lost, as opposed to a statement the server refused.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Unreachable>()
            || c.downcast_ref::<sqlx::Error>().is_some_and(|e| match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                // 08: connection exception; 57P01-57P03: server shutting down or starting.
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")
                }),
                _ => false,
            })
    })
}

fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// A pool for the configured database; fails fast when the server does not answer.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = connect_options(settings)?;
    let target = describe(&options);
    pool_options(settings)
        .connect_with(options)
        .await
        // sqlx's Display already includes its source; chaining it would print the cause twice.
        .map_err(|e| Unreachable(format!("connecting to PostgreSQL at {target}: {e}")).into())
}

/// A pool that connects on first use: the daemon starts (and waits out an outage) without one.
pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    Ok(pool_options(settings).connect_lazy_with(connect_options(settings)?))
}

/// Applies pending migrations; returns the descriptions of those it applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    let before = applied_versions(pool).await?;
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect())
}

async fn applied_versions(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .context("reading applied migrations")?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(pool)
        .await
        .context("reading applied migrations")
}
