//! How many requests an instance keeps on the wire to the provider: adaptive by default, so
//! that nobody has to guess it. Pure: every call takes the time on the boot clock, so the rules
//! are tested against a simulated provider without waiting.
//!
//! The rule is additive increase, multiplicative decrease on round-trip times, in the manner of
//! Vector's Adaptive Request Concurrency and TCP's congestion control:
//!
//! - the **baseline** is the lowest mean RTT of a window (about one round trip) in the last
//!   [`BASELINE_SPAN`]: what the provider takes when nothing queues, as Netflix's Vegas limit
//!   reads it. An answer is *high* when its RTT is more than a quarter above the baseline;
//! - while the whole limit is in use, each answer that is not high raises the limit: by one
//!   during slow start (so it doubles every round trip), by one over the limit after (one per
//!   round trip, as TCP's congestion avoidance: equal steps for every instance, which is what
//!   lets several share a provider fairly);
//! - slow start ends at the first high answer, the limit falling to what the provider
//!   delivered in the last round trip (the doubling outruns the provider by the round trip its
//!   queue takes to show);
//! - high answers lower it at the end of their window in proportion to their share (all high:
//!   by [`DECREASE`]), as DCTCP cuts its window; back pressure (a 429 or 503, a `Retry-After`,
//!   a timeout) lowers it by [`DECREASE`] at once (to half during slow start); at most one
//!   decrease per window, so that one burst of 429s is one decrease; back pressure also caps it at the requests on
//!   the wire then (what the provider is giving this instance) and holds new requests for one
//!   window or until one of ours is answered, so that a 429 answered in a millisecond is not
//!   followed by another.
//!
//! Against a provider that queues what it cannot serve, RTT grows with the excess, and the limit
//! settles a little above its capacity (throughput at its best); against one that answers the
//! excess 429, just under it, with few 429s. Instances sharing a provider each do this alone
//! and together settle near its capacity, as AIMD flows share a link. `max_in_flight` stays the
//! hard ceiling.

use std::collections::VecDeque;
use std::time::Duration;

use crate::db::clock::Mono;

/// The factor of a decrease after slow start.
pub const DECREASE: f64 = 0.9;
/// How long a low window mean counts as the baseline.
pub const BASELINE_SPAN: Duration = Duration::from_secs(30);
/// The share of the baseline a rise may be before it counts.
const TOLERANCE: f64 = 0.25;
/// The shortest window: a provider answering in microseconds (a stand-in on loopback) would
/// otherwise change the limit on every answer.
const MIN_WINDOW: Duration = Duration::from_millis(50);
/// The limit a fresh instance starts from: the old fixed default, so that a small provider is
/// not hit hard before the first round trips are measured.
pub const INITIAL: usize = 8;
/// Windows in a row within [`SETTLE_BAND`] of each other before a changed limit counts as
/// settled (one INFO line).
const SETTLE_WINDOWS: u32 = 20;
const SETTLE_BAND: f64 = 0.15;

/// How an answer bears on the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The provider processed the request (success or a rejection): its RTT measures it.
    Answered,
    /// It asked us to slow down, or was too slow: 429, 503, `Retry-After`, a timeout.
    BackPressure,
    /// No answer that says anything about load (connection refused): the breaker's business.
    Nothing,
}

/// A change of the limit worth a log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// It moved (DEBUG).
    Moved { from: usize, to: usize },
    /// It stayed within a band for a while after moving (INFO, once per change).
    Settled { limit: usize },
}

#[derive(Debug, Clone)]
struct Window {
    ends: Mono,
    sum: f64,
    samples: u32,
    /// Of those, answers that came back high.
    high: u32,
    /// The whole limit was in use at some point: evidence that more could be used.
    reached: bool,
    /// The window before reached it: answers early in this one still count as limit-bound.
    before_reached: bool,
    decreased: bool,
    /// False for the window after a change: its answers are of requests started before it,
    /// and would judge the old limit again.
    judged: bool,
}

/// One instance's limit on requests to the provider.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// `None`: adaptive; else fixed at this.
    fixed: Option<usize>,
    ceiling: usize,
    /// Fractional, so that steps of one over the limit add up, and a decrease of a small limit
    /// is as proportional as of a large one.
    limit: f64,
    slow_start: bool,
    on_wire: usize,
    /// Answers in the last closed window: with windows a baseline long, what the provider
    /// delivers in one round trip, so the concurrency it can use (Little's law).
    delivered: usize,
    /// After back pressure with nothing of ours answered since: no new request before then (a
    /// provider full of other clients' requests answers 429 in a millisecond, again and again).
    hold_until: Option<Mono>,
    window: Window,
    /// (when, window mean in seconds) of the last [`BASELINE_SPAN`].
    means: VecDeque<(Mono, f64)>,
    settle: Settle,
}

