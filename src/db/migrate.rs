//! The embedded migrations, and the concurrent build of the source index that runs before them.
//! Both go over `database.direct_url` when it is set. Through a transaction pooler without it,
//! no session lock can guard them (the next statement may run on another server connection,
//! and a lock left there would outlive this client): each guard is a transaction-level lock
//! instead, see [`migrate_in_one_transaction`] and [`hold_index_lock`].

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::{Executor, PgConnection};

use super::handle::{Db, Tx};
use crate::config::Pooler;

/// The migrations in `migrations/`, compiled into the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The advisory lock that lets one instance at a time build the source index ("bfri").
const INDEX_LOCK: i64 = 0x6266_7269;

/// Applies pending migrations; returns the descriptions of those it applied.
pub async fn migrate(db: &Db) -> anyhow::Result<Vec<String>> {
    let db = db.direct.as_deref().unwrap_or(db);
    build_source_index_concurrently(db).await?;
    let before = match db.pooler {
        Pooler::Transaction => migrate_in_one_transaction(db).await?,
        Pooler::None | Pooler::Session => {
            let before = applied_versions(db).await?;
            MIGRATOR
                .run(&db.pool)
                .await
                .context("applying database migrations")?;
            before
        }
    };
    Ok(MIGRATOR
        .iter()
        .filter(|m| !before.contains(&m.version))
        .map(|m| format!("{} {}", m.version, m.description))
        .collect())
}

