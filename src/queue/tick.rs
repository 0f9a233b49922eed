//! One tick's planning: claim the tick, stream the window's counts from the source, judge each
//! pair (send, skip or invalid) and enqueue every pair into `report_submissions`, all in the
//! transaction that claims the tick, so that a tick is either wholly queued or not claimed.
//! Sending the queue belongs to `sender`; when to plan belongs to `daemon`.

use std::time::Duration;

use crate::db::clock::Mono;
use crate::db::{Db, Tx};
use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;

use crate::config::{Accounts, Settings};
use crate::domain::excerpt;
use crate::domain::rate::{Rate, RateError};
use crate::domain::run::{RunSummary, State, Trigger};
use crate::domain::{AppId, Mcc};
use crate::provider::BackfillRequest;
use crate::queue::context::Context;
use crate::queue::runs::{self, Claim};
use crate::queue::sender::{self, Scope};
use crate::queue::source::{Cursor, SourceRow};
use crate::queue::store::{self, NewSubmission, TickRows};
use crate::retry::deadline::deadline;
use crate::{views::alarm, views::metrics};

/// Source rows judged and inserted per statement while planning: memory stays flat whatever
/// the number of pairs, and each insert stays short.
pub const BATCH: usize = 1000;

/// What was decided for one (app, MCC) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Send(BackfillRequest),
    Skip(String),
    Invalid(String),
}

impl Verdict {
    pub fn rate(&self) -> Option<Rate> {
        match self {
            Self::Send(req) => Some(req.backfill_now),
            _ => None,
        }
    }
}