#[derive(Debug, Clone)]
struct Settle {
    /// The limit last reported settled.
    reported: Option<usize>,
    /// The start of the current calm stretch, and its length in windows.
    anchor: usize,
    calm: u32,
}

impl Limiter {
    /// `fixed`: a number from the config, or `None` for adaptive; `ceiling`: `max_in_flight`.
    pub fn new(fixed: Option<usize>, ceiling: usize, now: Mono) -> Self {
        let limit = fixed.unwrap_or(INITIAL).clamp(1, ceiling.max(1));
        Self {
            fixed,
            ceiling: ceiling.max(1),
            limit: limit as f64,
            slow_start: true,
            on_wire: 0,
            delivered: 0,
            hold_until: None,
            window: Window {
                ends: now + MIN_WINDOW,
                sum: 0.0,
                samples: 0,
                high: 0,
                reached: false,
                before_reached: false,
                decreased: false,
                judged: true,
            },
            means: VecDeque::new(),
            settle: Settle {
                reported: None,
                anchor: limit,
                calm: 0,
            },
        }
    }

    /// Requests that may be on the wire now.
    pub fn limit(&self) -> usize {
        (self.limit as usize).max(1)
    }

    /// Requests on the wire now.
    pub fn on_wire(&self) -> usize {
        self.on_wire
    }

    /// Until when new requests are held after back pressure, if they are.
    pub fn held_until(&self) -> Option<Mono> {
        self.hold_until
    }

    /// Whether another request may start now.
    pub fn admits(&self, now: Mono) -> bool {
        self.on_wire < self.limit() && self.hold_until.is_none_or(|t| now >= t)
    }

