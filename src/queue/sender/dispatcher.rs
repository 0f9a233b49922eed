//! The dispatcher: claims pages of due rows under a lease, one lane per account, and keeps at
//! most `max_in_flight` requests going, gated by each account's circuit breaker and
//! concurrency limit and by the lease each row has left.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::ProviderSettings;
use crate::db::clock::Mono;
use crate::domain::run::State;
use crate::provider::concurrency::Limiters;
use crate::provider::ProviderClient;
use crate::queue::context::Context;
use crate::queue::runs;
use crate::queue::store::{self, Claimed, Outcome};
use crate::retry::backoff::MAX_BACKOFF;
use crate::retry::breaker::{Breaker, Gate};
use crate::retry::step::{Failures, Pace};
use crate::views::metrics;

use super::close::close_run;
use super::held::{lock_held, SharedHeld};
use super::request::{attempt, Job};
use super::types::{
    for_account, lease, release, Attempted, Claim, Ready, Scope, ToWriter, DRAIN_LIMIT,
};

/// How often an idle dispatcher looks for due rows (retries that came due, rows whose owner
/// died), besides being woken by `NOTIFY` when a tick is queued.
pub(super) const POLL: Duration = Duration::from_secs(2);

/// A request starts only while its lease has the request timeout and this much more left: the
/// margin covers the time from the check to the request's first byte, and the outcome write.
pub(super) const START_MARGIN: Duration = Duration::from_secs(2);

/// Claims that fail are tried again from a second, doubling, never sooner than half a second.
const CLAIM_RETRY: Pace = Pace {
    base: Duration::from_secs(1),
    floor: Duration::from_millis(500),
    cap: MAX_BACKOFF,
};

/// One account's share of the dispatcher: its claimed rows waiting for a request, its circuit
/// breaker, its requests on the wire and the client that signs them. An account whose
/// provider answers fail, or that the provider throttles, holds back no other account.
pub(super) struct Lane {
    ready: VecDeque<Ready>,
    breaker: Breaker,
    in_flight: usize,
    client: ProviderClient,
}

pub(super) struct Dispatcher {
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
    idle_until: Option<Mono>,
    /// Claims failed in a row (the database is down): no claim until the backoff has passed.
    claims_failing: Failures,
    clock_warned: bool,
    /// (run, account) pairs failed for good after a -1/-2 seen by this instance.
    stopped: HashSet<(i64, Option<String>)>,
    /// While a breaker is open its rows are not claimed, so overdue rows are expired in SQL.
    last_expiry: Mono,
    /// How many requests each account may have on the wire (see `concurrency`), shared with
    /// the requests, which report their answers to it.
    limiters: Arc<Limiters>,
    /// Rung by a request as soon as its answer comes, before its outcome is recorded: the
    /// limit may admit another at once.
    answered: Arc<Notify>,
}

/// The accounts of `provider`, as rows store them, with each one's fixed limit and ceiling.
pub(super) fn accounts_of(provider: &ProviderSettings) -> Vec<Option<String>> {
    provider
        .accounts
        .iter()
        .map(|a| a.name_str().map(str::to_owned))
        .collect()
}

pub(super) fn limits_of(provider: &ProviderSettings) -> (Option<usize>, usize) {
    (provider.concurrency.fixed(), provider.max_in_flight)
}

impl Dispatcher {
    pub(super) fn new(
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
            claims_failing: Failures::new(
                "claim submissions",
                "retrying with backoff",
                CLAIM_RETRY,
            ),
            clock_warned: false,
            stopped: HashSet::new(),
            last_expiry: Mono::now(),
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

    pub(super) async fn run(
        &mut self,
        shutdown: CancellationToken,
        wake: Arc<Notify>,
        closed: Arc<Notify>,
    ) {
        let mut draining: Option<Mono> = None;
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
                    draining = Some(Mono::now() + DRAIN_LIMIT);
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
                () = tokio::time::sleep(Mono::now().until(timer)) => {
                    if draining.is_some_and(|d| Mono::now() >= d) {
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
                        .outage(Mono::now(), "a request task failed", None);
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

    fn next_timer(&self, draining: Option<Mono>) -> Mono {
        let now = Mono::now();
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
            at = at.min(hold);
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
        let probe = match lane.breaker.gate(Mono::now()) {
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
    fn wanted(&self, now: Mono) -> Option<(usize, store::Accounts)> {
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
        let now = Mono::now();
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
        let now = Mono::now();
        match result.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(claim) => {
                self.claims_failing.succeeded();
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
                let retry = self.claims_failing.failed(&format!("{e:#}"));
                self.idle_until = Some(now + retry.wait);
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
            || Mono::now().since(self.last_expiry) < POLL * 5
        {
            return;
        }
        self.last_expiry = Mono::now();
        let _ = self.out.send(ToWriter::Expire {
            run: self.run_filter(),
        });
    }

    /// A -16 names this host's clock once, until an answer without one. The host's wall clock
    /// is read here on purpose, and decides nothing: it is the clock the `Timestamp` header was
    /// signed with, which the provider found too far from its own.
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
        let now = Mono::now();
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
pub(super) fn lane_answered(lane: &mut Lane, a: &Attempted, now: Mono) -> bool {
    let whose = for_account(&a.account);
    if let Some((cause, retry_after)) = &a.outage {
        if lane.breaker.outage(now, cause, *retry_after) {
            let wait = lane.breaker.next_probe().map(|t| now.until(t));
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
