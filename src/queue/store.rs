//! `report_submissions` as the work queue every instance sends from. This module owns its SQL:
//! enqueueing a tick's rows in batches, claiming pages of due rows under a lease
//! (`FOR UPDATE SKIP LOCKED`, River's pattern), renewing and releasing leases, and writing
//! outcomes in one statement per group. It decides nothing about what to send or when to retry.
//!
//! A row belongs to whoever holds an unexpired lease on it; every outcome write is guarded by
//! `state = 'pending' AND lease_owner = $me`, so an instance that lost its lease (it stalled,
//! or its database session dropped and another instance took the row) cannot overwrite the
//! newer owner's outcome.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::db::{Db, Tx};

use crate::db::clock::Mono;
use crate::domain::excerpt;
use crate::domain::rate::Rate;
use crate::domain::run::State;
use crate::domain::status::ProviderStatus;
use crate::domain::{AppId, Mcc};
use crate::provider::BackfillRequest;

/// Channel that `NOTIFY` wakes idle senders on, so that every instance starts on a new tick at
/// once instead of at its next poll.
pub const CHANNEL: &str = "backfill_reporter_queue";

/// Why a row that was never sent left the queue because a newer tick of its pair exists.
pub const REPLACED: &str = "a newer tick of this pair replaced it before it was sent";

/// A submission row as first written by the planner. The source's columns arrive bounded
/// (`excerpt::stored`); `app_id` and `mcc` are `None` when the source returned NULL.
#[derive(Debug, Clone)]
pub struct NewSubmission {
    pub app_id: Option<String>,
    pub mcc: Option<String>,
    pub backfill_number: Option<String>,
    pub cardinal_number: Option<String>,
    pub rate: Option<Rate>,
    pub state: State,
    pub reason: Option<String>,
    /// The account that signs it (`None`: the unnamed one, or none for an app in no account).
    pub account: Option<String>,
}

/// What is common to every row of one tick.
#[derive(Debug, Clone, Copy)]
pub struct TickRows<'a> {
    pub run_id: i64,
    pub tick: DateTime<Utc>,
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub callback_time: &'a str,
    pub deadline: DateTime<Utc>,
}

/// How many rows of a batch went in, and how many of those are to be sent.
#[derive(Debug, Default)]
pub struct Enqueued {
    pub inserted: u64,
    pub pending: u64,
    /// Rows the insert refused, each recorded instead as invalid with the refusal.
    pub refused: Vec<NewSubmission>,
}

/// Inserts one batch of a tick's rows; pending ones are due at once. A pair already recorded
/// for this tick (the source returned it twice, or a `run --once` in the same second took it)
/// is left out, never sent twice.
///
/// No row can stop the tick: the batch goes in under a savepoint, and should the database
/// refuse it for anything but a lost connection (a constraint nobody foresaw), its rows go in
/// one by one, and a row refused alone is recorded as invalid with the refusal, its columns
/// quoted in the reason.
pub async fn enqueue(
    conn: &mut Tx,
    tick: TickRows<'_>,
    rows: &[NewSubmission],
) -> anyhow::Result<Enqueued> {
    if rows.is_empty() {
        return Ok(Enqueued::default());
    }
    savepoint(conn).await?;
    let batch = insert(conn, tick, rows).await;
    match settle(conn, batch).await? {
        Ok(done) => Ok(done),
        Err(_) => one_by_one(conn, tick, rows).await,
    }
}

async fn savepoint(conn: &mut Tx) -> anyhow::Result<()> {
    sqlx::query!("SAVEPOINT enqueue")
        .execute(conn)
        .await
        .context("recording submissions as pending")?;
    Ok(())
}

