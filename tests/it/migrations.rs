//! Migrating a database that already holds the operators' `otp_counts`: the source index is
//! built without blocking their writes; a database migrated before keeps its index.

use std::time::Duration;

use backfill_reporter::db;
use sqlx::{Connection, PgConnection, PgPool};

use crate::helpers::eventually;

/// The operators' table as the first migration would create it, with rows, before the daemon
/// was ever installed.
pub(crate) async fn existing_otp_counts(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE otp_counts (app_id text NOT NULL, mcc integer NOT NULL, \
         bucket_start timestamptz NOT NULL, sent bigint NOT NULL DEFAULT 0, \
         backfilled bigint NOT NULL DEFAULT 0, PRIMARY KEY (app_id, mcc, bucket_start)); \
         INSERT INTO otp_counts SELECT 'app' || (i % 50), 460, \
         now() - i * interval '1 minute', 10, 4 FROM generate_series(1, 5000) i",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn connection(pool: &PgPool) -> PgConnection {
    PgConnection::connect_with(&pool.connect_options())
        .await
        .unwrap()
}

/// The source index as the catalogue has it.
#[derive(sqlx::FromRow)]
pub(crate) struct Index {
    /// False for an index an interrupted concurrent build left behind.
    pub(crate) valid: bool,
    pub(crate) definition: String,
    /// Changes when the index is built again.
    oid: i64,
}

pub(crate) async fn source_index(pool: &PgPool) -> Index {
    sqlx::query_as(
        "SELECT i.indisvalid AS valid, pg_get_indexdef(i.indexrelid) AS definition, \
             i.indexrelid::bigint AS oid \
         FROM pg_index i WHERE i.indexrelid = to_regclass('otp_counts_bucket_start_idx')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_source_index_is_built_on_a_populated_table_without_blocking_writers(pool: PgPool) {
    existing_otp_counts(&pool).await;
    // An application's transaction that has written and not yet committed: any index build
    // must wait for it. A plain CREATE INDEX waiting for it queues a lock that stops every
    // other writer until the build is done.
    let mut writer = connection(&pool).await;
    sqlx::query("BEGIN").execute(&mut writer).await.unwrap();
    sqlx::query("INSERT INTO otp_counts VALUES ('early', 460, now(), 1, 0)")
        .execute(&mut writer)
        .await
        .unwrap();

    let migrating = tokio::spawn({
        let pool = pool.clone();
        async move { db::migrate(&pool.clone().into()).await }
    });
    eventually(
        Duration::from_secs(20),
        "the migration waits for the writer",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                > 0
        },
    )
    .await;
    let mut another = connection(&pool).await;
    sqlx::query("SET lock_timeout = '3s'")
        .execute(&mut another)
        .await
        .unwrap();
    let second_write = sqlx::query("INSERT INTO otp_counts VALUES ('later', 460, now(), 2, 1)")
        .execute(&mut another)
        .await;
    sqlx::query("COMMIT").execute(&mut writer).await.unwrap();
    let applied = tokio::time::timeout(Duration::from_secs(30), migrating)
        .await
        .expect("the migration finishes once the writer commits")
        .unwrap()
        .unwrap();

    assert!(
        second_write.is_ok(),
        "a writer was blocked by the index build: {second_write:?}"
    );
    assert_eq!(applied.len(), db::MIGRATOR.iter().count(), "{applied:?}");
    let index = source_index(&pool).await;
    assert!(index.valid, "{}", index.definition);
    assert!(
        index
            .definition
            .contains("(bucket_start) INCLUDE (app_id, mcc, sent, backfilled)"),
        "{}",
        index.definition
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM otp_counts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 5002);
}

#[sqlx::test(migrations = false)]
async fn an_index_left_invalid_by_an_interrupted_build_is_built_again(pool: PgPool) {
    existing_otp_counts(&pool).await;
    // A concurrent build that fails leaves an invalid index behind under the name; here a
    // unique one over duplicate buckets.
    sqlx::query("INSERT INTO otp_counts VALUES ('dupA', 460, '2020-01-01', 1, 0), ('dupB', 460, '2020-01-01', 1, 0)")
        .execute(&pool)
        .await
        .unwrap();
    let failed = sqlx::raw_sql(
        "CREATE UNIQUE INDEX CONCURRENTLY otp_counts_bucket_start_idx ON otp_counts (bucket_start)",
    )
    .execute(&pool)
    .await;
    assert!(failed.is_err());
    assert!(
        !source_index(&pool).await.valid,
        "the leftover index is invalid"
    );

    db::migrate(&pool.clone().into()).await.unwrap();

    let index = source_index(&pool).await;
    assert!(index.valid, "{}", index.definition);
    assert!(!index.definition.contains("UNIQUE"), "{}", index.definition);
    assert!(index.definition.contains("INCLUDE"), "{}", index.definition);
}

#[sqlx::test(migrations = false)]
async fn a_database_migrated_before_keeps_its_index(pool: PgPool) {
    db::migrate(&pool.clone().into()).await.unwrap();
    let before = source_index(&pool).await;

    let applied = db::migrate(&pool.clone().into()).await.unwrap();

    assert!(applied.is_empty(), "{applied:?}");
    let after = source_index(&pool).await;
    assert!(after.valid, "{}", after.definition);
    assert_eq!(before.oid, after.oid, "the index was not rebuilt");
}
