//! What the sender's tasks share: the scope of a worker and its lease, the rows and messages
//! on their channels with the two ways to hand the writer an outcome, the drain limits, and
//! two helpers for log lines.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::ProviderSettings;
use crate::db::clock::Mono;
use crate::queue::store::{self, Claimed, Outcome};

/// Lease beyond the request timeout: a dead instance's rows are taken this long after its last
/// renewal plus one request timeout.
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(10);

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

/// A claimed row waiting for its request, with its deadline on the boot clock.
#[derive(Debug, Clone)]
pub(super) struct Ready {
    pub(super) row: Claimed,
    pub(super) deadline: Option<Mono>,
}

/// Messages to the writer.
pub(super) enum ToWriter {
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
pub(super) struct Attempted {
    /// The account it was sent for: whose breaker and in-flight count it bears on.
    pub(super) account: Option<String>,
    /// False when the request was not sent after all: its lease lapsed before it could start.
    pub(super) sent: bool,
    /// An outage failure (connection, timeout, 5xx) and its cause; any other result means
    /// the provider is reachable.
    pub(super) outage: Option<(String, Option<Duration>)>,
    /// A rejection about the account or host (-1, -2): stop the account's sending for the
    /// run, with this reason.
    pub(super) stop: Option<(i64, String)>,
    /// A -16: the signed timestamp and the local clock, for one warning.
    pub(super) clock: Option<i64>,
    pub(super) was_probe: bool,
}

/// `account` for a log line: " for account shop", nothing for the unnamed account.
pub(super) fn for_account(account: &Option<String>) -> String {
    account
        .as_deref()
        .map(|a| format!(" for account {a}"))
        .unwrap_or_default()
}

/// Hands claimed, unstarted rows back to the queue.
pub(super) fn release(out: &mpsc::UnboundedSender<ToWriter>, rows: VecDeque<Ready>) {
    for r in rows {
        let _ = out.send(ToWriter::Outcome(
            Outcome::released(r.row.id, r.row.run_id),
            None,
        ));
    }
}

/// What a claim brought back.
pub(super) enum Claim {
    /// Rows, and where the next claim resumes.
    Rows(Vec<Ready>, store::ClaimCursor),
    /// Nothing due now; the next row is due after this wait (or unknown).
    Idle(Option<Duration>),
}

/// Hands an outcome to the writer and waits until it is recorded (or the writer is gone).
pub(super) async fn record(out: &mpsc::UnboundedSender<ToWriter>, outcome: Outcome) {
    let (ack, recorded) = oneshot::channel();
    let _ = out.send(ToWriter::Outcome(outcome, Some(ack)));
    let _ = recorded.await;
}

/// `n` and the noun, agreeing in number: "1 attempt", "3 attempts".
pub fn count(n: u32, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// At shutdown, in-flight requests get at most this long: the unit's `TimeoutStopSec=` (30 s)
/// must cover it and the last write. Rows still in flight then pass to the next owner when
/// their lease expires.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// After the drain, how long the last outcomes may take to be recorded.
pub const RECORD_LIMIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count(1, "attempt"), "1 attempt");
        assert_eq!(count(0, "attempt"), "0 attempts");
        assert_eq!(count(3, "attempt"), "3 attempts");
    }
}