/// Ends the savepoint after `result`: `Ok(Err(e))` when the database refused the step (rolled
/// back to the savepoint, the transaction goes on), `Err` when the connection is gone.
async fn settle<T>(conn: &mut Tx, result: anyhow::Result<T>) -> anyhow::Result<anyhow::Result<T>> {
    let (ended, result) = match result {
        Ok(v) => {
            let ended = sqlx::query!("RELEASE SAVEPOINT enqueue")
                .execute(conn)
                .await;
            (ended, Ok(v))
        }
        Err(e) if crate::db::is_unreachable(&e) => return Err(e),
        Err(e) => {
            let ended = sqlx::query!("ROLLBACK TO SAVEPOINT enqueue")
                .execute(conn)
                .await;
            (ended, Err(e))
        }
    };
    ended.context("recording submissions as pending")?;
    Ok(result)
}

/// The batch refused as a whole: each row alone, and a row refused alone as invalid.
async fn one_by_one(
    conn: &mut Tx,
    tick: TickRows<'_>,
    rows: &[NewSubmission],
) -> anyhow::Result<Enqueued> {
    let mut done = Enqueued::default();
    for row in rows {
        let one = std::slice::from_ref(row);
        savepoint(conn).await?;
        let alone = insert(conn, tick, one).await;
        let e = match settle(conn, alone).await? {
            Ok(n) => {
                done.inserted += n.inserted;
                done.pending += n.pending;
                continue;
            }
            Err(e) => e,
        };
        let refused = refused_row(row, &e);
        let n = insert(conn, tick, std::slice::from_ref(&refused))
            .await
            .context("recording a refused source row as invalid")?;
        done.inserted += n.inserted;
        done.refused.push(refused);
    }
    Ok(done)
}

/// A row the database refused, as the invalid row that records it: nothing of the source in
/// its columns (they may be what was refused), everything quoted in the reason.
fn refused_row(row: &NewSubmission, e: &anyhow::Error) -> NewSubmission {
    NewSubmission {
        app_id: None,
        mcc: None,
        backfill_number: None,
        cardinal_number: None,
        rate: None,
        state: State::Invalid,
        account: row.account.clone(),
        reason: Some(format!(
            "the database refused to store it ({}): app_id {}, mcc {}, backfill_number {}, cardinal_number {}",
            excerpt::quoted(&format!("{e:#}")),
            excerpt::opt(row.app_id.as_deref()),
            excerpt::opt(row.mcc.as_deref()),
            excerpt::opt(row.backfill_number.as_deref()),
            excerpt::opt(row.cardinal_number.as_deref()),
        )),
    }
}

async fn insert(
    conn: &mut Tx,
    tick: TickRows<'_>,
    rows: &[NewSubmission],
) -> anyhow::Result<Enqueued> {
    let col = |f: fn(&NewSubmission) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let index: Vec<i32> = (0..rows.len() as i32).collect();
    let rates: Vec<Option<i32>> = rows
        .iter()
        .map(|r| r.rate.map(|r| i32::from(r.hundredths())))
        .collect();
    let states: Vec<String> = rows.iter().map(|r| r.state.as_str().to_owned()).collect();
    // The arrays' elements may be NULL (`as _`: sqlx types a text[] parameter as Vec<String>).
    let done = sqlx::query_scalar!(
        r#"INSERT INTO report_submissions (run_id, scheduled_for, window_start, window_end,
             app_id, mcc, backfill_number, cardinal_number, rate, callback_time, state, reason,
             finished_at, next_attempt_at, deadline, account)
         SELECT $1, $2, $3, $4, u.app_id, u.mcc, u.backfill::numeric, u.cardinal::numeric,
             u.hundredths / 100.0, $5, u.state, u.reason,
             CASE WHEN u.state = 'pending' THEN NULL ELSE now() END,
             CASE WHEN u.state = 'pending' THEN now() END,
             CASE WHEN u.state = 'pending' THEN $6::timestamptz END, u.account
         FROM unnest($7::text[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[],
             $13::text[], $14::int[], $15::text[])
             AS u(app_id, mcc, backfill, cardinal, hundredths, state, reason, idx, account)
         ORDER BY u.idx
         ON CONFLICT (app_id, mcc, scheduled_for) DO NOTHING
         RETURNING state = 'pending' AS "pending!""#,
        tick.run_id,
        tick.tick,
        tick.window.0,
        tick.window.1,
        tick.callback_time,
        tick.deadline,
        col(|r| r.app_id.clone()) as _,
        col(|r| r.mcc.clone()) as _,
        col(|r| r.backfill_number.clone()) as _,
        col(|r| r.cardinal_number.clone()) as _,
        rates as _,
        &states,
        col(|r| r.reason.clone()) as _,
        &index,
        col(|r| r.account.clone()) as _,
    )
    .fetch_all(conn)
    .await
    .context("recording submissions as pending")?;
    Ok(Enqueued {
        inserted: done.len() as u64,
        pending: done.iter().filter(|pending| **pending).count() as u64,
        refused: Vec::new(),
    })
}

