//! A database step that must happen, tried again until it does. The daemon waits a database
//! outage out rather than exiting, so a failed step is retried with a capped backoff; an
//! outage of many minutes must not write a line per try, so the first failure is logged at
//! WARN, the next ones at DEBUG, and the return once at INFO.

use std::time::Duration;

use super::backoff::{backoff, MAX_BACKOFF};

/// The longest wait between two tries of a database step the sender cannot do without.
pub const DB_RETRY_CAP: Duration = Duration::from_secs(5);

/// How long to wait after the n-th failure in a row: the backoff from `base`, kept between
/// `floor` and `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub base: Duration,
    pub floor: Duration,
    pub cap: Duration,
}

impl Pace {
    /// A step that holds outcomes (and so in-flight slots) or a run's close: at most a few
    /// seconds apart, to follow the database's return closely.
    pub const DB_STEP: Pace = Pace {
        base: Duration::from_millis(200),
        floor: Duration::from_millis(100),
        cap: DB_RETRY_CAP,
    };

    /// From a second, doubling up to `cap`.
    pub const fn from_a_second_up_to(cap: Duration) -> Pace {
        Pace {
            base: Duration::from_secs(1),
            floor: Duration::ZERO,
            cap,
        }
    }

    /// The wait after `failures` failures in a row.
    pub fn wait(&self, failures: u32) -> Duration {
        backoff(self.base, failures).clamp(self.floor, self.cap.max(self.floor))
    }
}

impl Default for Pace {
    fn default() -> Self {
        Self::from_a_second_up_to(MAX_BACKOFF)
    }
}

/// What a failure calls for: how long to wait, and whether it is news worth a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub wait: Duration,
    pub warn: bool,
}

/// One step's failures in a row, and what has been said about them.
#[derive(Debug, Clone)]
pub struct Failures {
    /// What the step does, as a verb phrase: "record outcomes".
    what: String,
    /// What happens meanwhile: "retrying with backoff".
    meanwhile: String,
    pace: Pace,
    count: u32,
    last_cause: Option<String>,
    /// Warn again when the cause changes, not only at the first failure.
    each_new_cause: bool,
}

impl Failures {
    pub fn new(what: impl Into<String>, meanwhile: impl Into<String>, pace: Pace) -> Self {
        Self {
            what: what.into(),
            meanwhile: meanwhile.into(),
            pace,
            count: 0,
            last_cause: None,
            each_new_cause: false,
        }
    }

    /// Warns at every failure whose cause differs from the last one's: for a step whose
    /// causes are few and each worth reading (start-up, a tick's claim).
    pub fn warn_each_new_cause(mut self) -> Self {
        self.each_new_cause = true;
        self
    }

    /// Failures in a row so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The cause of the last failure, while failing.
    pub fn last_cause(&self) -> Option<&str> {
        self.last_cause.as_deref()
    }

    /// Counts a failure, without logging: what it calls for.
    pub fn note(&mut self, cause: &str) -> Retry {
        self.count = self.count.saturating_add(1);
        let warn =
            self.count == 1 || (self.each_new_cause && self.last_cause.as_deref() != Some(cause));
        self.last_cause = Some(cause.to_owned());
        Retry {
            wait: self.pace.wait(self.count),
            warn,
        }
    }

    /// Counts a failure and logs it: at WARN if it is news, else at DEBUG.
    pub fn failed(&mut self, cause: &str) -> Retry {
        let retry = self.note(cause);
        if retry.warn {
            tracing::warn!(
                failures = self.count,
                "cannot {}: {}: {cause}",
                self.what,
                self.meanwhile
            );
        } else {
            tracing::debug!(failures = self.count, "cannot {} yet: {cause}", self.what);
        }
        retry
    }

    /// Counts a success: logs the return once if the step had failed, and starts over.
    /// Returns how many failures it ended.
    pub fn succeeded(&mut self) -> u32 {
        let ended = std::mem::take(&mut self.count);
        self.last_cause = None;
        if ended > 0 {
            tracing::info!(
                failures = ended,
                "can {} again, after {ended} failed attempt{}",
                self.what,
                if ended == 1 { "" } else { "s" }
            );
        }
        ended
    }
}

/// Runs `step` until it succeeds, waiting between tries as `failures` says: the daemon waits
/// an outage out.
pub async fn until_ok<T, F, Fut>(mut failures: Failures, mut step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    loop {
        match step().await {
            Ok(v) => {
                failures.succeeded();
                return v;
            }
            Err(e) => {
                let retry = failures.failed(&format!("{e:#}"));
                tokio::time::sleep(retry.wait).await;
            }
        }
    }
}

/// [`until_ok`] for a step the sender cannot do without ("record outcomes"), on
/// [`Pace::DB_STEP`].
pub async fn until_done<T, F, Fut>(what: &str, step: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    until_ok(
        Failures::new(what, "retrying with backoff", Pace::DB_STEP),
        step,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_failure_in_a_row_is_news_and_a_success_starts_over() {
        let mut f = Failures::new("record outcomes", "retrying", Pace::DB_STEP);
        assert!(f.note("connection refused").warn);
        assert!(!f.note("connection refused").warn);
        assert!(
            !f.note("pool timed out").warn,
            "a new cause is not news here"
        );
        assert_eq!(f.count(), 3);
        assert_eq!(f.succeeded(), 3);
        assert_eq!((f.count(), f.last_cause()), (0, None));
        assert!(f.note("connection refused").warn, "a new outage is news");
    }

    #[test]
    fn with_each_new_cause_a_changed_cause_is_news_again() {
        let mut f =
            Failures::new("claim the tick", "retrying", Pace::DB_STEP).warn_each_new_cause();
        assert!(f.note("a").warn);
        assert!(!f.note("a").warn);
        assert!(f.note("b").warn);
        assert_eq!(f.last_cause(), Some("b"));
    }

    #[test]
    fn waits_grow_within_floor_and_cap() {
        let mut f = Failures::new("x", "y", Pace::DB_STEP);
        for _ in 0..40 {
            let wait = f.note("down").wait;
            assert!(
                wait >= Duration::from_millis(100) && wait <= DB_RETRY_CAP,
                "{wait:?}"
            );
        }
        let pace = Pace::from_a_second_up_to(Duration::from_secs(30));
        assert!(pace.wait(1) <= Duration::from_secs(1));
        assert!(pace.wait(30) >= Duration::from_secs(15) && pace.wait(30) <= pace.cap);
    }

    #[tokio::test]
    async fn until_ok_retries_until_the_step_succeeds() {
        let quick = Pace {
            base: Duration::from_millis(1),
            floor: Duration::ZERO,
            cap: Duration::from_millis(1),
        };
        let mut tries = 0;
        let got = until_ok(Failures::new("x", "y", quick), || {
            tries += 1;
            let n = tries;
            async move {
                if n < 4 {
                    anyhow::bail!("down")
                }
                Ok(n)
            }
        })
        .await;
        assert_eq!(got, 4);
    }
}
