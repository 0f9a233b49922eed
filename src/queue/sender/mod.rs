//! Sending: every instance works the queue in `report_submissions`. Three tasks share the work:
//!
//! - the dispatcher claims pages of due rows under a lease and keeps at most `max_in_flight`
//!   requests going, gated by the circuit breaker;
//! - the writer records outcomes by group commit: as soon as one write finishes, the next takes
//!   every outcome that completed meanwhile. A request keeps its in-flight slot until its
//!   outcome is recorded, so a `kill -9` loses at most `max_in_flight` answers (whose pairs are
//!   then sent again), and while the database cannot record, nothing new is sent;
//! - the renewer extends the lease of every row still held, so that only a dead or cut-off
//!   instance's rows pass to another instance.
//!
//! The lease is a fence. A claim and a renewal say which rows they leased and for how long, by
//! the database's clock; this instance holds each row until then on its boot clock
//! ([`Mono`]), which keeps counting through a pause. A row a renewal did not return is no
//! longer this instance's and leaves its hands at once. A request starts only while its row's
//! lease has at least the request timeout left, so an instance that could not renew (its
//! database is gone, or it was paused) stops sending before another can take its rows, and
//! one that resumes finds its leases passed. A duplicate is then possible only for requests
//! already on the wire when it stalled: at most `max_in_flight`. Every time written to a row is
//! the database's (see `store::record`). Planning belongs to `cycle`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ProviderSettings;
use crate::db::clock::Mono;
use crate::db::Db;
use crate::domain::run::State;
use crate::provider::concurrency::{Answered, Change, Limiters, Signal};
use crate::provider::{BackfillRequest, Class, Exchange, ProviderClient};
use crate::queue::context::Context;
use crate::queue::runs;
use crate::queue::store::{self, Attempt, Claimed, Disposition, Outcome};
use crate::retry::backoff::backoff;
use crate::retry::breaker::{Breaker, Gate};
use crate::views::metrics;

/// How often an idle dispatcher looks for due rows (retries that came due, rows whose owner
/// died), besides being woken by `NOTIFY` when a tick is queued.
const POLL: Duration = Duration::from_secs(2);
/// Lease beyond the request timeout: a dead instance's rows are taken this long after its last
/// renewal plus one request timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(10);
/// A request starts only while its lease has the request timeout and this much more left: the
/// margin covers the time from the check to the request's first byte, and the outcome write.
const START_MARGIN: Duration = Duration::from_secs(2);
/// The longest wait between two tries of a database step the sender cannot do without.
const DB_RETRY_CAP: Duration = Duration::from_secs(5);
/// How often held leases are renewed: well inside the margin, so that one slow renewal does
/// not pause sending.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// At shutdown, in-flight requests get at most this long: the unit's `TimeoutStopSec=` (30 s)
/// must cover it and the last write. Rows still in flight then pass to the next owner when
/// their lease expires.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// After the drain, how long the last outcomes may take to be recorded.
pub const RECORD_LIMIT: Duration = Duration::from_secs(5);

/// Which rows an instance works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every due row: the daemon.
    All,
    /// Only this run's rows, until it is closed: `run --once`.
    Run(i64),
}

/// The lease a row is claimed with: long enough for one request and a missed renewal.
pub fn lease(provider: &ProviderSettings) -> Duration {
    provider.request_timeout + LEASE_MARGIN
}

/// Closes the run if nothing of it is pending, and logs its summary; the one instance that
/// closes it logs it.
pub async fn close_run(pool: &Db, run_id: i64) -> anyhow::Result<bool> {
    if !runs::close_if_done(pool, run_id).await? {
        return Ok(false);
    }
    let s = runs::summary(pool, run_id).await?;
    metrics::record_run(&s);
    let t = &s.tally;
    tracing::info!(
        run_id,
        pairs = t.pairs,
        succeeded = t.succeeded,
        failed = t.failed,
        skipped = t.skipped,
        invalid = t.invalid,
        superseded = t.superseded,
        attempts = s.attempts,
        duration_ms = s.duration.as_millis() as u64,
        "cycle for {} done: {t} in {:.1}s ({} requests)",
        s.tick,
        s.duration.as_secs_f64(),
        s.attempts
    );
    if !s.failures.is_empty() {
        let causes: Vec<String> = s
            .failures
            .iter()
            .map(|(cause, n)| format!("{n} × {cause}"))
            .collect();
        tracing::warn!(
            run_id,
            "cycle for {}: failed by cause: {}",
            s.tick,
            causes.join("; ")
        );
    }
    Ok(true)
}

/// Rows this instance holds a lease on, each until when on the boot clock, for the renewer and
/// the dispatcher.
#[derive(Debug, Default)]
struct Held {
    rows: HashMap<i64, Mono>,
    /// Rows whose outcome the writer is recording: a renewal skips them (they are locked), and
    /// that is not a lost lease.
    writing: HashSet<i64>,
}

type SharedHeld = Arc<Mutex<Held>>;

fn lock_held(h: &SharedHeld) -> std::sync::MutexGuard<'_, Held> {
    h.lock().unwrap_or_else(|e| e.into_inner())
}

impl Held {
    /// Takes the leases a claim or renewal wrote, held from `sent` (when its statement left:
    /// the database wrote them later, so they surely last at least this long).
    fn lease(&mut self, sent: Mono, leases: &[store::Leased]) {
        for l in leases {
            let until = sent + l.lasts;
            self.rows
                .entry(l.id)
                .and_modify(|u| *u = (*u).max(until))
                .or_insert(until);
        }
    }

    /// After a renewal of `asked` that returned `renewed`: the rows it did not return leave
    /// this instance's hands. Returns how many of those were lost (not being recorded).
    fn renewed(&mut self, sent: Mono, asked: &[i64], renewed: &[store::Leased]) -> usize {
        let kept: HashSet<i64> = renewed.iter().map(|l| l.id).collect();
        let mut lost = 0;
        for id in asked.iter().filter(|id| !kept.contains(id)) {
            if self.rows.remove(id).is_some() && !self.writing.contains(id) {
                lost += 1;
            }
        }
        let still: Vec<store::Leased> = renewed
            .iter()
            .filter(|l| self.rows.contains_key(&l.id))
            .cloned()
            .collect();
        self.lease(sent, &still);
        lost
    }

