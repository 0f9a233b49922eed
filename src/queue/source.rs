//! The counts: per (app, MCC), codes sent and codes backfilled over the window, from the default
//! `otp_counts` table or the operator's own query. It reads and checks columns; judging the
//! values (negative, too many backfilled, a bad MCC) belongs to `cycle`, so that a bad row is
//! recorded rather than lost in an error.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use sqlx::{Column, Describe, Executor, Postgres, TypeInfo};

use crate::db::{Db, Tx};

use crate::config::SourceSettings;

/// Sums the buckets that start inside `[$1, $2)`; the `bucket_start` index serves it. The
/// integer `mcc` column cannot keep leading zeros, so 0–999 are padded back to three digits
/// ("001"); anything else stays as it is and is judged invalid.
pub const DEFAULT_QUERY: &str = "SELECT app_id, \
     CASE WHEN mcc BETWEEN 0 AND 999 THEN lpad(mcc::text, 3, '0') ELSE mcc::text END AS mcc, \
     SUM(backfilled) AS backfill_number, SUM(sent) AS cardinal_number FROM otp_counts \
     WHERE bucket_start >= $1 AND bucket_start < $2 GROUP BY 1, 2";

/// One row as the source returned it, in text so that nothing is lost before it is judged.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SourceRow {
    pub app_id: Option<String>,
    pub mcc: Option<String>,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
}

const TEXT_TYPES: &[&str] = &["TEXT", "VARCHAR", "BPCHAR", "NAME", "CHAR"];
const INT_TYPES: &[&str] = &["INT2", "INT4", "INT8", "NUMERIC"];

/// The columns the query must return and the types each may have.
const COLUMNS: [(&str, &[&str], &[&str]); 4] = [
    ("app_id", TEXT_TYPES, &[]),
    ("mcc", TEXT_TYPES, INT_TYPES),
    ("backfill_number", INT_TYPES, &[]),
    ("cardinal_number", INT_TYPES, &[]),
];

fn query_of(settings: &SourceSettings) -> &str {
    settings
        .query
        .as_deref()
        .unwrap_or(DEFAULT_QUERY)
        .trim()
        .trim_end_matches(';')
}

/// Whether the default source's table is still missing (the migrations create it).
pub async fn default_table_missing(pool: &Db) -> anyhow::Result<bool> {
    sqlx::query_scalar!(r#"SELECT to_regclass('otp_counts') IS NULL AS "missing!""#)
        .fetch_one(pool)
        .await
        .context("looking for the otp_counts table")
}

/// Checks, without running it, that the query returns the four columns with usable types.
/// Errors name the column and the type found.
pub async fn check_columns(pool: &Db, settings: &SourceSettings) -> anyhow::Result<()> {
    judge_columns(pool.describe(query_of(settings)).await, settings)
}

/// [`check_columns`] on a transaction (the claim transaction, for one).
pub async fn check_columns_on(conn: &mut Tx, settings: &SourceSettings) -> anyhow::Result<()> {
    judge_columns(conn.describe(query_of(settings)).await, settings)
}

fn judge_columns(
    described: Result<Describe<Postgres>, sqlx::Error>,
    settings: &SourceSettings,
) -> anyhow::Result<()> {
    let key = if settings.query.is_some() {
        "source.query"
    } else {
        "default source (otp_counts)"
    };
    let describe = described.with_context(|| format!("{key} does not prepare"))?;
    let found: Vec<(String, String)> = describe
        .columns()
        .iter()
        .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
        .collect();
    for (name, first, second) in COLUMNS {
        let Some((_, ty)) = found.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
            bail!("{key} returns no column {name:?} (it returns {names:?}); expected app_id, mcc, backfill_number, cardinal_number");
        };
        if !first.contains(&ty.as_str()) && !second.contains(&ty.as_str()) {
            let wanted = if first == INT_TYPES {
                "an integer or numeric"
            } else if second.is_empty() {
                "text"
            } else {
                "text or an integer"
            };
            bail!("{key} column {name:?} is {ty}, expected {wanted}");
        }
    }
    Ok(())
}

/// The window's rows, fetched in batches from a server-side cursor inside the caller's
/// transaction, so that memory does not grow with the number of pairs however large the window.
pub struct Cursor {
    exhausted: bool,
}

/// The cursor's name; one per transaction.
const CURSOR: &str = "backfill_source";

impl Cursor {
    /// Checks the query's columns, then opens the cursor over `[start, end)`. `conn` must be
    /// inside a transaction, which the cursor lives and dies with.
    #[tracing::instrument(skip_all, fields(%start, %end), err)]
    pub async fn open(
        conn: &mut Tx,
        settings: &SourceSettings,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        check_columns_on(conn, settings).await?;
        Self::open_query(conn, query_of(settings), start, end).await
    }

    /// Opens the cursor over `query` with `$1` = `start` and `$2` = `end`: a query of this
    /// crate's own, such as the incremental sums', whose columns need no check.
    pub async fn open_query(
        conn: &mut Tx,
        query: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        // The query is planned for its window, not once for any window.
        sqlx::query!("SET LOCAL plan_cache_mode = auto")
            .execute(&mut *conn)
            .await
            .context("preparing to read the source")?;
        // Cast in an outer query so that every accepted type arrives as text, unrounded. The
        // query sits on lines of its own: a trailing `--` comment must not swallow the rest.
        // Built at run time around the operator's `source.query` (or ours), so sqlx cannot
        // check it at build time; `check_columns` checks the columns before it runs.
        let sql = format!(
            "DECLARE {CURSOR} NO SCROLL CURSOR FOR \
             SELECT app_id::text, mcc::text, backfill_number::text, cardinal_number::text \
             FROM (\n{query}\n) AS source"
        );
        sqlx::query(&sql)
            .bind(start)
            .bind(end)
            .persistent(false)
            .execute(&mut *conn)
            .await
            .context("reading counts from the source")?;
        Ok(Self { exhausted: false })
    }

    /// The next `n` rows; empty once the window is read.
    pub async fn next(&mut self, conn: &mut Tx, n: usize) -> anyhow::Result<Vec<SourceRow>> {
        if self.exhausted {
            return Ok(Vec::new());
        }
        // Not kept as a prepared statement: the cursor it names lives only as long as the
        // transaction. Runtime-checked: FETCH takes its count as text, not as a parameter, and
        // its columns are the operator's query's; they are read by name.
        let rows: Vec<SourceRow> = sqlx::query_as(&format!("FETCH {n} FROM {CURSOR}"))
            .persistent(false)
            .fetch_all(&mut *conn)
            .await
            .context("reading counts from the source")?;
        self.exhausted = rows.len() < n;
        Ok(rows)
    }
}