/// Whether PostgreSQL's numeric accepts the text: an invalid row keeps its numbers only if so.
pub fn is_numeric(v: &str) -> bool {
    let v = v.trim().strip_prefix('-').unwrap_or(v.trim());
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// Marks pending rows of older ticks of this run's pairs as superseded: an older rate sent after
/// a newer one could only replace the newer one (this project's reading; the provider's page
/// does not say what it does with several reports of one pair). Rows under a
/// live lease are being sent right now; their outcome write supersedes them if it must retry.
/// Returns how many rows of each account it superseded.
pub async fn supersede_older(
    conn: &mut Tx,
    tick: DateTime<Utc>,
) -> anyhow::Result<Vec<(Option<String>, i64)>> {
    let rows = sqlx::query!(
        r#"WITH done AS (UPDATE report_submissions s SET state = 'superseded', reason = $2,
             finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
         WHERE s.state = 'pending' AND s.scheduled_for < $1
           AND (s.lease_expires_at IS NULL OR s.lease_expires_at < now())
           AND EXISTS (SELECT FROM backfill_reporter_newer_ticks(s.app_id, s.mcc, s.scheduled_for))
         RETURNING s.account)
         SELECT account, count(*) AS "rows!" FROM done GROUP BY account"#,
        tick,
        REPLACED,
    )
    .fetch_all(conn)
    .await
    .context("superseding older pending submissions")?;
    Ok(rows.into_iter().map(|r| (r.account, r.rows)).collect())
}

/// Wakes idle senders of every instance when the surrounding transaction commits.
pub async fn notify(conn: &mut Tx) -> anyhow::Result<()> {
    sqlx::query!("SELECT pg_notify($1, '')", CHANNEL)
        .execute(conn)
        .await
        .context("notifying senders")?;
    Ok(())
}

/// A row claimed for sending.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub run_id: i64,
    /// The account it was planned for, whose key and secret sign it.
    pub account: Option<String>,
    /// The request to send; `Err` when the stored row no longer makes one (edited by hand).
    pub request: Result<BackfillRequest, String>,
    /// How long after the claim the row's deadline passes, by the database's clock: zero when
    /// it has passed already; `None` only for rows left by a release without deadlines, until
    /// start-up fills them.
    pub deadline_in: Option<Duration>,
    /// Attempts already made, by any instance.
    pub attempts: i32,
    /// A newer tick of the pair exists: sending this one would overwrite the fresher rate
    /// (the row was under a lease, so not superseded, when that tick was planned).
    pub replaced: bool,
}

/// What a claim or a renewal wrote: for each row, how long its lease lasts from the moment
/// the statement ran, by the database's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leased {
    pub id: i64,
    pub lasts: Duration,
}

/// A page of claimed rows.
#[derive(Debug, Clone)]
pub struct Page {
    pub rows: Vec<Claimed>,
    pub leases: Vec<Leased>,
    /// Where the next claim resumes.
    pub cursor: ClaimCursor,
}

/// Where a claim resumes: the `(next_attempt_at, id)` of the last row the previous one took.
/// Rows behind it were taken, or were locked by another claimer at the time; a claim that
/// comes back short starts again from the head and finds those.
pub type ClaimCursor = Option<(DateTime<Utc>, i64)>;