    /// Until when this instance's lease on `id` surely lasts; `None` when it holds none.
    fn valid_until(&self, id: i64) -> Option<Mono> {
        self.rows.get(&id).copied()
    }
}

/// A claimed row waiting for its request, with its deadline on the boot clock.
#[derive(Debug, Clone)]
struct Ready {
    row: Claimed,
    deadline: Option<Mono>,
}

/// Messages to the writer.
enum ToWriter {
    /// With, for an attempt, the acknowledgement sent once the outcome is recorded.
    Outcome(Outcome, Option<oneshot::Sender<()>>),
    /// Fail what nobody holds of this run and account: the provider refused the account or
    /// the host.
    FailRun {
        run_id: i64,
        account: Option<String>,
        reason: String,
    },
    /// End the pending rows whose deadline passed and that nobody holds.
    Expire { run: Option<i64> },
}

/// One finished request, reported back to the dispatcher.
struct Attempted {
    /// The account it was sent for: whose breaker and in-flight count it bears on.
    account: Option<String>,
    /// False when the request was not sent after all: its lease lapsed before it could start.
    sent: bool,
    /// An outage failure (connection, timeout, 5xx) and its cause; any other result means
    /// the provider is reachable.
    outage: Option<(String, Option<Duration>)>,
    /// A rejection about the account or host (-1, -2): stop the account's sending for the
    /// run, with this reason.
    stop: Option<(i64, String)>,
    /// A -16: the signed timestamp and the local clock, for one warning.
    clock: Option<i64>,
    was_probe: bool,
}

/// Works the queue until `shutdown` (or, for [`Scope::Run`], until the run is closed). Database
/// and provider failures are waited out; this returns an error only for a bug.
pub async fn work(ctx: Context, scope: Scope, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (_tx, rx) = tokio::sync::watch::channel(ctx);
    work_with(rx, scope, shutdown, Arc::new(Notify::new())).await
}

/// [`work`] with a context that a reload can replace, and a wake-up for new rows.
pub async fn work_with(
    ctx: tokio::sync::watch::Receiver<Context>,
    scope: Scope,
    shutdown: CancellationToken,
    wake: Arc<Notify>,
) -> anyhow::Result<()> {
    let first = ctx.borrow().clone();
    // Unique per process start: a restarted instance (same host, perhaps the same pid in a
    // container) must not mistake its predecessor's leases for its own.
    let owner = format!("{}:{:08x}", first.instance, rand::rng().random::<u32>());
    let held: SharedHeld = Arc::default();
    let closed = Arc::new(Notify::new());
    let background = CancellationToken::new();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_outcomes(
        first.pool.clone(),
        owner.clone(),
        out_rx,
        held.clone(),
        closed.clone(),
    ));
    let renewer = tokio::spawn(renew_leases(
        first.pool.clone(),
        owner.clone(),
        lease(&first.settings.provider),
        held.clone(),
        background.clone(),
    ));
    let limiters = Arc::new(Limiters::default());
    if scope == Scope::All {
        watch_queue(&ctx, &wake, &limiters, &background);
    }
    let mut dispatcher = Dispatcher::new(ctx, owner, scope, out_tx, held, limiters);
    dispatcher.run(shutdown, wake, closed).await;
    drop(dispatcher);
    // The writer ends once every outcome sent to it is recorded; while the database is
    // unreachable it would wait forever, so the wait is bounded and what is left unrecorded
    // is sent again by the next owner of those rows.
    let mut writer = writer;
    if tokio::time::timeout(RECORD_LIMIT, &mut writer)
        .await
        .is_err()
    {
        tracing::warn!("the last outcomes could not be recorded (database unreachable?): those pairs are sent again when their lease expires");
        writer.abort();
    }
    background.cancel();
    let _ = renewer.await;
    Ok(())
}

/// The daemon's watchers beside its dispatcher: `NOTIFY` for new ticks (or a word that the
/// poll stands in for it), and the pace of the current tick.
fn watch_queue(
    ctx: &tokio::sync::watch::Receiver<Context>,
    wake: &Arc<Notify>,
    limiters: &Arc<Limiters>,
    stop: &CancellationToken,
) {
    let pool = ctx.borrow().pool.clone();
    if pool.can_listen() {
        tokio::spawn(listen(pool, wake.clone(), stop.clone()));
    } else {
        tracing::info!(
            "through a transaction pooler without database.direct_url, NOTIFY cannot reach \
             this instance: it looks for queued rows every {}s instead",
            POLL.as_secs()
        );
    }
    tokio::spawn(crate::queue::pace::watch(
        ctx.clone(),
        limiters.clone(),
        stop.clone(),
    ));
}

/// One account's share of the dispatcher: its claimed rows waiting for a request, its circuit
/// breaker, its requests on the wire and the client that signs them. An account whose
/// provider answers fail, or that the provider throttles, holds back no other account.
struct Lane {
    ready: VecDeque<Ready>,
    breaker: Breaker,
    in_flight: usize,
    client: ProviderClient,
}

/// `account` for a log line: " for account shop", nothing for the unnamed account.
fn for_account(account: &Option<String>) -> String {
    account
        .as_deref()
        .map(|a| format!(" for account {a}"))
        .unwrap_or_default()
}

struct Dispatcher {
    ctx: Context,
    ctx_rx: tokio::sync::watch::Receiver<Context>,
    owner: String,
    scope: Scope,
    /// Per account (`None`: the unnamed one), in a stable order.
    lanes: BTreeMap<Option<String>, Lane>,
    /// The next account to start a request for first, so that none always comes first.
    turn: usize,
    in_flight: JoinSet<Attempted>,
    /// The account of each request task, for a task that fails without reporting.
    in_flight_accounts: HashMap<tokio::task::Id, Option<String>>,
    out: mpsc::UnboundedSender<ToWriter>,
    held: SharedHeld,
    claim: Option<tokio::task::JoinHandle<anyhow::Result<Claim>>>,
    /// Where the next claim resumes (see [`store::ClaimCursor`]), and whose rows the claim
    /// that set it took: a claim of other accounts starts from the head, or it would pass
    /// over their rows behind the cursor.
    cursor: store::ClaimCursor,
    cursor_accounts: store::Accounts,
    /// No claim before then (the last one found nothing, or the database failed).
    idle_until: Option<Instant>,
    db_failures: u32,
    clock_warned: bool,
    /// (run, account) pairs failed for good after a -1/-2 seen by this instance.
    stopped: HashSet<(i64, Option<String>)>,
    /// While a breaker is open its rows are not claimed, so overdue rows are expired in SQL.
    last_expiry: Instant,
    /// How many requests each account may have on the wire (see `concurrency`), shared with
    /// the requests, which report their answers to it.
    limiters: Arc<Limiters>,
    /// Rung by a request as soon as its answer comes, before its outcome is recorded: the
    /// limit may admit another at once.
    answered: Arc<Notify>,
}