    /// The lowest window mean of the last [`BASELINE_SPAN`], once there is one.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline_secs().map(Duration::from_secs_f64)
    }

    fn baseline_secs(&self) -> Option<f64> {
        self.means.iter().map(|(_, m)| *m).reduce(f64::min)
    }

    /// A request left.
    pub fn started(&mut self) {
        self.on_wire += 1;
        if self.on_wire >= self.limit() {
            self.window.reached = true;
        }
    }

    /// A request came back after `rtt`. Returns a change worth a log line, if any.
    pub fn answered(&mut self, now: Mono, rtt: Duration, signal: Signal) -> Option<Change> {
        self.on_wire = self.on_wire.saturating_sub(1);
        let before = self.limit();
        match signal {
            Signal::BackPressure => self.back_off(now),
            Signal::Answered => {
                self.hold_until = None;
                self.window.sum += rtt.as_secs_f64();
                self.window.samples += 1;
                self.step(rtt);
            }
            Signal::Nothing => {}
        }
        let mut change = None;
        if now >= self.window.ends {
            change = self.close_window(now);
        }
        if self.limit() != before {
            return Some(Change::Moved {
                from: before,
                to: self.limit(),
            });
        }
        change
    }

    /// The provider is full: what this instance has on the wire now is at most its share, so
    /// the limit falls to that at once (a 429 answered in a millisecond frees its place at
    /// once, and would otherwise be followed by another), besides the decrease of the window.
    fn back_off(&mut self, now: Mono) {
        self.hold_until = Some(now + self.window_length());
        if self.fixed.is_some() {
            return;
        }
        self.decrease();
        self.limit = self.limit.min(self.on_wire.max(1) as f64);
    }

    /// The RTT beyond which an answer is high, once there is a baseline. No term from this
    /// instance's own variance: instances sharing a provider must judge one RTT alike, or the
    /// larger (whose window means vary more) keeps growing while the smaller backs off.
    fn high(&self) -> Option<f64> {
        self.baseline_secs().map(|b| b * (1.0 + TOLERANCE))
    }

    /// One answer's step: up while the whole limit is in use and answers are not high; the end
    /// of slow start at the first high one.
    fn step(&mut self, rtt: Duration) {
        if self.fixed.is_some() {
            return;
        }
        let high = self.high().is_some_and(|h| rtt.as_secs_f64() > h);
        self.window.high += u32::from(high);
        if high && self.slow_start {
            self.slow_start = false;
            self.window.decreased = true;
            self.limit = self.limit.min(self.delivered.max(1) as f64);
        } else if !high
            && (self.window.reached || self.window.before_reached)
            && !self.window.decreased
        {
            let step = if self.slow_start {
                1.0
            } else {
                1.0 / self.limit
            };
            self.limit = (self.limit + step).min(self.ceiling as f64);
        }
    }

    /// About one round trip when nothing queues.
    fn window_length(&self) -> Duration {
        self.baseline().unwrap_or(MIN_WINDOW).max(MIN_WINDOW)
    }

    fn decrease(&mut self) {
        if self.fixed.is_some() || self.window.decreased {
            return;
        }
        self.window.decreased = true;
        let factor = if self.slow_start { 0.5 } else { DECREASE };
        self.limit = (self.limit * factor).max(1.0);
        self.slow_start = false;
    }

    /// Ends the window: judges its mean RTT, and opens the next, about one baseline long.
    fn close_window(&mut self, now: Mono) -> Option<Change> {
        let window = self.window.clone();
        let mean = (window.samples > 0).then(|| window.sum / f64::from(window.samples));
        self.delivered = window.samples as usize;
        if let Some(mean) = mean {
            self.record(now, mean);
        }
        if window.judged && window.high > 0 && !window.decreased && self.fixed.is_none() {
            // In proportion to the share of high answers, as DCTCP cuts its window: instances
            // of different sizes see the same share, and so back off alike.
            let share = f64::from(window.high) / f64::from(window.samples);
            self.limit = (self.limit * (1.0 - share * (1.0 - DECREASE))).max(1.0);
            self.window.decreased = true;
        }
        self.window = Window {
            ends: now + self.window_length(),
            sum: 0.0,
            samples: 0,
            high: 0,
            reached: self.on_wire >= self.limit(),
            before_reached: window.reached,
            decreased: false,
            judged: !self.window.decreased,
        };
        self.settled()
    }

    fn record(&mut self, now: Mono, mean: f64) {
        while self
            .means
            .front()
            .is_some_and(|(at, _)| now.since(*at) > BASELINE_SPAN)
        {
            self.means.pop_front();
        }
        self.means.push_back((now, mean));
    }

    /// One report when the limit has stayed within a band for a while after it moved.
    fn settled(&mut self) -> Option<Change> {
        let limit = self.limit();
        let s = &mut self.settle;
        let band = (s.anchor as f64 * SETTLE_BAND).max(1.0);
        if (limit as f64 - s.anchor as f64).abs() > band {
            s.anchor = limit;
            s.calm = 0;
            return None;
        }
        s.calm += 1;
        let moved = s
            .reported
            .is_none_or(|r| (r as f64 - limit as f64).abs() > band);
        if s.calm >= SETTLE_WINDOWS && moved && self.fixed.is_none() {
            s.reported = Some(limit);
            return Some(Change::Settled { limit });
        }
        None
    }
}

/// The limiters of every account of an instance, one each: an account the provider throttles
/// (it may cap each account on its own) must not hold back another's requests. Shared by the
/// dispatcher, which asks whether a request may start, and the requests, which report their
/// answers; keyed by account name, `None` for the unnamed account.
#[derive(Debug, Default)]
pub struct Limiters(std::sync::Mutex<std::collections::BTreeMap<Option<String>, Limiter>>);

/// What one answer did to its account's limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answered {
    pub change: Option<Change>,
    pub limit: usize,
    pub baseline: Option<Duration>,
}

impl Limiters {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<Option<String>, Limiter>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the set match `accounts`: a new account starts with a fresh limiter, a gone one's
    /// is dropped, and with `anew` (the concurrency settings changed) every limit starts over.
    pub fn keep(
        &self,
        accounts: &[Option<String>],
        (fixed, ceiling): (Option<usize>, usize),
        anew: bool,
        now: Mono,
    ) {
        let mut all = self.lock();
        all.retain(|k, _| !anew && accounts.contains(k));
        for account in accounts {
            all.entry(account.clone())
                .or_insert_with(|| Limiter::new(fixed, ceiling, now));
        }
    }

    /// Whether a request of `account` may start now (an account without a limiter: no).
    pub fn admits(&self, account: &Option<String>, now: Mono) -> bool {
        self.lock().get(account).is_some_and(|l| l.admits(now))
    }