/// Whose rows a claim takes. The unnamed account is `None`, NULL in the column: a claim
/// matches it with `IS NULL` (a flag of its own in `Except`), never through a stand-in name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Accounts {
    /// Every account's.
    #[default]
    Any,
    /// All but these: their sending is paused (the breaker is open) or they hold enough.
    Except(Vec<Option<String>>),
    /// Only this one's: the probe of its breaker.
    Only(Option<String>),
}

/// Milliseconds as a duration; a negative count (a time that has passed) is zero.
fn millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Claims up to `limit` due rows of `accounts` for `owner`, leased for `lease`; with `run`,
/// only that run's. A claimed row's `next_attempt_at` moves to its lease expiry: it leaves the head of the due
/// index (which would otherwise fill with rows being sent), and becomes due again by itself if
/// its owner dies. Rows locked by a concurrent claim are skipped, never waited on.
pub async fn claim(
    pool: &Db,
    owner: &str,
    limit: usize,
    lease: Duration,
    (run, accounts): (Option<i64>, &Accounts),
    after: ClaimCursor,
) -> anyhow::Result<Page> {
    let sql = claim_sql(run.is_some(), after.is_some(), accounts);
    let mut query = sqlx::query_as::<_, ClaimedRow>(&sql)
        .bind(owner)
        .bind(limit as i64)
        .bind(lease.as_millis() as i64);
    if let Some(run) = run {
        query = query.bind(run);
    }
    if let Some((at, id)) = after {
        query = query.bind(at).bind(id);
    }
    match accounts {
        Accounts::Any => {}
        Accounts::Except(names) => {
            let named: Vec<String> = names.iter().flatten().cloned().collect();
            query = query.bind(named).bind(names.contains(&None));
        }
        Accounts::Only(name) => query = query.bind(name),
    }
    let rows = query
        .fetch_all(pool)
        .await
        .context("claiming due submissions")?;
    let cursor = rows
        .iter()
        .map(|r| (r.due_at, r.id))
        .max()
        .filter(|_| rows.len() == limit);
    let leases = rows
        .iter()
        .map(|r| Leased {
            id: r.id,
            lasts: millis(r.lease_ms),
        })
        .collect();
    Ok(Page {
        rows: rows.into_iter().map(ClaimedRow::into_claimed).collect(),
        leases,
        cursor,
    })
}

/// The claim with only the conditions that apply: a generic plan for `$4 IS NULL OR run_id =
/// $4` would sort every pending row of the run on each claim. Built at run time, so it is the
/// one queue statement sqlx cannot check at build time; its row is still read by column name
/// ([`ClaimedRow`]). Times come back as spans from
/// the statement's `now()`: the caller holds them on its own boot clock, never comparing the
/// database's wall clock with its host's. Parameters after the first three are numbered in
/// the order [`claim`] binds them: run, cursor, accounts.
fn claim_sql(run: bool, after: bool, accounts: &Accounts) -> String {
    let mut next = 3;
    let mut param = || {
        next += 1;
        next
    };
    let run_param = if run {
        format!("AND run_id = ${}", param())
    } else {
        String::new()
    };
    let after_param = if after {
        let (at, id) = (param(), param());
        format!("AND (next_attempt_at, id) > (${at}, ${id})")
    } else {
        String::new()
    };
    let account_param = match accounts {
        Accounts::Any => String::new(),
        Accounts::Except(_) => {
            let (named, unnamed) = (param(), param());
            format!(
                "AND CASE WHEN account IS NULL THEN NOT ${unnamed}::bool \
                     ELSE account <> ALL(${named}::text[]) END"
            )
        }
        Accounts::Only(_) => format!("AND account IS NOT DISTINCT FROM ${}::text", param()),
    };
    format!(
        "WITH due AS ( \
             SELECT id, next_attempt_at FROM report_submissions \
             WHERE state = 'pending' AND next_attempt_at <= now() {run_param} {after_param} \
                 {account_param} \
             ORDER BY next_attempt_at, id \
             LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
         UPDATE report_submissions s \
         SET lease_owner = $1, lease_expires_at = now() + $3 * interval '1 millisecond', \
             next_attempt_at = now() + $3 * interval '1 millisecond' \
         FROM due WHERE s.id = due.id \
         RETURNING s.id, s.run_id, s.account, s.app_id, s.mcc, \
             s.backfill_number::text AS backfilled, \
             s.cardinal_number::text AS sent, s.callback_time, s.attempts, \
             (extract(epoch FROM s.deadline - now()) * 1000)::bigint AS deadline_ms, \
             (extract(epoch FROM s.lease_expires_at - now()) * 1000)::bigint AS lease_ms, \
             EXISTS (SELECT FROM backfill_reporter_newer_ticks(s.app_id, s.mcc, \
                 s.scheduled_for)) AS replaced, \
             due.next_attempt_at AS due_at"
    )
}