/// Through a transaction pooler: every pending migration in one transaction, under the
/// transaction-level form of the lock sqlx's migrator takes for a session, on the same key,
/// so that an instance that migrates over a server session of its own waits for this one and
/// the reverse. Each migration keeps its own savepoint and bookkeeping row; should one fail,
/// none is applied. A future `-- no-transaction` migration could not run here: it would need
/// `direct_url`. Returns the versions applied before, as read under the lock.
async fn migrate_in_one_transaction(db: &Db) -> anyhow::Result<Vec<i64>> {
    let mut tx = db
        .begin()
        .await
        .context("starting the migration transaction")?;
    match apply_under_lock(&mut tx).await {
        Ok(before) => {
            tx.commit().await.context("committing the migrations")?;
            Ok(before)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

async fn apply_under_lock(tx: &mut Tx) -> anyhow::Result<Vec<i64>> {
    let database = sqlx::query_scalar!(r#"SELECT current_database() AS "name!""#)
        .fetch_one(&mut *tx)
        .await
        .context("taking the migration lock")?;
    sqlx::query!(
        "SELECT pg_advisory_xact_lock($1)",
        migrator_lock_id(&database)
    )
    .execute(&mut *tx)
    .await
    .context("taking the migration lock")?;
    let conn = tx.connection();
    conn.ensure_migrations_table()
        .await
        .context("reading applied migrations")?;
    let before = conn
        .list_applied_migrations()
        .await
        .context("reading applied migrations")?;
    let mut unlocked = sqlx::migrate!();
    unlocked.set_locking(false);
    unlocked
        // `run` over a `&mut PgConnection` trips sqlx's "Acquire is not general enough".
        .run_direct(conn)
        .await
        .context("applying database migrations")?;
    Ok(before.iter().map(|m| m.version).collect())
}

/// The key of sqlx's migration lock for `database` (`generate_lock_id` in sqlx-postgres).
fn migrator_lock_id(database: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC_IEEE.checksum(database.as_bytes()))
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
/// `IF NOT EXISTS` of the migration would keep the invalid one forever). One instance builds
/// it at a time: an invalid index may be another instance's build in progress.
async fn build_source_index_concurrently(db: &Db) -> anyhow::Result<()> {
    // None: no table yet (the migration creates it empty); Some(true): a valid index.
    if source_index_valid(db).await? != Some(false) {
        return Ok(());
    }
    if db.pooler == Pooler::Transaction {
        return build_through_pooler(db).await;
    }
    // A dedicated session holds the lock; a waiting instance polls rather than blocking in a
    // transaction, which the concurrent build would wait for in turn.
    let mut conn = db
        .pool
        .acquire()
        .await
        .context("connecting for the index build")?
        .detach();
    loop {
        let got = sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "got!""#, INDEX_LOCK)
            .fetch_one(&mut conn)
            .await
            .context("taking the index lock")?;
        if got {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let result = match source_index_valid(db).await {
        Ok(Some(false)) => build_source_index(&mut conn).await,
        Ok(_) => Ok(()), // another instance built it meanwhile
        Err(e) => Err(e),
    };
    // Closing the session releases the lock, also when this close cannot be sent.
    let _ = sqlx::Connection::close(conn).await;
    result
}

/// The build through a transaction pooler: [`hold_index_lock`] on one connection, the build
/// on another, outside any transaction (`CONCURRENTLY` refuses one), where the pooler keeps one
/// server connection for the statement's whole run.
async fn build_through_pooler(db: &Db) -> anyhow::Result<()> {
    let mut holder = hold_index_lock(db).await?;
    let valid = source_index_valid(&mut holder).await;
    let result = match valid {
        Ok(Some(false)) => match db.pool.acquire().await {
            Ok(mut conn) => build_source_index(&mut conn).await,
            Err(e) => Err(e).context("connecting for the index build"),
        },
        Ok(_) => Ok(()), // another instance built it meanwhile
        Err(e) => Err(e),
    };
    let _ = holder.rollback().await;
    result
}

/// The index lock as a transaction-level lock, held by a transaction left open while the build
/// runs. `CREATE INDEX CONCURRENTLY` waits for every transaction that holds a snapshot older
/// than its own or a lock on the table, and this one holds neither: between statements a READ
/// COMMITTED transaction keeps no snapshot, and an advisory lock is no table lock. So is a
/// waiting instance's: it polls with `pg_try_advisory_xact_lock`, never blocks in a statement.
/// The holder is idle for as long as the build takes, so the idle timeout is off for it: if
/// this process dies, the pooler closes the server connection of the open transaction, and
/// the lock goes with it.
async fn hold_index_lock(db: &Db) -> anyhow::Result<Tx> {
    loop {
        let mut tx = db.begin().await.context("taking the index lock")?;
        let got = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock($1) AS "got!""#,
            INDEX_LOCK
        )
        .fetch_one(&mut tx)
        .await
        .context("taking the index lock")?;
        if got {
            sqlx::query!("SET LOCAL idle_in_transaction_session_timeout = 0")
                .execute(&mut tx)
                .await
                .context("taking the index lock")?;
            return Ok(tx);
        }
        tx.rollback().await.context("taking the index lock")?;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether `otp_counts` has a valid source index; `None` when there is no such table.
async fn source_index_valid<'c>(
    db: impl Executor<'c, Database = sqlx::Postgres>,
) -> anyhow::Result<Option<bool>> {
    sqlx::query_scalar!(
        "SELECT CASE WHEN to_regclass('otp_counts') IS NULL THEN NULL
             ELSE coalesce((SELECT indisvalid FROM pg_index
                 WHERE indexrelid = to_regclass('otp_counts_bucket_start_idx')), false) END"
    )
    .fetch_one(db)
    .await
    .context("looking for the otp_counts index")
}

async fn build_source_index(conn: &mut PgConnection) -> anyhow::Result<()> {
    tracing::info!(
        "otp_counts exists without a valid otp_counts_bucket_start_idx: building it \
         concurrently, without blocking writers (this may take a while on a large table)"
    );
    // A plain &str without arguments goes out as a simple query, one statement each:
    // CONCURRENTLY refuses any transaction block, an implicit one included. (So these two stay
    // out of the build-time check: `query!` always uses the extended protocol.)
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

async fn applied_versions(db: &Db) -> anyhow::Result<Vec<i64>> {
    let exists =
        sqlx::query_scalar!(r#"SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS "exists!""#)
            .fetch_one(db)
            .await
            .context("reading applied migrations")?;
    if !exists {
        return Ok(Vec::new());
    }
    sqlx::query_scalar!("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(db)
        .await
        .context("reading applied migrations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migration_lock_is_the_key_sqlx_takes_for_the_same_database() {
        // sqlx-postgres 0.8's generate_lock_id: 0x3d32ad9e times the CRC-32 (IEEE) of the
        // name, here zlib's crc32(b"backfill_test").
        assert_eq!(
            migrator_lock_id("backfill_test"),
            0x3d32ad9e * 2_727_892_298
        );
        assert_ne!(migrator_lock_id("a"), migrator_lock_id("b"));
    }
}