/// `callbackTime`: the tick in the operator's zone, to the second, with its offset
/// (`2023-02-01T00:00:00+08:00`).
pub fn callback_time(tick: DateTime<Utc>, tz: Tz) -> String {
    tick.with_timezone(&tz)
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The trailing window `[tick − window, tick)`.
pub fn window(tick: DateTime<Utc>, length: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let length = chrono::Duration::from_std(length).unwrap_or(chrono::Duration::MAX);
    (
        tick.checked_sub_signed(length)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
        tick,
    )
}

/// The most characters of a count kept: PostgreSQL's `numeric` takes far more, but no count
/// of codes needs more than this, and a column of a megabyte must not reach the insert.
const MAX_COUNT_CHARS: usize = 40;

/// Judges one row. Pure, so that the rules are tested without a database.
pub fn judge(row: &SourceRow, min_cardinal: u64, callback_time: &str) -> Verdict {
    match judged(row, min_cardinal, callback_time) {
        Ok(verdict) => verdict,
        Err(why) => Verdict::Invalid(why),
    }
}

fn judged(row: &SourceRow, min_cardinal: u64, callback_time: &str) -> Result<Verdict, String> {
    let app_id = AppId::parse(row.app_id.as_deref().ok_or("app_id is null")?)?;
    let mcc = Mcc::parse(row.mcc.as_deref().ok_or("mcc is null")?)?;
    let count = |name: &str, v: &Option<String>| -> Result<u64, String> {
        let text = v.as_deref().ok_or_else(|| format!("{name} is null"))?;
        if text.starts_with('-') {
            return Err(format!("{name} is negative ({})", excerpt::quoted(text)));
        }
        text.parse::<u64>().map_err(|_| {
            format!(
                "{name} is not a whole number that fits 64 bits ({})",
                excerpt::quoted(text)
            )
        })
    };
    let backfilled = count("backfill_number", &row.backfill_number)?;
    let sent = count("cardinal_number", &row.cardinal_number)?;
    Ok(
        match BackfillRequest::from_counts(app_id, mcc, backfilled, sent, callback_time.to_owned())
        {
            Err(e @ RateError::MoreBackfilledThanSent { .. }) => return Err(e.to_string()),
            Err(RateError::NoneSent) => Verdict::Skip("no codes sent in the window".into()),
            Ok(_) if sent < min_cardinal => Verdict::Skip(format!(
                "only {sent} codes sent, fewer than source.min_cardinal ({min_cardinal})"
            )),
            Ok(req) => Verdict::Send(req),
        },
    )
}

/// The account that signs a judged row, by its app. An app that no account lists cannot be
/// sent whatever its counts: it is recorded invalid with the reason, so that `history` shows
/// it (the config, not the data, must change).
pub fn assign_account(
    accounts: &Accounts,
    row: &SourceRow,
    verdict: Verdict,
) -> (Verdict, Option<String>) {
    let account = row.app_id.as_deref().and_then(|a| accounts.of_app(a));
    match (account, verdict) {
        (Some(a), verdict) => (verdict, a.name_str().map(str::to_owned)),
        (None, Verdict::Invalid(why)) => (Verdict::Invalid(why), None),
        (None, _) => (
            Verdict::Invalid(format!(
                "app {} is in no provider account: add it to the apps of one [[accounts]] \
                 entry ({})",
                excerpt::opt(row.app_id.as_deref()),
                accounts.names()
            )),
            None,
        ),
    }
}

/// A count as stored with an invalid row: kept when PostgreSQL's numeric takes it and it is
/// of a sane length, else NULL (the reason quotes it).
fn stored_count(v: Option<String>) -> Option<String> {
    v.filter(|v| v.len() <= MAX_COUNT_CHARS && store::is_numeric(v))
}

/// The row to store for a judged pair. What came from the source is stored bounded
/// ([`excerpt::stored`]): a column of any size cannot break the insert or the index.
fn new_submission(row: SourceRow, verdict: Verdict, account: Option<String>) -> NewSubmission {
    let rate = verdict.rate();
    let (state, reason) = match verdict {
        Verdict::Send(_) => (State::Pending, None),
        Verdict::Skip(why) => (State::Skipped, Some(why)),
        Verdict::Invalid(why) => (State::Invalid, Some(why)),
    };
    NewSubmission {
        app_id: row.app_id.as_deref().map(excerpt::stored),
        mcc: row.mcc.as_deref().map(excerpt::stored),
        backfill_number: stored_count(row.backfill_number),
        cardinal_number: stored_count(row.cardinal_number),
        rate,
        state,
        reason,
        account,
    }
}

/// A tick claimed and queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Planned {
    pub run_id: i64,
    /// When the database claimed it, by its own clock.
    pub claimed_at: DateTime<Utc>,
    /// Rows the source returned (after the allow-list).
    pub pairs: u64,
    /// Of those, queued as pending: to send.
    pub pending: u64,
    /// Rows the unique key refused: the pair was already recorded for this tick.
    pub duplicates: u64,
    /// Judged rows not to be sent.
    pub skipped: u64,
    pub invalid: u64,
    /// The first invalid row, quoted, with its reason: one log line for the tick.
    pub first_invalid: Option<String>,
    /// Older pending rows of these pairs that this tick replaced.
    pub superseded: u64,
    /// Rows decided without a request (skipped, invalid, superseded), by account and state:
    /// what the metrics count once the tick is committed.
    pub decided: std::collections::BTreeMap<(Option<String>, State), u64>,
    /// Time spent reading the source (its query, fetched through the cursor), and planning
    /// the whole tick (claim to commit): the source's share of a tick, for operators sizing it.
    pub read: Duration,
    pub took: Duration,
}

/// What planning a tick came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Planned(Planned),
    /// Another instance claimed this scheduled tick first.
    Taken,
    /// The database's clock has not reached the tick yet: try again after this long.
    NotDue(Duration),
}