/// A row of [`claim_sql`], by column name.
#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: i64,
    run_id: i64,
    account: Option<String>,
    app_id: Option<String>,
    mcc: Option<String>,
    backfilled: Option<String>,
    sent: Option<String>,
    callback_time: String,
    attempts: i32,
    deadline_ms: Option<i64>,
    lease_ms: i64,
    replaced: bool,
    due_at: DateTime<Utc>,
}

impl ClaimedRow {
    fn into_claimed(self) -> Claimed {
        Claimed {
            id: self.id,
            run_id: self.run_id,
            account: self.account,
            request: stored_request(
                self.app_id.as_deref(),
                self.mcc.as_deref(),
                self.backfilled,
                self.sent,
                self.callback_time,
            ),
            deadline_in: self.deadline_ms.map(millis),
            attempts: self.attempts,
            replaced: self.replaced,
        }
    }
}

/// Rebuilds the request from a stored row through the same constructor the judge used.
fn stored_request(
    app_id: Option<&str>,
    mcc: Option<&str>,
    backfilled: Option<String>,
    sent: Option<String>,
    callback_time: String,
) -> Result<BackfillRequest, String> {
    let count = |name: &str, v: Option<String>| {
        v.as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                format!(
                    "stored {name} is not a whole number: {}",
                    excerpt::opt(v.as_deref())
                )
            })
    };
    BackfillRequest::from_counts(
        AppId::parse(app_id.ok_or("stored app_id is null")?)?,
        Mcc::parse(mcc.ok_or("stored mcc is null")?)?,
        count("backfill_number", backfilled)?,
        count("cardinal_number", sent)?,
        callback_time,
    )
    .map_err(|e| format!("stored counts no longer make a rate: {e}"))
}

/// Extends the lease on the rows of `ids` that `owner` still holds, and says which: a row
/// missing from the answer is no longer this owner's (another instance took it after the
/// lease lapsed, or it is being finished) and must not be sent by it.
pub async fn renew(
    pool: &Db,
    owner: &str,
    ids: &[i64],
    lease: Duration,
) -> anyhow::Result<Vec<Leased>> {
    // Rows the writer is finishing right now are locked: skip them rather than wait (or
    // deadlock); they are leaving the lease anyway. `pending` is a sub-select for the reason
    // given at RECORD: the rows are fetched by id, never by scanning the pending indexes.
    let rows = sqlx::query!(
        r#"WITH held AS (SELECT id FROM report_submissions
             WHERE id = ANY($2) AND lease_owner = $1 AND state = (SELECT 'pending'::text)
             ORDER BY id FOR UPDATE SKIP LOCKED)
         UPDATE report_submissions s
         SET lease_expires_at = now() + $3::bigint * interval '1 millisecond',
             next_attempt_at = now() + $3::bigint * interval '1 millisecond'
         FROM held WHERE s.id = held.id
         RETURNING s.id,
             (extract(epoch FROM s.lease_expires_at - now()) * 1000)::bigint AS "lease_ms!""#,
        owner,
        ids,
        lease.as_millis() as i64,
    )
    .fetch_all(pool)
    .await
    .context("renewing leases")?;
    Ok(rows
        .into_iter()
        .map(|r| Leased {
            id: r.id,
            lasts: millis(r.lease_ms),
        })
        .collect())
}

