//! Time, as the queue must read it. Two clocks and nothing else:
//!
//! - [`Mono`], this machine's boot clock (`CLOCK_BOOTTIME`): it only moves forward, and it keeps
//!   counting through a suspend, a VM freeze or a `SIGSTOP`, unlike `CLOCK_MONOTONIC`, which
//!   stops during a suspend. Leases and deadlines held in memory are instants on it, so that a
//!   process that was paused finds them passed when it resumes.
//! - [`Clock`], the database's wall clock: every decision about a row (due, deadline, lease,
//!   `finished_at`, "claimed late") is made by PostgreSQL's `now()`, in SQL. What the daemon
//!   must know ahead of the database (when to fire the cron timer) it reads from an estimate of
//!   that clock: the latest `SELECT now()` plus the boot clock since. Two hosts whose clocks
//!   differ by minutes therefore fire, claim and expire alike. The host's own wall clock is
//!   used only before the database first answers, and for the provider's `Timestamp` header,
//!   which the provider's page asks for.
//!
//! Tests inject a manual clock ([`Clock::manual`]) to step time as a suspend or an NTP step
//! would, without waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::handle::Db;
use anyhow::Context as _;
use chrono::{DateTime, Utc};

/// An instant on the boot clock: time since the machine booted, suspends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(Duration);

impl Mono {
    /// Now, on the boot clock.
    pub fn now() -> Self {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Self(Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_nsec).unwrap_or(0),
        ))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Mono) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// The time from `self` until `later`, zero if it has passed.
    pub fn until(self, later: Mono) -> Duration {
        later.0.saturating_sub(self.0)
    }
}

impl std::ops::Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d))
    }
}

impl std::ops::Sub<Duration> for Mono {
    type Output = Mono;
    fn sub(self, d: Duration) -> Mono {
        Mono(self.0.saturating_sub(d))
    }
}

/// Beyond this, the difference between this host's clock and the database's is worth a
/// warning: the provider checks the `Timestamp` header against its own clock.
const SKEW_WARNING: Duration = Duration::from_secs(5);

/// How one reading of the database's clock relates to the boot clock.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    db: DateTime<Utc>,
    at: Mono,
}

/// The database's wall clock as the daemon reads it between statements.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    Database(Arc<Mutex<DatabaseClock>>),
    Manual(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>),
}

#[derive(Debug, Default)]
struct DatabaseClock {
    anchor: Option<Anchor>,
    /// The host-minus-database difference last warned about, to warn again only on a change.
    warned_skew: Option<i64>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Source::Database(c) => f
                .debug_tuple("Clock::Database")
                .field(&lock(c).anchor)
                .finish(),
            Source::Manual(_) => f.write_str("Clock::Manual"),
        }
    }
}

fn lock(c: &Mutex<DatabaseClock>) -> std::sync::MutexGuard<'_, DatabaseClock> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl Clock {
    /// The database's clock, estimated from [`Clock::sync`] readings; the host's until the
    /// first one.
    pub fn database() -> Self {
        Self(Source::Database(Arc::default()))
    }

    /// A clock that reads whatever `now` says: for tests that step time.
    pub fn manual(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self(Source::Manual(Arc::new(now)))
    }

    /// The current time by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        match &self.0 {
            Source::Manual(f) => f(),
            Source::Database(c) => match lock(c).anchor {
                Some(a) => {
                    a.db + chrono::Duration::from_std(Mono::now().since(a.at)).unwrap_or_default()
                }
                None => Utc::now(),
            },
        }
    }

    /// Reads the database's `now()` and anchors the estimate to it. The reading is placed half
    /// way through the round trip, so its error is at most half of it. A manual clock ignores
    /// it. Warns once when this host's clock is more than a few seconds off the database's.
    pub async fn sync(&self, pool: &Db) -> anyhow::Result<()> {
        let Source::Database(c) = &self.0 else {
            return Ok(());
        };
        let sent = Mono::now();
        let db = sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
            .fetch_one(pool)
            .await
            .context("reading the database's clock")?;
        let received = Mono::now();
        let at = sent + received.since(sent) / 2;
        let host = Utc::now() - chrono::Duration::from_std(received.since(at)).unwrap_or_default();
        let mut clock = lock(c);
        clock.anchor = Some(Anchor { db, at });
        let skew = (host - db).num_seconds();
        let off = skew.unsigned_abs() > SKEW_WARNING.as_secs();
        if off && clock.warned_skew != Some(skew) {
            tracing::warn!(
                skew_seconds = skew,
                "this host's clock is {} s {} the database's: ticks, deadlines and leases follow the database's clock; the provider checks the Timestamp header against its own clock and answers -16 when it is too far off, so keep this host on NTP",
                skew.abs(),
                if skew > 0 { "ahead of" } else { "behind" }
            );
            clock.warned_skew = Some(skew);
        } else if !off {
            clock.warned_skew = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_clock_only_moves_forward() {
        let a = Mono::now();
        let b = Mono::now();
        assert!(b >= a);
        assert_eq!(a.since(b), Duration::ZERO);
        assert_eq!(
            (a + Duration::from_secs(2)).since(a),
            Duration::from_secs(2)
        );
        assert_eq!(a.until(a - Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn an_anchored_clock_reads_the_database_time_plus_the_boot_clock_since() {
        let clock = Clock::database();
        let Source::Database(c) = &clock.0 else {
            unreachable!()
        };
        let db = DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        lock(c).anchor = Some(Anchor {
            db,
            at: Mono::now() - Duration::from_secs(30),
        });
        let read = clock.now();
        assert!(read >= db + chrono::Duration::seconds(30), "{read}");
        assert!(read < db + chrono::Duration::seconds(31), "{read}");
    }

    #[test]
    fn a_manual_clock_reads_what_it_is_told() {
        let t = Utc::now() - chrono::Duration::days(3);
        assert_eq!(Clock::manual(move || t).now(), t);
    }
}