/// Claims `tick` and queues its pairs, once the database's clock has reached it. Nothing is
/// committed unless every row is queued: a database failure midway leaves the tick unclaimed,
/// to be planned again. With `within`, its pairs may be sent for at most that long after the
/// claim (an ad-hoc run's bound), else until the deadline of [`deadline`].
#[tracing::instrument(skip_all, fields(tick = %tick, trigger = trigger.as_str()))]
pub async fn plan(
    ctx: &Context,
    tick: DateTime<Utc>,
    trigger: Trigger,
    within: Option<Duration>,
) -> anyhow::Result<Plan> {
    let settings = &ctx.settings;
    let started = Mono::now();
    let window = window(tick, settings.source.window);
    let callback_time = callback_time(tick, settings.schedule.timezone);
    let mut tx = ctx
        .pool
        .begin()
        .await
        .context("starting the claim transaction")?;
    let (run_id, at) = match runs::claim_run(&mut tx, tick, trigger, window, &ctx.instance).await? {
        Claim::Claimed { run_id, at } => (run_id, at),
        Claim::Taken => return Ok(Plan::Taken),
        Claim::NotDue(wait) => return Ok(Plan::NotDue(wait)),
    };
    let deadline = deadline(settings, tick, at, within);
    let rows = TickRows {
        run_id,
        tick,
        window,
        callback_time: &callback_time,
        deadline,
    };
    let mut planned = queue_window(&mut tx, settings, rows).await?;
    planned.claimed_at = at;
    for (account, n) in store::supersede_older(&mut tx, tick).await? {
        let n = u64::try_from(n).unwrap_or(0);
        planned.superseded += n;
        *planned
            .decided
            .entry((account, State::Superseded))
            .or_default() += n;
    }
    let evaluation = alarm::judge_in(&mut tx, settings, run_id).await;
    store::notify(&mut tx).await?;
    tx.commit().await.context("committing the claim")?;
    planned.took = Mono::now().since(started);
    alarm::announce(&ctx.pool, settings, &evaluation);
    planned.report(tick);
    if planned.pending == 0 {
        sender::close_run(&ctx.pool, run_id).await?;
    }
    Ok(Plan::Planned(planned))
}

/// The rows of a batch that the allow-list lets through (a null app_id is judged invalid, not
/// dropped), each with its verdict and the account that signs it: the one step that planning
/// and a dry run share.
fn judge_batch<'a>(
    settings: &'a Settings,
    callback_time: &'a str,
    batch: Vec<SourceRow>,
) -> impl Iterator<Item = (SourceRow, Verdict, Option<String>)> + 'a {
    batch
        .into_iter()
        .filter(|r| {
            r.app_id
                .as_deref()
                .is_none_or(|a| settings.source.allows(a))
        })
        .map(|row| {
            let verdict = judge(&row, settings.source.min_cardinal, callback_time);
            let (verdict, account) = assign_account(&settings.provider.accounts, &row, verdict);
            (row, verdict, account)
        })
}