/// What became of one claimed row, written back by the group commit. Every time in it is
/// decided by the database when the write runs: a retry's next attempt, whether its deadline
/// comes first, `finished_at`.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: i64,
    pub run_id: i64,
    pub disposition: Disposition,
    /// Set when this outcome records an attempt.
    pub attempt: Option<Attempt>,
}

/// Where a row goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The provider accepted it.
    Succeeded,
    /// Failed for good: refused by the provider (the reason is the provider's, kept with the
    /// attempt), or `max_attempts` reached (with this reason).
    Failed(Option<String>),
    /// A transient failure: due again after this wait, unless the deadline comes first by the
    /// database's clock (then failed, or superseded when a newer tick of the pair exists).
    Retry(Duration),
    /// Ends without a request: invalid, superseded, or failed because the run was stopped.
    Unsent(State, String),
    /// Its deadline passed before it could be sent, as far as the sender could tell; the
    /// database checks with its own clock, and a row that still has time is handed back.
    Expired,
    /// Handed back unsent (shutdown, breaker open): pending, due at once.
    Released,
}

impl Disposition {
    fn kind(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed(_) => "failed",
            Self::Retry(_) => "retry",
            Self::Unsent(..) => "unsent",
            Self::Expired => "expire",
            Self::Released => "release",
        }
    }

    /// Whether a newer tick of the pair turns this outcome into `superseded`: a row that would
    /// still wait for a retry or that missed its deadline has a fresher rate to replace it.
    fn supersedable(&self) -> bool {
        matches!(
            self,
            Self::Retry(_) | Self::Expired | Self::Unsent(State::Failed, _)
        )
    }
}

/// One attempt's answer, as stored with the row.
#[derive(Debug, Clone, Default)]
pub struct Attempt {
    /// When the request left, on the boot clock: the write turns it into `first_attempt_at` on
    /// the database's clock (`now()` less the time since).
    pub started: Option<Mono>,
    pub provider_status: Option<ProviderStatus>,
    pub provider_reason: Option<String>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
}

impl Outcome {
    /// A row handed back unsent (shutdown, breaker open): pending, lease released.
    pub fn released(id: i64, run_id: i64) -> Self {
        Self {
            id,
            run_id,
            disposition: Disposition::Released,
            attempt: None,
        }
    }

    /// A row that ends without a request.
    pub fn unsent(id: i64, run_id: i64, state: State, reason: String) -> Self {
        Self {
            disposition: Disposition::Unsent(state, reason),
            ..Self::released(id, run_id)
        }
    }

    /// A row whose deadline passed while it waited to be sent.
    pub fn expired(id: i64, run_id: i64) -> Self {
        Self {
            disposition: Disposition::Expired,
            ..Self::released(id, run_id)
        }
    }
}

/// One row as the group commit wrote it.
#[derive(Debug, Clone)]
pub struct Written {
    pub id: i64,
    pub run_id: i64,
    pub state: State,
    pub account: Option<String>,
}

