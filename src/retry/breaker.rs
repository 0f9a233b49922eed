//! The circuit breaker on the provider, one per instance. After a run of outage failures
//! (connection errors, timeouts, HTTP 5xx) across pairs, or a `Retry-After` from the provider,
//! sending stops; one probe request goes out on a doubling delay, and the first answer closes
//! the breaker. Without it, an unreachable provider gets every pending row's retries, and the
//! log gets a line for each. Pure: time comes in as an argument, on the boot clock ([`Mono`]),
//! so that a probe's delay counts through a suspend like the leases it sits beside.

use std::time::Duration;

use crate::db::clock::Mono;

/// Outage failures in a row, across pairs, that open the breaker.
pub const THRESHOLD: u32 = 5;
/// The longest wait between two probes.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
enum Phase {
    Closed { failures: u32 },
    Open { until: Mono, delay: Duration },
    Probing { delay: Duration },
}

/// What the dispatcher may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: send freely.
    Send,
    /// Open and the delay has passed: send exactly one request, as a probe.
    Probe,
    /// Open: send nothing until then.
    WaitUntil(Mono),
    /// A probe is in flight: send nothing until it answers.
    AwaitProbe,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    phase: Phase,
    first_delay: Duration,
    /// When it opened, and why, for the log line that says it closed again.
    opened: Option<(Mono, String)>,
}

impl Breaker {
    /// `first_delay`: the wait before the first probe; it doubles after each failed probe.
    pub fn new(first_delay: Duration) -> Self {
        Self {
            phase: Phase::Closed { failures: 0 },
            first_delay: first_delay.clamp(Duration::from_millis(100), MAX_DELAY),
            opened: None,
        }
    }

    pub fn gate(&self, now: Mono) -> Gate {
        match self.phase {
            Phase::Closed { .. } => Gate::Send,
            Phase::Open { until, .. } if now < until => Gate::WaitUntil(until),
            Phase::Open { .. } => Gate::Probe,
            Phase::Probing { .. } => Gate::AwaitProbe,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed { .. })
    }

    /// A probe request was started.
    pub fn probe_started(&mut self) {
        if let Phase::Open { delay, .. } = self.phase {
            self.phase = Phase::Probing { delay };
        }
    }

    /// A probe was started but never sent (its lease lapsed first): another may go at once.
    pub fn probe_abandoned(&mut self, now: Mono) {
        if let Phase::Probing { delay } = self.phase {
            self.phase = Phase::Open { until: now, delay };
        }
    }

    /// The provider answered (success or a rejection: either way it is reachable). Returns, when
    /// this closes an open breaker, how long it was open and why it opened.
    pub fn answered(&mut self, now: Mono) -> Option<(Duration, String)> {
        self.phase = Phase::Closed { failures: 0 };
        self.opened
            .take()
            .map(|(since, cause)| (now.since(since), cause))
    }

    /// An outage failure. `retry_after` is the provider's own `Retry-After`, which opens the
    /// breaker at once for that long. Returns true when this opened the breaker.
    pub fn outage(&mut self, now: Mono, cause: &str, retry_after: Option<Duration>) -> bool {
        let (delay, opens) = match self.phase {
            Phase::Closed { failures } => {
                let failures = failures + 1;
                if failures < THRESHOLD && retry_after.is_none() {
                    self.phase = Phase::Closed { failures };
                    return false;
                }
                (self.first_delay, true)
            }
            // Stragglers that were in flight when it opened change nothing.
            Phase::Open { .. } => return false,
            Phase::Probing { delay } => ((delay * 2).min(MAX_DELAY), false),
        };
        let wait = retry_after.map_or(delay, |r| r.max(delay));
        self.phase = Phase::Open {
            until: now + wait,
            delay,
        };
        if opens {
            self.opened = Some((now, cause.to_owned()));
        }
        opens
    }

    /// When the next probe may go, while open.
    pub fn next_probe(&self) -> Option<Mono> {
        match self.phase {
            Phase::Open { until, .. } => Some(until),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_opens_after_a_run_of_outages_and_probes_on_a_doubling_delay() {
        let t0 = Mono::now();
        let mut b = Breaker::new(Duration::from_secs(1));
        for _ in 1..THRESHOLD {
            assert!(!b.outage(t0, "refused", None));
            assert_eq!(b.gate(t0), Gate::Send);
        }
        assert!(b.outage(t0, "refused", None));
        assert_eq!(b.gate(t0), Gate::WaitUntil(t0 + Duration::from_secs(1)));
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.gate(t1), Gate::Probe);
        b.probe_started();
        assert_eq!(b.gate(t1), Gate::AwaitProbe);
        assert!(
            !b.outage(t1, "refused", None),
            "a failed probe does not open it again"
        );
        assert_eq!(b.gate(t1), Gate::WaitUntil(t1 + Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        b.probe_started();
        b.outage(t2, "refused", None);
        assert_eq!(b.gate(t2), Gate::WaitUntil(t2 + Duration::from_secs(4)));
        let (open_for, cause) = b.answered(t2 + Duration::from_secs(4)).unwrap();
        assert_eq!(
            (open_for, cause.as_str()),
            (Duration::from_secs(7), "refused")
        );
        assert_eq!(b.gate(t2), Gate::Send);
    }

    #[test]
    fn an_answer_resets_the_count_and_the_delay_is_capped() {
        let t0 = Mono::now();
        let mut b = Breaker::new(Duration::from_secs(40));
        for _ in 0..THRESHOLD - 1 {
            b.outage(t0, "timeout", None);
        }
        assert!(b.answered(t0).is_none(), "it was never open");
        assert!(!b.outage(t0, "timeout", None), "the run starts again");
        for _ in 0..THRESHOLD {
            b.outage(t0, "timeout", None);
        }
        b.probe_started();
        b.outage(t0, "timeout", None);
        assert_eq!(b.gate(t0), Gate::WaitUntil(t0 + MAX_DELAY));
    }

    #[test]
    fn retry_after_opens_it_at_once_for_that_long() {
        let t0 = Mono::now();
        let mut b = Breaker::new(Duration::from_secs(1));
        assert!(b.outage(t0, "HTTP 503", Some(Duration::from_secs(30))));
        assert_eq!(b.gate(t0), Gate::WaitUntil(t0 + Duration::from_secs(30)));
        assert!(!b.outage(t0, "HTTP 503", None), "stragglers change nothing");
        assert_eq!(b.gate(t0), Gate::WaitUntil(t0 + Duration::from_secs(30)));
    }
}