/// Opens the cursor over the window: the operator's query, or the default source, read whole or
/// through its incremental sums (`sums`), which this moves to the window in `tx`.
async fn open_window(
    tx: &mut Tx,
    settings: &Settings,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> anyhow::Result<Cursor> {
    let source = &settings.source;
    if source.query.is_some() || !source.incremental {
        return Cursor::open(tx, source, start, end).await;
    }
    let (settled, moved) = crate::queue::sums::advance(tx, start, end).await?;
    tracing::debug!(?moved, "source sums moved to the window");
    Cursor::open_query(tx, crate::queue::sums::QUERY, settled, end).await
}

/// Streams the window from the source and queues it, batch by batch, in the claim transaction.
async fn queue_window(
    tx: &mut Tx,
    settings: &Settings,
    rows: TickRows<'_>,
) -> anyhow::Result<Planned> {
    let reading = Mono::now();
    let mut cursor = open_window(tx, settings, rows.window).await?;
    let mut planned = Planned {
        run_id: rows.run_id,
        read: Mono::now().since(reading),
        ..Planned::default()
    };
    loop {
        let reading = Mono::now();
        let batch = cursor.next(tx, BATCH).await?;
        planned.read += Mono::now().since(reading);
        if batch.is_empty() {
            return Ok(planned);
        }
        let judged: Vec<NewSubmission> = judge_batch(settings, rows.callback_time, batch)
            .map(|(row, verdict, account)| new_submission(row, verdict, account))
            .collect();
        let enqueued = store::enqueue(tx, rows, &judged).await?;
        planned.pairs += judged.len() as u64;
        planned.duplicates += judged.len() as u64 - enqueued.inserted;
        planned.pending += enqueued.pending;
        for row in judged.iter().chain(&enqueued.refused) {
            match row.state {
                State::Skipped => planned.skipped += 1,
                State::Invalid => planned.note_invalid(row),
                _ => continue,
            }
            let key = (row.account.clone(), row.state);
            *planned.decided.entry(key).or_default() += 1;
        }
    }
}

impl Planned {
    fn note_invalid(&mut self, row: &NewSubmission) {
        self.invalid += 1;
        if self.first_invalid.is_none() {
            self.first_invalid = Some(format!(
                "app_id {}, mcc {}: {}",
                excerpt::opt(row.app_id.as_deref()),
                excerpt::opt(row.mcc.as_deref()),
                row.reason.as_deref().unwrap_or("invalid")
            ));
        }
    }

    /// Counts the rows decided at planning in the metrics, and logs the claim: one line for
    /// the tick, one for its invalid rows whatever their number.
    fn report(&self, tick: DateTime<Utc>) {
        for ((account, state), n) in &self.decided {
            metrics::record_decided(account.as_deref(), *state, *n);
        }
        if self.duplicates > 0 {
            tracing::warn!(
                duplicates = self.duplicates,
                "pairs already recorded for this tick (the source returned them twice, or a run --once took them) are not sent again"
            );
        }
        if let Some(first) = &self.first_invalid {
            tracing::warn!(
                invalid = self.invalid,
                "{} of the tick {tick} not sent; the first: {first}; `backfill-reporter history --state invalid` lists them",
                if self.invalid == 1 { "1 invalid source row".to_owned() } else { format!("{} invalid source rows", self.invalid) }
            );
        }
        if self.superseded > 0 {
            tracing::info!(
                superseded = self.superseded,
                "older unsent submissions of these pairs were superseded by this tick"
            );
        }
        tracing::info!(
            run_id = self.run_id,
            pairs = self.pairs,
            to_send = self.pending,
            read_ms = self.read.as_millis() as u64,
            planned_ms = self.took.as_millis() as u64,
            "tick {tick} claimed: {} pairs, {} to send, {} skipped, {} invalid; planned in {:.1}s, {:.1}s of it reading the source",
            self.pairs,
            self.pending,
            self.skipped,
            self.invalid,
            self.took.as_secs_f64(),
            self.read.as_secs_f64()
        );
    }
}

/// A dry run's view of the window: every pair with its verdict; nothing is written.
#[derive(Debug, Clone)]
pub struct Preview {
    pub window: (DateTime<Utc>, DateTime<Utc>),
    pub callback_time: String,
    /// Each pair with its verdict and the account that would sign it.
    pub pairs: Vec<(SourceRow, Verdict, Option<String>)>,
}

/// Reads the window as [`plan`] would and judges it, inside a transaction that is rolled back.
pub async fn preview(
    pool: &Db,
    settings: &Settings,
    tick: DateTime<Utc>,
) -> anyhow::Result<Preview> {
    let window = window(tick, settings.source.window);
    let callback_time = callback_time(tick, settings.schedule.timezone);
    let mut tx = pool.begin().await.context("starting a read transaction")?;
    let mut cursor = open_window(&mut tx, settings, window).await?;
    let mut seen = std::collections::HashSet::new();
    let mut pairs = Vec::new();
    loop {
        let batch = cursor.next(&mut tx, BATCH).await?;
        if batch.is_empty() {
            break;
        }
        for (row, verdict, account) in judge_batch(settings, &callback_time, batch) {
            if seen.insert((row.app_id.clone(), row.mcc.clone())) {
                pairs.push((row, verdict, account));
            }
        }
    }
    tx.rollback().await.context("ending the read transaction")?;
    Ok(Preview {
        window,
        callback_time,
        pairs,
    })
}

/// Plans `tick` and sends its pairs until the run is closed (every pair has its final state),
/// working only that run's rows. `Ok(None)` when the scheduled tick was already claimed. After
/// `shutdown`, in-flight requests finish and the rest stays pending, in the returned tally.
pub async fn run(
    ctx: &Context,
    tick: DateTime<Utc>,
    trigger: Trigger,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<RunSummary>> {
    run_within(ctx, tick, trigger, shutdown, None).await
}

/// [`run`], its pairs sent for at most `within` after the claim: an ad-hoc run ends within
/// that bound whatever the schedule, its unsent pairs failed with their last cause.
pub async fn run_within(
    ctx: &Context,
    tick: DateTime<Utc>,
    trigger: Trigger,
    shutdown: &CancellationToken,
    within: Option<Duration>,
) -> anyhow::Result<Option<RunSummary>> {
    let planned = match plan(ctx, tick, trigger, within).await? {
        Plan::Planned(p) => p,
        Plan::Taken => return Ok(None),
        Plan::NotDue(wait) => anyhow::bail!(
            "the tick {tick} is {}s ahead of the database's clock: not due yet",
            wait.as_secs()
        ),
    };
    if planned.pending > 0 {
        sender::work(ctx.clone(), Scope::Run(planned.run_id), shutdown.clone()).await?;
    }
    Ok(Some(runs::summary(&ctx.pool, planned.run_id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_time_is_the_tick_in_the_zone_with_its_offset() {
        let tick = DateTime::parse_from_rfc3339("2023-01-31T16:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(callback_time(tick, tz), "2023-02-01T00:00:00+08:00");
        assert_eq!(
            callback_time(tick, chrono_tz::UTC),
            "2023-01-31T16:00:00+00:00"
        );
    }

    fn row(app: &str, mcc: &str, b: &str, s: &str) -> SourceRow {
        SourceRow {
            app_id: Some(app.into()),
            mcc: Some(mcc.into()),
            backfill_number: Some(b.into()),
            cardinal_number: Some(s.into()),
        }
    }

    #[test]
    fn each_skip_and_invalid_kind_has_its_reason() {
        let cases = [
            (row("appA", "460", "0", "0"), "skip", "no codes sent"),
            (row("appA", "460", "1", "2"), "skip", "min_cardinal"),
            (row("appA", "460", "6", "5"), "invalid", "greater than sent"),
            (row("appA", "460", "-1", "5"), "invalid", "negative"),
            (row("appA", "460", "1", "-5"), "invalid", "negative"),
            (row("appA", "46", "1", "5"), "invalid", "three-digit"),
            (row("abc", "460", "1", "5"), "invalid", "4 to 32"),
            (row(&"a".repeat(33), "460", "1", "5"), "invalid", "4 to 32"),
            (row("appA", "460", "1.5", "5"), "invalid", "whole number"),
        ];
        for (r, kind, needle) in cases {
            let (k, why) = match judge(&r, 3, "2023-02-01T00:00:00+08:00") {
                Verdict::Skip(w) => ("skip", w),
                Verdict::Invalid(w) => ("invalid", w),
                Verdict::Send(_) => ("send", String::new()),
            };
            assert_eq!(k, kind, "{r:?}");
            assert!(why.contains(needle), "{r:?}: {why}");
        }
    }

    #[test]
    fn a_sendable_row_becomes_the_request_with_its_exact_rate() {
        let Verdict::Send(req) = judge(&row("appA", "460", "1", "8"), 1, "t") else {
            panic!("sendable");
        };
        assert_eq!(req.backfill_now.to_string(), "12.5");
        assert_eq!((req.backfill_number, req.backfill_cardinal_number), (1, 8));
    }
}