/// Writes a group of outcomes in one statement, one outcome per row of the arrays. The final state is decided here, with the database's
/// clock: a retry whose next attempt would come at or after the deadline fails now, an expiry
/// the clock does not confirm is handed back, and a row that would wait (or missed its
/// deadline) becomes `superseded` when a newer tick of the pair exists. The fields of the last
/// attempt are kept only when this outcome made one; the lease is released; and only rows this
/// owner still holds are touched.
///
/// The guard's `pending` is a sub-select, not a literal, so that the planner cannot use the
/// partial `WHERE state = 'pending'` indexes here: in statistics taken between ticks they look
/// nearly empty, and the plan then scanned every pending row of the tick on each write
/// (1.3 ms a write at 10,000 pending rows, growing with the tick) instead of fetching the
/// group's rows by id (0.4 ms).
///
/// Rows whose lease `owner` no longer holds are left alone (another instance owns them now)
/// and are missing from the result.
pub async fn record(pool: &Db, owner: &str, outcomes: &[Outcome]) -> anyhow::Result<Vec<Written>> {
    if outcomes.is_empty() {
        return Ok(Vec::new());
    }
    let c = OutcomeColumns::of(outcomes);
    // The arrays' elements may be NULL (`as _`: sqlx types a text[] parameter as Vec<String>).
    let rows = sqlx::query_file_as!(
        Written,
        "src/queue/record.sql",
        owner,
        &c.ids,
        &c.kinds,
        c.states as _,
        &c.supersedable,
        c.reasons as _,
        c.elapsed_ms as _,
        c.wait_ms as _,
        c.provider_status as _,
        c.provider_reason as _,
        c.http_status as _,
        c.error as _,
        REPLACED,
    )
    .fetch_all(pool)
    .await
    .context("recording submission outcomes")?;
    Ok(rows)
}

/// The outcomes as [`record`]'s arrays `$2` to `$12`, one element per outcome.
struct OutcomeColumns {
    ids: Vec<i64>,
    kinds: Vec<String>,
    states: Vec<Option<String>>,
    supersedable: Vec<bool>,
    reasons: Vec<Option<String>>,
    elapsed_ms: Vec<Option<i64>>,
    wait_ms: Vec<Option<i64>>,
    provider_status: Vec<Option<String>>,
    provider_reason: Vec<Option<String>>,
    http_status: Vec<Option<i32>>,
    error: Vec<Option<String>>,
}

impl OutcomeColumns {
    fn of(outcomes: &[Outcome]) -> Self {
        let now = Mono::now();
        let col = |f: &dyn Fn(&Outcome) -> Option<String>| outcomes.iter().map(f).collect();
        let attempt = |f: fn(&Attempt) -> Option<String>| col(&|o| o.attempt.as_ref().and_then(f));
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Self {
            ids: outcomes.iter().map(|o| o.id).collect(),
            kinds: outcomes
                .iter()
                .map(|o| o.disposition.kind().to_owned())
                .collect(),
            states: col(&|o| match &o.disposition {
                Disposition::Unsent(state, _) => Some(state.as_str().to_owned()),
                _ => None,
            }),
            supersedable: outcomes
                .iter()
                .map(|o| o.disposition.supersedable())
                .collect(),
            reasons: col(&|o| match &o.disposition {
                Disposition::Failed(reason) => reason.clone(),
                Disposition::Unsent(_, reason) => Some(reason.clone()),
                _ => None,
            }),
            elapsed_ms: outcomes
                .iter()
                .map(|o| Some(o.attempt.as_ref()?.started.map_or(0, |s| ms(now.since(s)))))
                .collect(),
            wait_ms: outcomes
                .iter()
                .map(|o| match o.disposition {
                    Disposition::Retry(wait) => Some(ms(wait)),
                    _ => None,
                })
                .collect(),
            provider_status: attempt(|a| a.provider_status.as_ref().map(ToString::to_string)),
            provider_reason: attempt(|a| a.provider_reason.clone()),
            http_status: outcomes
                .iter()
                .map(|o| o.attempt.as_ref().and_then(|a| a.http_status))
                .collect(),
            error: attempt(|a| a.error.clone()),
        }
    }
}

/// Fails the run's pending rows of `account` that nobody holds: the provider refused the
/// account or host (-1, -2), so every request of that account would fail the same way; other
/// accounts' rows go on. Rows under another instance's live lease are left to it.
pub async fn fail_unsent(
    pool: &Db,
    (run_id, account): (i64, Option<&str>),
    reason: &str,
) -> anyhow::Result<u64> {
    let done = sqlx::query!(
        "UPDATE report_submissions SET state = 'failed', reason = $2, finished_at = now(),
             lease_owner = NULL, lease_expires_at = NULL
         WHERE run_id = $1 AND state = 'pending' AND account IS NOT DISTINCT FROM $3
           AND (lease_expires_at IS NULL OR lease_expires_at < now())",
        run_id,
        reason,
        account,
    )
    .execute(pool)
    .await
    .context("failing the rest of the run")?;
    Ok(done.rows_affected())
}