    pub fn started(&self, account: &Option<String>) {
        if let Some(l) = self.lock().get_mut(account) {
            l.started();
        }
    }

    /// A request of `account` came back after `rtt`.
    pub fn answered(
        &self,
        account: &Option<String>,
        now: Mono,
        rtt: Duration,
        signal: Signal,
    ) -> Option<Answered> {
        let mut all = self.lock();
        let l = all.get_mut(account)?;
        let change = l.answered(now, rtt, signal);
        Some(Answered {
            change,
            limit: l.limit(),
            baseline: l.baseline(),
        })
    }

    /// The earliest time a held account admits requests again.
    pub fn held_until(&self) -> Option<Mono> {
        self.lock().values().filter_map(Limiter::held_until).min()
    }

    /// The limits of every account together: what this instance may have on the wire.
    pub fn total(&self) -> usize {
        self.lock().values().map(Limiter::limit).sum()
    }

    /// Each account's limit and baseline, for the metrics.
    pub fn each(&self) -> Vec<(Option<String>, usize, Option<Duration>)> {
        self.lock()
            .iter()
            .map(|(k, l)| (k.clone(), l.limit(), l.baseline()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider that serves `capacity` requests at once in `latency` each and queues or
    /// throttles (answers 429 at once) the excess, driven by one or more limiters for
    /// `duration` of simulated time with an endless queue. Returns (requests served, 429s,
    /// the limits at the end).
    fn simulate(
        limiters: &mut [Limiter],
        capacity: usize,
        latency: Duration,
        throttle: bool,
        duration: Duration,
    ) -> (usize, usize, Vec<usize>) {
        let start = Mono::now();
        let step = Duration::from_millis(1);
        // Requests on the provider: (instance, started, done at, served?).
        let mut active: Vec<(usize, Mono, Mono)> = Vec::new();
        let mut queue: VecDeque<(usize, Mono)> = VecDeque::new();
        let (mut served, mut throttled) = (0, 0);
        // A provider's latency varies (±10% here, from a fixed seed): without it, every
        // request of the simulation moves in lockstep, and one instance's requests always land
        // at the end of the queue.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut jittered = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            latency.mul_f64(0.9 + 0.2 * (seed % 1000) as f64 / 1000.0)
        };
        let mut t = start;
        while t.since(start) < duration {
            // Answers that are due.
            let (done, rest): (Vec<_>, Vec<_>) =
                active.into_iter().partition(|(_, _, at)| *at <= t);
            active = rest;
            for (i, began, _) in done {
                served += 1;
                limiters[i].answered(t, t.since(began), Signal::Answered);
            }
            // Queued requests take free places.
            while active.len() < capacity {
                let Some((i, began)) = queue.pop_front() else {
                    break;
                };
                active.push((i, began, t + jittered()));
            }
            // Each instance starts what its limit admits, in an order that changes: arrivals
            // from several clients interleave.
            let n = limiters.len();
            let first = (t.since(start).as_millis() as usize).wrapping_mul(7919) % n;
            for i in (0..n).map(|k| (first + k) % n) {
                while limiters[i].admits(t) {
                    limiters[i].started();
                    if active.len() < capacity {
                        active.push((i, t, t + jittered()));
                    } else if throttle {
                        throttled += 1;
                        limiters[i].answered(t, Duration::from_micros(500), Signal::BackPressure);
                        break;
                    } else {
                        queue.push_back((i, t));
                    }
                }
            }
            t = t + step;
        }
        let limits: Vec<usize> = limiters.iter().map(Limiter::limit).collect();
        eprintln!(
            "capacity {capacity}, throttle {throttle}: {served} served, {throttled} 429s, limits {limits:?}"
        );
        (served, throttled, limits)
    }

    fn adaptive(ceiling: usize) -> Limiter {
        Limiter::new(None, ceiling, Mono::now())
    }

    const L: Duration = Duration::from_millis(100);
    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn against_a_queueing_provider_it_reaches_its_throughput_within_a_second_or_two() {
        let mut one = [adaptive(256)];
        let (served, _, limits) = simulate(&mut one, 32, L, false, TEN_S);
        // The best possible: 32 every 100 ms, 3,200 in 10 s.
        assert!(served >= 2_900, "{served} served, limit {limits:?}");
        assert!((32..=48).contains(&limits[0]), "{limits:?}");
    }

    #[test]
    fn against_a_throttling_provider_it_settles_under_its_capacity_with_few_429s() {
        let mut one = [adaptive(256)];
        let (served, throttled, limits) = simulate(&mut one, 32, L, true, TEN_S);
        assert!(served >= 2_700, "{served} served, limit {limits:?}");
        assert!(
            throttled * 10 <= served,
            "{throttled} 429s for {served} served"
        );
        assert!((24..=33).contains(&limits[0]), "{limits:?}");
    }

    #[test]
    fn two_instances_share_a_provider_near_its_capacity() {
        for throttle in [false, true] {
            let mut two = [adaptive(256), adaptive(256)];
            let (served, throttled, limits) = simulate(&mut two, 32, L, throttle, TEN_S);
            assert!(
                served >= 2_600,
                "throttle {throttle}: {served} served, {limits:?}"
            );
            assert!(
                throttled * 10 <= served,
                "{throttled} 429s for {served} served"
            );
            let total: usize = limits.iter().sum();
            assert!(
                (20..=56).contains(&total),
                "throttle {throttle}: {limits:?}"
            );
        }
    }

    #[test]
    fn the_ceiling_holds_and_a_fixed_limit_never_moves() {
        let mut capped = [adaptive(16)];
        let (_, _, limits) = simulate(&mut capped, 64, L, false, TEN_S);
        assert_eq!(limits, [16]);
        let mut fixed = [Limiter::new(Some(5), 64, Mono::now())];
        let (_, throttled, limits) = simulate(&mut fixed, 3, L, true, TEN_S);
        assert_eq!(limits, [5]);
        assert!(throttled > 0);
    }

    #[test]
    fn a_burst_of_429s_is_one_decrease_and_holds_new_requests_for_a_while() {
        let now = Mono::now();
        let mut l = adaptive(256);
        assert_eq!(l.limit(), INITIAL);
        for _ in 0..8 {
            l.started();
        }
        for _ in 0..3 {
            l.answered(now, Duration::from_millis(1), Signal::BackPressure);
        }
        assert_eq!(
            l.limit(),
            INITIAL / 2,
            "one decrease, to half in slow start"
        );
        l.answered(now, Duration::from_millis(1), Signal::BackPressure);
        assert_eq!(l.limit(), 4, "at most what is still on the wire");
        assert_eq!(l.hold_until, Some(now + MIN_WINDOW), "held for one window");
        assert!(!l.admits(now));
        l.answered(now, L, Signal::Answered);
        assert!(l.admits(now), "or until one of ours is answered");
    }

    #[test]
    fn each_account_has_its_own_limit_and_back_pressure_holds_only_its_own() {
        let t0 = Mono::now();
        let limiters = Limiters::default();
        let (shop, bank) = (Some("shop".to_owned()), Some("bank".to_owned()));
        limiters.keep(&[shop.clone(), bank.clone()], (None, 64), false, t0);
        for _ in 0..INITIAL {
            assert!(limiters.admits(&bank, t0));
            limiters.started(&bank);
        }
        assert!(!limiters.admits(&bank, t0), "bank's limit is full");
        assert!(limiters.admits(&shop, t0), "shop's is its own");
        let answer = limiters
            .answered(&bank, t0, Duration::from_millis(5), Signal::BackPressure)
            .unwrap();
        assert!(answer.limit < INITIAL, "{answer:?}");
        assert!(
            !limiters.admits(&bank, t0),
            "bank is held after back pressure"
        );
        assert!(limiters.admits(&shop, t0));
        assert_eq!(limiters.total(), answer.limit + INITIAL);
        limiters.keep(std::slice::from_ref(&shop), (None, 64), false, t0);
        assert!(!limiters.admits(&bank, t0), "a gone account sends nothing");
        assert_eq!(limiters.each().len(), 1);
    }

    #[test]
    fn a_steady_limit_is_reported_settled_once() {
        let mut one = [adaptive(20)];
        let mut settled = 0;
        let start = Mono::now();
        let mut t = start;
        for _ in 0..2_000 {
            while one[0].admits(t) {
                one[0].started();
            }
            t = t + Duration::from_millis(10);
            if let Some(Change::Settled { limit }) = one[0].answered(t, L, Signal::Answered) {
                settled += 1;
                assert_eq!(limit, 20);
            }
        }
        assert_eq!(settled, 1);
    }
}
