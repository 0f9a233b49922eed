//! The embedded migrations, and the concurrent build of the source index that runs before them.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::{Executor, PgPool};

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The advisory lock that lets one instance at a time build the source index ("bfri").
const INDEX_LOCK: i64 = 0x6266_7269;

/// Applies pending migrations; returns the descriptions of those it applied.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<Vec<String>> {
    build_source_index_concurrently(pool).await?;
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

/// Builds the source table's index with `CREATE INDEX CONCURRENTLY` when `otp_counts` already
/// exists (an operator's table, with rows) and the index is missing or left invalid.
///
/// The first migration creates it with a plain `CREATE INDEX IF NOT EXISTS`, inside the
/// migration's transaction: on a populated table that holds a lock blocking every write (the
/// operators' applications counting OTPs) for the whole build, and even queued behind one long
/// transaction it blocks them all. Released migrations are never edited (sqlx checks their
/// checksums), and a `-- no-transaction` migration runs its file as one implicit transaction
/// when it has more than one statement, and cannot be made conditional; so the build happens
/// here, before the migrations, whose `IF NOT EXISTS` then finds the index and only takes that
/// lock for a moment. A database migrated before already has a valid index: nothing is done.
/// An index left invalid by an interrupted concurrent build is dropped and built again (the
/// `IF NOT EXISTS` of the migration would keep the invalid one forever).
async fn build_source_index_concurrently(pool: &PgPool) -> anyhow::Result<()> {
    // None: no table yet (the migration creates it empty); Some(true): a valid index.
    if source_index_valid(pool).await? != Some(false) {
        return Ok(());
    }
    // A dedicated session holds the lock; a waiting instance polls rather than blocking in a
    // transaction, which the concurrent build would wait for in turn.
    let mut conn = pool
        .acquire()
        .await
        .context("connecting for the index build")?
        .detach();
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(INDEX_LOCK)
            .fetch_one(&mut conn)
            .await
            .context("taking the index lock")?;
        if got {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let result = build_source_index(pool, &mut conn).await;
    // Closing the session releases the lock, also when this close cannot be sent.
    let _ = sqlx::Connection::close(conn).await;
    result
}

/// Whether `otp_counts` has a valid source index; `None` when there is no such table.
async fn source_index_valid(pool: &PgPool) -> anyhow::Result<Option<bool>> {
    sqlx::query_scalar(
        "SELECT CASE WHEN to_regclass('otp_counts') IS NULL THEN NULL \
         ELSE coalesce((SELECT indisvalid FROM pg_index \
                        WHERE indexrelid = to_regclass('otp_counts_bucket_start_idx')), false) END",
    )
    .fetch_one(pool)
    .await
    .context("looking for the otp_counts index")
}

async fn build_source_index(pool: &PgPool, conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    if source_index_valid(pool).await? != Some(false) {
        return Ok(()); // another instance built it meanwhile
    }
    tracing::info!(
        "otp_counts exists without a valid otp_counts_bucket_start_idx: building it \
         concurrently, without blocking writers (this may take a while on a large table)"
    );
    // A plain &str without arguments goes out as a simple query, one statement each:
    // CONCURRENTLY refuses any transaction block, an implicit one included.
    conn.execute("DROP INDEX CONCURRENTLY IF EXISTS otp_counts_bucket_start_idx")
        .await
        .context("dropping the invalid otp_counts index")?;
    conn.execute(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS otp_counts_bucket_start_idx \
         ON otp_counts (bucket_start) INCLUDE (app_id, mcc, sent, backfilled)",
    )
    .await
    .context("building the otp_counts index concurrently")?;
    tracing::info!("otp_counts_bucket_start_idx built");
    Ok(())
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