/// The accounts of `provider`, as rows store them, with each one's fixed limit and ceiling.
fn accounts_of(provider: &ProviderSettings) -> Vec<Option<String>> {
    provider
        .accounts
        .iter()
        .map(|a| a.name_str().map(str::to_owned))
        .collect()
}

fn limits_of(provider: &ProviderSettings) -> (Option<usize>, usize) {
    (provider.concurrency.fixed(), provider.max_in_flight)
}

impl Dispatcher {
    fn new(
        ctx_rx: tokio::sync::watch::Receiver<Context>,
        owner: String,
        scope: Scope,
        out: mpsc::UnboundedSender<ToWriter>,
        held: SharedHeld,
        limiters: Arc<Limiters>,
    ) -> Self {
        let ctx = ctx_rx.borrow().clone();
        let mut dispatcher = Self {
            lanes: BTreeMap::new(),
            turn: 0,
            ctx,
            ctx_rx,
            owner,
            scope,
            in_flight: JoinSet::new(),
            in_flight_accounts: HashMap::new(),
            out,
            held,
            claim: None,
            cursor: None,
            cursor_accounts: store::Accounts::Any,
            idle_until: None,
            db_failures: 0,
            clock_warned: false,
            stopped: HashSet::new(),
            last_expiry: Instant::now(),
            limiters,
            answered: Arc::new(Notify::new()),
        };
        dispatcher.keep_lanes(false);
        dispatcher
    }