/// Ends the pending rows whose deadline passed and that nobody holds: superseded when a newer
/// tick of the pair exists, failed otherwise. Returns each row's run, final state and account.
/// Needed while nothing claims them (the provider is unreachable); otherwise the claim finds
/// them first.
pub async fn expire(
    pool: &Db,
    run: Option<i64>,
) -> anyhow::Result<Vec<(i64, State, Option<String>)>> {
    let rows = sqlx::query!(
        r#"WITH x AS (
             SELECT s.id, EXISTS (SELECT FROM backfill_reporter_newer_ticks(s.app_id, s.mcc,
                 s.scheduled_for)) AS replaced
             FROM report_submissions s
             WHERE s.state = 'pending' AND s.deadline <= now()
               AND (s.lease_expires_at IS NULL OR s.lease_expires_at < now())
               AND ($1::bigint IS NULL OR s.run_id = $1)
             FOR UPDATE OF s SKIP LOCKED),
         u AS (UPDATE report_submissions s SET
             state = CASE WHEN x.replaced THEN 'superseded' ELSE 'failed' END,
             reason = CASE WHEN x.replaced THEN $2
                 ELSE backfill_reporter_deadline_reason(s.attempts, s.error) END,
             finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
         FROM x WHERE s.id = x.id RETURNING s.run_id, s.state, s.account)
         SELECT run_id AS "run_id!", state AS "state!: State", account FROM u"#,
        run,
        REPLACED,
    )
    .fetch_all(pool)
    .await
    .context("ending overdue submissions")?;
    Ok(rows
        .into_iter()
        .map(|r| (r.run_id, r.state, r.account))
        .collect())
}

/// How long until the next pending row becomes due, by the database's clock, if one is due
/// later; rows due already but leased are found by the next poll once their lease expires.
pub async fn next_due(pool: &Db, run: Option<i64>) -> anyhow::Result<Option<Duration>> {
    let ms = sqlx::query_scalar!(
        "SELECT (extract(epoch FROM min(next_attempt_at) - now()) * 1000)::bigint
         FROM report_submissions
         WHERE state = 'pending' AND next_attempt_at > now()
           AND ($1::bigint IS NULL OR run_id = $1)",
        run,
    )
    .fetch_one(pool)
    .await
    .context("looking for the next due submission")?;
    Ok(ms.map(millis))
}

/// Gives rows left pending by a release without deadlines the deadline of this instance's
/// schedule (the next tick), once, at start.
pub async fn fill_deadlines(pool: &Db, deadline: DateTime<Utc>) -> anyhow::Result<u64> {
    let done = sqlx::query!(
        "UPDATE report_submissions SET deadline = $1,
             next_attempt_at = COALESCE(next_attempt_at, created_at)
         WHERE state = 'pending' AND deadline IS NULL",
        deadline,
    )
    .execute(pool)
    .await
    .context("giving old pending submissions a deadline")?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_row_makes_the_same_request_as_the_judge() {
        let req = stored_request(
            Some("mRELxtHc"),
            Some("460"),
            Some("1".into()),
            Some("8".into()),
            "2023-02-01T00:00:00+08:00".into(),
        )
        .unwrap();
        assert_eq!(req.backfill_now.to_string(), "12.5");
        assert!(stored_request(
            Some("abc"),
            Some("460"),
            Some("1".into()),
            Some("8".into()),
            String::new()
        )
        .unwrap_err()
        .contains("4 to 32"));
        assert!(stored_request(
            Some("abcd"),
            Some("460"),
            Some("9".into()),
            Some("8".into()),
            String::new()
        )
        .unwrap_err()
        .contains("no longer make a rate"));
        assert!(stored_request(None, Some("460"), None, None, String::new())
            .unwrap_err()
            .contains("app_id is null"));
    }
}