    /// Makes the lanes and limiters match the accounts of the context: a new account gets a
    /// lane, a gone one's unsent rows go back to the queue (where, unsendable now, they fail
    /// with the reason), and every lane signs with its account's client as configured now (a
    /// rotated secret signs the next request). With `anew`, every limit starts over.
    fn keep_lanes(&mut self, anew: bool) {
        let provider = &self.ctx.settings.provider;
        let accounts = accounts_of(provider);
        self.limiters
            .keep(&accounts, limits_of(provider), anew, Mono::now());
        let first_probe = provider.retry_backoff.max(Duration::from_secs(1));
        let gone: Vec<Option<String>> = self
            .lanes
            .keys()
            .filter(|k| !accounts.contains(k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(lane) = self.lanes.remove(&key) {
                release(&self.out, lane.ready);
            }
        }
        for key in accounts {
            let Some(client) = self.ctx.clients.get(key.as_deref()).cloned() else {
                continue;
            };
            match self.lanes.get_mut(&key) {
                Some(lane) => lane.client = client,
                None => {
                    metrics::declare_account(key.as_deref());
                    let lane = Lane {
                        ready: VecDeque::new(),
                        breaker: Breaker::new(first_probe),
                        in_flight: 0,
                        client,
                    };
                    self.lanes.insert(key, lane);
                }
            }
        }
        for (account, limit, baseline) in self.limiters.each() {
            metrics::record_concurrency(account.as_deref(), limit, baseline);
        }
    }

    /// Rows claimed at a time: several pages of requests, so that claims are few and run
    /// while requests are in flight.
    fn page(&self) -> usize {
        (self.ctx.settings.provider.max_in_flight * 4).clamp(64, 1024)
    }

    fn run_filter(&self) -> Option<i64> {
        match self.scope {
            Scope::All => None,
            Scope::Run(id) => Some(id),
        }
    }

    fn emit(&self, outcome: Outcome) {
        let _ = self.out.send(ToWriter::Outcome(outcome, None));
    }

    /// Claimed rows not yet started, of every account.
    fn ready_len(&self) -> usize {
        self.lanes.values().map(|l| l.ready.len()).sum()
    }

    /// Hands every claimed, unstarted row back to the queue.
    fn release_ready(&mut self) {
        for lane in self.lanes.values_mut() {
            release(&self.out, std::mem::take(&mut lane.ready));
        }
    }

    async fn run(&mut self, shutdown: CancellationToken, wake: Arc<Notify>, closed: Arc<Notify>) {
        let mut draining: Option<Instant> = None;
        loop {
            self.take_reload();
            if draining.is_none() {
                self.start_requests();
                self.start_claim();
                self.expire_while_open();
            } else if self.in_flight.is_empty() {
                break;
            }
            if self.run_is_closed().await {
                break;
            }
            let timer = self.next_timer(draining);
            tokio::select! {
                () = shutdown.cancelled(), if draining.is_none() => {
                    draining = Some(Instant::now() + DRAIN_LIMIT);
                    self.release_ready();
                    if let Some(claim) = self.claim.take() {
                        self.take_claim(claim.await);
                        self.release_ready();
                    }
                    if !self.in_flight.is_empty() {
                        tracing::info!(in_flight = self.in_flight.len(), "waiting for requests in flight");
                    }
                }
                Some(done) = self.in_flight.join_next_with_id(), if !self.in_flight.is_empty() => {
                    self.on_joined(done);
                }
                result = async { self.claim.as_mut().expect("guarded").await }, if self.claim.is_some() => {
                    self.claim = None;
                    self.take_claim(result);
                }
                () = wake.notified() => self.idle_until = None,
                () = self.answered.notified() => {}
                () = closed.notified() => {}
                () = tokio::time::sleep_until(timer) => {
                    if draining.is_some_and(|d| Instant::now() >= d) {
                        tracing::warn!(in_flight = self.in_flight.len(), "requests still in flight at the drain limit: their pairs pass to the next owner when the lease expires");
                        self.in_flight.abort_all();
                        break;
                    }
                }
            }
        }
        self.release_ready();
    }

    /// A request task ended: its report, or (a bug) a task that failed without one, which
    /// counts against its account's breaker.
    fn on_joined(&mut self, done: Result<(tokio::task::Id, Attempted), tokio::task::JoinError>) {
        match done {
            Ok((id, a)) => {
                self.in_flight_accounts.remove(&id);
                self.on_attempted(a);
            }
            Err(e) => {
                tracing::error!("a request task failed: {e}");
                let account = self.in_flight_accounts.remove(&e.id()).flatten();
                if let Some(lane) = self.lanes.get_mut(&account) {
                    lane.in_flight = lane.in_flight.saturating_sub(1);
                    lane.breaker
                        .outage(Instant::now(), "a request task failed", None);
                }
            }
        }
    }

    /// Takes a reloaded context; a changed concurrency setting starts the limits anew.
    fn take_reload(&mut self) {
        if !self.ctx_rx.has_changed().unwrap_or(false) {
            return;
        }
        let old = self.ctx.settings.provider.clone();
        self.ctx = self.ctx_rx.borrow_and_update().clone();
        let new = &self.ctx.settings.provider;
        let anew = (old.concurrency, old.max_in_flight) != (new.concurrency, new.max_in_flight);
        self.keep_lanes(anew);
    }

    /// For `run --once`: whether its run has been closed (by this instance or another).
    async fn run_is_closed(&self) -> bool {
        let Scope::Run(run) = self.scope else {
            return false;
        };
        if !(self.ready_len() == 0 && self.in_flight.is_empty() && self.claim.is_none()) {
            return false;
        }
        // Closing is idempotent and cheap; it also covers a run whose last rows another
        // instance finished, or that had nothing to send. A run this call did not close may
        // have been closed already.
        match close_run(&self.ctx.pool, run).await {
            Ok(true) => true,
            Ok(false) => runs::is_closed(&self.ctx.pool, run).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    fn next_timer(&self, draining: Option<Instant>) -> Instant {
        let now = Instant::now();
        let mut at = now + POLL;
        if let Some(d) = draining {
            at = at.min(d);
        }
        if let Some(t) = self.idle_until {
            at = at.min(t.max(now));
        }
        for lane in self.lanes.values() {
            if let Gate::WaitUntil(t) = lane.breaker.gate(now) {
                at = at.min(t);
            }
        }
        if let Some(hold) = self.limiters.held_until() {
            at = at.min(now + Mono::now().until(hold));
        }
        at
    }

    /// Starts requests for ready rows while the breakers, the limits, the bound and the leases
    /// allow: one account's request after another's, so that each keeps its own pace.
    fn start_requests(&mut self) {
        let max = self.ctx.settings.provider.max_in_flight;
        let mut accounts: Vec<Option<String>> = self.lanes.keys().cloned().collect();
        let first = self.turn % accounts.len().max(1);
        accounts.rotate_left(first);
        self.turn = self.turn.wrapping_add(1);
        loop {
            let mut moved = false;
            for account in &accounts {
                if self.in_flight.len() >= max {
                    return;
                }
                moved |= self.start_next(account);
            }
            if !moved {
                return;
            }
        }
    }

    /// Takes the next ready row of `account` if its breaker and limit let it go: starts its
    /// request, or ends it unsent. False when the account can take no row now.
    fn start_next(&mut self, account: &Option<String>) -> bool {
        let needed = self.ctx.settings.provider.request_timeout + START_MARGIN;
        let Some(lane) = self.lanes.get_mut(account) else {
            return false;
        };
        let probe = match lane.breaker.gate(Instant::now()) {
            Gate::Send => false,
            Gate::Probe => true,
            Gate::WaitUntil(_) | Gate::AwaitProbe => return false,
        };
        if lane.ready.is_empty() || !self.limiters.admits(account, Mono::now()) {
            return false;
        }
        let ready = lane.ready.pop_front().expect("checked");
        let now = Mono::now();
        match lock_held(&self.held).valid_until(ready.row.id) {
            Some(until) if until >= now + needed => {}
            Some(until) if until > now => {
                // Renewals are failing: wait for one, or for the lease to lapse.
                lane.ready.push_front(ready);
                return false;
            }
            // A renewal did not return the row: it is another instance's now. Forget it.
            None => return true,
            // The lease lapsed on this side (renewals failed, or the process was paused): the
            // row may be another instance's now, or still this one's in the database, where it
            // would stay leased as long as the renewer found it held. Hand it back: the write is
            // guarded, so it frees the row only if it is still ours.
            Some(_) => {
                self.emit(Outcome::released(ready.row.id, ready.row.run_id));
                return true;
            }
        }
        if let Some(outcome) = self.unsendable(&ready, now) {
            self.emit(outcome);
            return true;
        }
        self.spawn_request(ready.row, probe);
        true
    }

    fn spawn_request(&mut self, row: Claimed, probe: bool) {
        let lane = self
            .lanes
            .get_mut(&row.account)
            .expect("a lane for the row");
        let request = row.request.clone().expect("unsendable() checked it");
        if probe {
            lane.breaker.probe_started();
        }
        lane.in_flight += 1;
        self.limiters.started(&row.account);
        let job = Job {
            ctx: self.ctx.clone(),
            account: row.account.clone(),
            client: lane.client.clone(),
            out: self.out.clone(),
            held: self.held.clone(),
            limiters: self.limiters.clone(),
            answered: self.answered.clone(),
            was_probe: probe,
        };
        let account = row.account.clone();
        let task = self
            .in_flight
            .spawn(async move { attempt(job, row, request).await });
        self.in_flight_accounts.insert(task.id(), account);
    }

    /// The outcome of a row that must not be sent: its account's sending was stopped for its
    /// run, it no longer makes a request, or its deadline passed while it waited.
    fn unsendable(&self, ready: &Ready, now: Mono) -> Option<Outcome> {
        let row = &ready.row;
        if self.stopped.contains(&(row.run_id, row.account.clone())) {
            let why =
                "not sent: the provider refused the account or this host earlier in the cycle";
            return Some(Outcome::unsent(
                row.id,
                row.run_id,
                State::Failed,
                why.into(),
            ));
        }
        if row.replaced {
            let why = store::REPLACED.to_owned();
            return Some(Outcome::unsent(row.id, row.run_id, State::Superseded, why));
        }
        if let Err(why) = &row.request {
            return Some(Outcome::unsent(
                row.id,
                row.run_id,
                State::Invalid,
                why.clone(),
            ));
        }
        ready
            .deadline
            .filter(|d| *d <= now)
            .map(|_| Outcome::expired(row.id, row.run_id))
    }

    /// How many rows to claim next, and whose: the accounts whose breaker lets them send and
    /// that hold at most half a page each (a slow account's backlog must not keep the others'
    /// rows from being claimed), or one row of an account whose breaker wants a probe.
    fn wanted(&self, now: Instant) -> Option<(usize, store::Accounts)> {
        let page = self.page();
        let (mut have, mut except) = (0, Vec::new());
        for (account, lane) in &self.lanes {
            let holds = lane.ready.len() + lane.in_flight;
            match lane.breaker.gate(now) {
                Gate::Send if holds <= page / 2 => have += holds,
                Gate::Probe if lane.ready.is_empty() => {
                    return Some((1, store::Accounts::Only(account.clone())));
                }
                _ => except.push(account.clone()),
            }
        }
        if except.len() == self.lanes.len() {
            return None;
        }
        let accounts = if except.is_empty() {
            store::Accounts::Any
        } else {
            store::Accounts::Except(except)
        };
        Some((page.saturating_sub(have).max(1), accounts))
    }

    /// Claims more rows when the page runs low, in the background.
    fn start_claim(&mut self) {
        let now = Instant::now();
        if self.claim.is_some() || self.idle_until.is_some_and(|t| now < t) {
            return;
        }
        let Some((limit, accounts)) = self.wanted(now) else {
            return;
        };
        let (pool, owner) = (self.ctx.pool.clone(), self.owner.clone());
        let (lease, run) = (lease(&self.ctx.settings.provider), self.run_filter());
        let after = self.cursor.filter(|_| self.cursor_accounts == accounts);
        self.cursor_accounts = accounts.clone();
        let held = self.held.clone();
        self.claim = Some(tokio::spawn(async move {
            let sent = Mono::now();
            let page = store::claim(&pool, &owner, limit, lease, (run, &accounts), after).await?;
            tracing::debug!(
                rows = page.rows.len(),
                ms = Mono::now().since(sent).as_secs_f64() * 1000.0,
                "claimed"
            );
            if page.rows.is_empty() {
                if after.is_some() {
                    // Nothing after the cursor: look again from the head.
                    return Ok(Claim::Rows(Vec::new(), None));
                }
                return Ok(Claim::Idle(store::next_due(&pool, run).await?));
            }
            lock_held(&held).lease(sent, &page.leases);
            let rows = page
                .rows
                .into_iter()
                .map(|row| Ready {
                    deadline: row.deadline_in.map(|d| sent + d),
                    row,
                })
                .collect();
            Ok(Claim::Rows(rows, page.cursor))
        }));
    }

    fn take_claim(&mut self, result: Result<anyhow::Result<Claim>, tokio::task::JoinError>) {
        let now = Instant::now();
        match result.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(claim) => {
                if self.db_failures > 0 {
                    tracing::info!("database reachable again: sending resumes");
                }
                self.db_failures = 0;
                match claim {
                    Claim::Rows(rows, cursor) => {
                        self.idle_until = None;
                        self.cursor = cursor;
                        rows.into_iter().for_each(|r| self.take_row(r));
                    }
                    Claim::Idle(wait) => {
                        self.idle_until = Some(now + wait.map_or(POLL, |w| w.min(POLL)));
                    }
                }
            }
            Err(e) => {
                self.cursor = None;
                self.db_failures += 1;
                if self.db_failures == 1 {
                    tracing::warn!("cannot claim submissions, retrying with backoff: {e:#}");
                } else {
                    tracing::debug!(failures = self.db_failures, "claim failed again: {e:#}");
                }
                let wait = backoff(Duration::from_secs(1), self.db_failures);
                self.idle_until = Some(now + wait.max(Duration::from_millis(500)));
            }
        }
        // A page that arrived after an account's breaker opened goes back, but for the
        // probe's row.
        for lane in self.lanes.values_mut() {
            if !lane.breaker.is_closed() && lane.ready.len() > 1 {
                let keep = lane.ready.pop_front();
                release(&self.out, std::mem::take(&mut lane.ready));
                lane.ready.extend(keep);
            }
        }
    }

    /// A claimed row to its account's lane; a row planned for an account the config no
    /// longer has cannot be signed, and fails with the reason.
    fn take_row(&mut self, ready: Ready) {
        match self.lanes.get_mut(&ready.row.account) {
            Some(lane) => lane.ready.push_back(ready),
            None => {
                let row = &ready.row;
                let why = format!(
                    "not sent: it was planned for account {}, which the config no longer has \
                     (accounts now: {})",
                    row.account
                        .as_deref()
                        .unwrap_or("(the unnamed one of provider.api_key)"),
                    self.ctx.settings.provider.accounts.names()
                );
                self.emit(Outcome::unsent(row.id, row.run_id, State::Failed, why));
            }
        }
    }

    /// While a breaker is open its rows are not claimed here, so rows whose deadline passes
    /// are ended in SQL, and their runs can close (a `run --once` ends at the deadline).
    fn expire_while_open(&mut self) {
        if self.lanes.values().all(|l| l.breaker.is_closed())
            || self.last_expiry.elapsed() < POLL * 5
        {
            return;
        }
        self.last_expiry = Instant::now();
        let _ = self.out.send(ToWriter::Expire {
            run: self.run_filter(),
        });
    }

    /// A -16 names this host's clock once, until an answer without one.
    fn warn_clock(&mut self, clock: Option<i64>) {
        match clock {
            Some(ts) if !self.clock_warned => {
                self.clock_warned = true;
                tracing::warn!(
                    local_clock = %Utc::now().to_rfc3339(),
                    signed_timestamp = ts,
                    "provider says the timestamp expired (-16): check that this host's clock is synchronised (NTP)"
                );
            }
            Some(_) => {}
            None => self.clock_warned = false,
        }
    }

    fn on_attempted(&mut self, a: Attempted) {
        let now = Instant::now();
        if let Some(lane) = self.lanes.get_mut(&a.account) {
            lane.in_flight = lane.in_flight.saturating_sub(1);
            if !a.sent {
                if a.was_probe {
                    lane.breaker.probe_abandoned(now);
                }
                return;
            }
            if lane_answered(lane, &a, now) {
                release(&self.out, std::mem::take(&mut lane.ready));
            }
        }
        self.warn_clock(a.clock);
        if let Some((run_id, why)) = a.stop {
            self.stop_account(run_id, a.account, &why);
        }
    }

    /// A -1 or -2: the account's (or this host's) every request would fail alike, so its rows
    /// of the run fail unsent; other accounts go on.
    fn stop_account(&mut self, run_id: i64, account: Option<String>, why: &str) {
        if !self.stopped.insert((run_id, account.clone())) {
            return;
        }
        match &account {
            None => tracing::error!("stopping the cycle: {why}"),
            Some(name) => tracing::error!(
                "stopping the cycle for account {name} (other accounts go on): {why}"
            ),
        }
        let reason = format!("not sent: {why}");
        if let Some(lane) = self.lanes.get_mut(&account) {
            for r in std::mem::take(&mut lane.ready) {
                if r.row.run_id == run_id {
                    let (id, run) = (r.row.id, r.row.run_id);
                    let outcome = Outcome::unsent(id, run, State::Failed, reason.clone());
                    let _ = self.out.send(ToWriter::Outcome(outcome, None));
                } else {
                    lane.ready.push_back(r);
                }
            }
        }
        let _ = self.out.send(ToWriter::FailRun {
            run_id,
            account,
            reason,
        });
    }
}

/// What an answer (or an outage) does to its account's breaker, with the line that says so.
/// True when it opened the breaker: the account's unsent rows then go back to the queue.
fn lane_answered(lane: &mut Lane, a: &Attempted, now: Instant) -> bool {
    let whose = for_account(&a.account);
    if let Some((cause, retry_after)) = &a.outage {
        if lane.breaker.outage(now, cause, *retry_after) {
            let wait = lane
                .breaker
                .next_probe()
                .map(|t| t.saturating_duration_since(now));
            tracing::warn!(
                "provider unreachable{whose} ({cause}): pausing sends; one probe request in {:.0}s, then on a doubling delay; pending pairs wait",
                wait.unwrap_or_default().as_secs_f64()
            );
            metrics::record_breaker(a.account.as_deref(), true);
            return true;
        }
        if a.was_probe {
            tracing::debug!("probe failed{whose} ({cause}); the next one waits longer");
        }
    } else if let Some((open_for, cause)) = lane.breaker.answered(now) {
        tracing::info!(
            "provider answers again{whose} after {:.0}s ({cause}): sending resumes",
            open_for.as_secs_f64()
        );
        metrics::record_breaker(a.account.as_deref(), false);
    }
    false
}

/// Hands claimed, unstarted rows back to the queue.
fn release(out: &mpsc::UnboundedSender<ToWriter>, rows: VecDeque<Ready>) {
    for r in rows {
        let _ = out.send(ToWriter::Outcome(
            Outcome::released(r.row.id, r.row.run_id),
            None,
        ));
    }
}

/// What a claim brought back.
enum Claim {
    /// Rows, and where the next claim resumes.
    Rows(Vec<Ready>, store::ClaimCursor),
    /// Nothing due now; the next row is due after this wait (or unknown).
    Idle(Option<Duration>),
}

/// Wakes the dispatcher on every `NOTIFY` (a tick was queued, by any instance). Reconnects
/// after a failure; meanwhile the dispatcher's poll finds new rows a little later.
async fn listen(pool: Db, wake: Arc<Notify>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = pool.listen(store::CHANNEL, || wake.notify_one()) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// What a request task needs besides its row.
struct Job {
    ctx: Context,
    /// The account the row was planned for, and its signing client.
    account: Option<String>,
    client: ProviderClient,
    out: mpsc::UnboundedSender<ToWriter>,
    held: SharedHeld,
    limiters: Arc<Limiters>,
    answered: Arc<Notify>,
    was_probe: bool,
}

impl Job {
    /// Reports the answer (or its absence) to the account's limiter, logs a change of the
    /// limit, and wakes the dispatcher: the place on the wire is free before the outcome is
    /// recorded.
    fn answered(&self, rtt: Duration, signal: Signal) {
        let whose = for_account(&self.account);
        let answer = self
            .limiters
            .answered(&self.account, Mono::now(), rtt, signal);
        if let Some(Answered {
            change,
            limit,
            baseline,
        }) = answer
        {
            metrics::record_concurrency(self.account.as_deref(), limit, baseline);
            let baseline_ms = baseline.map_or(0.0, |b| b.as_secs_f64() * 1000.0);
            match change {
                Some(Change::Moved { from, to }) => tracing::debug!(
                    from,
                    to,
                    baseline_ms,
                    "concurrency limit{whose} {from} -> {to} (provider RTT baseline {baseline_ms:.0} ms)"
                ),
                Some(Change::Settled { limit }) => tracing::info!(
                    limit,
                    baseline_ms,
                    "concurrency{whose} settled at {limit} requests on the wire (provider RTT baseline {baseline_ms:.0} ms, ceiling provider.max_in_flight = {})",
                    self.ctx.settings.provider.max_in_flight
                ),
                None => {}
            }
        }
        self.answered.notify_one();
    }
}

/// Sends one row once and turns the answer into its outcome: done, or due again after a
/// backoff, or failed when the deadline or `max_attempts` comes first.
async fn attempt(job: Job, row: Claimed, request: BackfillRequest) -> Attempted {
    let started = Mono::now();
    // Checked again here, where the request leaves: a process paused between the dispatcher's
    // check and this line must not send a row whose lease has lapsed meanwhile.
    let timeout = job.ctx.settings.provider.request_timeout;
    let lease_left = lock_held(&job.held)
        .valid_until(row.id)
        .is_some_and(|until| until >= started + timeout);
    if !lease_left {
        job.answered(Duration::ZERO, Signal::Nothing);
        record(&job.out, Outcome::released(row.id, row.run_id)).await;
        return Attempted {
            account: row.account,
            sent: false,
            outage: None,
            stop: None,
            clock: None,
            was_probe: job.was_probe,
        };
    }
    let ex = metrics::timed_request(job.client.submit_backfill(&request)).await;
    job.answered(Mono::now().since(started), ex.load_signal());
    tracing::debug!(
        app_id = request.app_id.as_str(),
        mcc = request.mcc.as_str(),
        attempt = row.attempts + 1,
        "attempt: {}",
        ex.error.as_deref().unwrap_or("succeeded")
    );
    let (outcome, mut result) = judge_answer(&job.ctx.settings.provider, &row, &ex, started);
    result.was_probe = job.was_probe;
    // The request's slot is held until its outcome is recorded: requests sent but not yet
    // recorded (those a kill -9 would send again) never exceed max_in_flight, and while the
    // database cannot record, no new request starts.
    record(&job.out, outcome).await;
    result
}

/// Hands an outcome to the writer and waits until it is recorded (or the writer is gone).
async fn record(out: &mpsc::UnboundedSender<ToWriter>, outcome: Outcome) {
    let (ack, recorded) = oneshot::channel();
    let _ = out.send(ToWriter::Outcome(outcome, Some(ack)));
    let _ = recorded.await;
}

/// What an answer means for the row (done, due again after a backoff, or failed because
/// `max_attempts` is reached; the deadline is judged by the database when the outcome is
/// written) and for the dispatcher (an outage, a stop).
fn judge_answer<T>(
    provider: &ProviderSettings,
    row: &Claimed,
    ex: &Exchange<T>,
    started: Mono,
) -> (Outcome, Attempted) {
    let attempts = u32::try_from(row.attempts).unwrap_or(0) + 1;
    let cause = ex.error.clone().unwrap_or_else(|| "no error".into());
    let disposition = match ex.class {
        Class::Success => Disposition::Succeeded,
        Class::Rejected(_) => Disposition::Failed(None),
        Class::Transient if provider.max_attempts.is_some_and(|max| attempts >= max) => {
            Disposition::Failed(Some(format!(
                "gave up after {}: {cause}",
                count(attempts, "attempt")
            )))
        }
        Class::Transient => Disposition::Retry(
            backoff(provider.retry_backoff, attempts).max(ex.retry_after.unwrap_or_default()),
        ),
    };
    let stop = match ex.class {
        Class::Rejected(rejection) if rejection.stops_the_cycle() => Some((
            row.run_id,
            format!(
                "provider status {} ({}){}: {}",
                ex.provider_status.as_deref().unwrap_or("?"),
                ex.reason.as_deref().unwrap_or("no reason given"),
                for_account(&row.account),
                rejection.advice_for(row.account.as_deref())
            ),
        )),
        _ => None,
    };
    let outcome = Outcome {
        id: row.id,
        run_id: row.run_id,
        disposition,
        attempt: Some(Attempt {
            started: Some(started),
            provider_status: ex.provider_status.clone(),
            provider_reason: ex.reason.clone(),
            http_status: ex.http_status.map(i32::from),
            error: ex.error.clone(),
        }),
    };
    let result = Attempted {
        account: row.account.clone(),
        sent: true,
        outage: ex.is_outage().then_some((cause, ex.retry_after)),
        stop,
        clock: (ex.provider_status.as_deref() == Some("-16")).then_some(ex.timestamp),
        was_probe: false,
    };
    (outcome, result)
}

/// `n` and the noun, agreeing in number: "1 attempt", "3 attempts".
pub fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The group commit: one write at a time, each taking every outcome that arrived meanwhile.
/// A write that fails (database down) is retried with backoff until it succeeds: the rows stay
/// leased to this instance meanwhile, and the lease guard keeps a late write harmless.
async fn write_outcomes(
    pool: Db,
    owner: String,
    mut rx: mpsc::UnboundedReceiver<ToWriter>,
    held: SharedHeld,
    closed: Arc<Notify>,
) {
    // Closing runs (a count over the run) happens beside the writes, not between them.
    let (close_tx, close_rx) = mpsc::unbounded_channel();
    let closer = tokio::spawn(close_runs(pool.clone(), close_rx, closed));
    while let Some(first) = rx.recv().await {
        // One write at a time, taking everything that completed meanwhile: no fixed window.
        let mut group = Group::default();
        let mut next = Some(first);
        while let Some(msg) = next.take().or_else(|| rx.try_recv().ok()) {
            group.add(msg);
            if group.outcomes.len() >= 10_000 {
                break;
            }
        }
        group.write(&pool, &owner, &held, &close_tx).await;
    }
    drop(close_tx);
    let _ = closer.await;
}

/// What one write takes.
#[derive(Default)]
struct Group {
    outcomes: Vec<Outcome>,
    acks: Vec<oneshot::Sender<()>>,
    fail_runs: Vec<(i64, Option<String>, String)>,
    expire: Vec<Option<i64>>,
}

impl Group {
    fn add(&mut self, msg: ToWriter) {
        match msg {
            ToWriter::Outcome(o, ack) => {
                self.outcomes.push(o);
                self.acks.extend(ack);
            }
            ToWriter::FailRun {
                run_id,
                account,
                reason,
            } => self.fail_runs.push((run_id, account, reason)),
            ToWriter::Expire { run } => self.expire.push(run),
        }
    }

    async fn write(
        mut self,
        pool: &Db,
        owner: &str,
        held: &SharedHeld,
        close: &mpsc::UnboundedSender<i64>,
    ) {
        // In id order, as every statement that locks several rows does: no deadlock.
        self.outcomes.sort_unstable_by_key(|o| o.id);
        let batch = &self.outcomes;
        lock_held(held).writing.extend(batch.iter().map(|o| o.id));
        let written = retry_db("recording outcomes", || store::record(pool, owner, batch)).await;
        {
            let mut h = lock_held(held);
            for o in batch {
                h.rows.remove(&o.id);
                h.writing.remove(&o.id);
            }
        }
        for ack in self.acks {
            let _ = ack.send(());
        }
        let lost = batch
            .iter()
            .filter(|o| o.attempt.is_some())
            .count()
            .saturating_sub(written.iter().filter(|w| by_attempt(batch, w.id)).count());
        if lost > 0 {
            tracing::warn!(
                lost,
                "answers not recorded: the lease on those rows had passed to another instance, which sends them again"
            );
        }
        account(batch, &written);
        let mut runs: Vec<i64> = written
            .iter()
            .filter(|w| w.state != State::Pending)
            .map(|w| w.run_id)
            .collect();
        for (run_id, account, reason) in self.fail_runs {
            let failed = retry_db("failing the rest of the run", || {
                store::fail_unsent(pool, (run_id, account.as_deref()), &reason)
            })
            .await;
            metrics::record_decided(account.as_deref(), "failed", failed);
            runs.push(run_id);
        }
        for run in self.expire {
            let ended = retry_db("ending overdue submissions", || store::expire(pool, run)).await;
            for (run_id, state, account) in &ended {
                metrics::record_decided(account.as_deref(), state.as_str(), 1);
                runs.push(*run_id);
            }
        }
        runs.sort_unstable();
        runs.dedup();
        for run_id in runs {
            let _ = close.send(run_id);
        }
    }
}

/// Closes each run handed over once nothing of it is pending; coalesces repeats, so that a
/// busy run is checked once per round, not once per write.
async fn close_runs(pool: Db, mut rx: mpsc::UnboundedReceiver<i64>, closed: Arc<Notify>) {
    let mut runs = Vec::new();
    while let Some(first) = rx.recv().await {
        runs.push(first);
        while let Ok(run) = rx.try_recv() {
            runs.push(run);
        }
        runs.sort_unstable();
        runs.dedup();
        for run_id in runs.drain(..) {
            if retry_db("closing the run", || close_run(&pool, run_id)).await {
                closed.notify_one();
            }
        }
    }
}

/// Whether the outcome for `id` in the batch recorded an attempt.
fn by_attempt(batch: &[Outcome], id: i64) -> bool {
    batch
        .binary_search_by_key(&id, |o| o.id)
        .is_ok_and(|i| batch[i].attempt.is_some())
}

/// Counts each final state in the metrics and logs each failure, once its write is done.
fn account(batch: &[Outcome], written: &[store::Written]) {
    let by_id: HashMap<i64, &Outcome> = batch.iter().map(|o| (o.id, o)).collect();
    for w in written.iter().filter(|w| w.state != State::Pending) {
        let Some(o) = by_id.get(&w.id) else {
            continue;
        };
        let attempt = o.attempt.as_ref();
        metrics::record_outcome(
            w.state.as_str(),
            attempt.and_then(|a| a.provider_status.as_deref()),
            w.account.as_deref(),
        );
        if w.state == State::Failed {
            let why = match &o.disposition {
                Disposition::Failed(Some(r)) | Disposition::Unsent(_, r) => Some(r.as_str()),
                _ => None,
            }
            .or(attempt.and_then(|a| a.error.as_deref()))
            .unwrap_or("deadline passed");
            // One line per pair would be 240,000 lines when a provider outage fails a tick:
            // the run's summary says it once, by cause.
            tracing::debug!(id = w.id, run_id = w.run_id, "submission failed: {why}");
        }
    }
}

/// Runs a database step until it succeeds, with backoff: the daemon waits an outage out.
async fn retry_db<T, F, Fut>(what: &str, mut step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut failures = 0;
    loop {
        match step().await {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(
                        "{what}: database reachable again after {failures} failed attempts"
                    );
                }
                return v;
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!("{what} failed, retrying with backoff: {e:#}");
                }
                // At most a few seconds: the step holds outcomes (and so in-flight slots) or a
                // run's close, which must follow the database's return closely.
                tokio::time::sleep(
                    backoff(Duration::from_millis(200), failures)
                        .clamp(Duration::from_millis(100), DB_RETRY_CAP),
                )
                .await;
            }
        }
    }
}

/// Extends the leases of held rows every few seconds until stopped. A row the renewal does
/// not return leaves this instance's hands at once; a renewal that fails changes nothing, and
/// the leases run out on the boot clock.
async fn renew_leases(
    pool: Db,
    owner: String,
    lease: Duration,
    held: SharedHeld,
    stop: CancellationToken,
) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let ids: Vec<i64> = lock_held(&held).rows.keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        let sent = Mono::now();
        match store::renew(&pool, &owner, &ids, lease).await {
            Ok(renewed) => {
                let lost = lock_held(&held).renewed(sent, &ids, &renewed);
                if lost > 0 {
                    tracing::warn!(
                        lost,
                        "lost the lease on {lost} rows: another instance took them after this one could not renew in time; this one does not send them"
                    );
                }
                if failing {
                    tracing::info!("leases renewed again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        "cannot renew leases: no new request starts until it can: {e:#}"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leased(id: i64, secs: u64) -> store::Leased {
        store::Leased {
            id,
            lasts: Duration::from_secs(secs),
        }
    }

    #[test]
    fn a_lease_lasts_from_when_its_statement_was_sent() {
        let t0 = Mono::now();
        let mut h = Held::default();
        h.lease(t0, &[leased(1, 25)]);
        assert_eq!(h.valid_until(1), Some(t0 + Duration::from_secs(25)));
        h.lease(t0 + Duration::from_secs(9), &[leased(2, 25)]);
        assert_eq!(h.valid_until(2), Some(t0 + Duration::from_secs(34)));
        assert_eq!(h.valid_until(3), None);
    }

    #[test]
    fn a_row_a_renewal_does_not_return_leaves_at_once_and_only_returned_rows_are_extended() {
        let t0 = Mono::now();
        let mut h = Held::default();
        h.lease(t0, &[leased(1, 25), leased(2, 25), leased(3, 25)]);
        h.writing.insert(3);
        let t1 = t0 + Duration::from_secs(3);
        // Row 2 was taken by another instance; row 3 is being recorded (locked, skipped).
        let lost = h.renewed(t1, &[1, 2, 3], &[leased(1, 25)]);
        assert_eq!(lost, 1, "only row 2 was lost");
        assert_eq!(h.valid_until(1), Some(t1 + Duration::from_secs(25)));
        assert_eq!(h.valid_until(2), None);
        assert_eq!(h.valid_until(3), None);
    }

    #[test]
    fn a_renewal_never_shortens_a_lease_nor_brings_back_a_row_recorded_meanwhile() {
        let t0 = Mono::now();
        let mut h = Held::default();
        h.lease(t0 + Duration::from_secs(10), &[leased(1, 25)]);
        let lost = h.renewed(t0, &[1, 2], &[leased(1, 5), leased(2, 25)]);
        assert_eq!(lost, 0);
        assert_eq!(h.valid_until(1), Some(t0 + Duration::from_secs(35)));
        assert_eq!(h.valid_until(2), None, "recorded while the renewal ran");
    }

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(1, "attempt"), "1 attempt");
        assert_eq!(count(0, "attempt"), "0 attempts");
        assert_eq!(count(3, "attempt"), "3 attempts");
    }
}
