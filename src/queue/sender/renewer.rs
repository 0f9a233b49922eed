//! The renewer: extends the lease of every row still held, so that only a dead or cut-off
//! instance's rows pass to another instance.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::clock::Mono;
use crate::db::Db;
use crate::queue::store;
use crate::retry::step::{Failures, Pace};

use super::held::{lock_held, SharedHeld};

/// How often held leases are renewed: well inside the margin, so that one slow renewal does
/// not pause sending.
pub(super) const RENEW_EVERY: Duration = Duration::from_secs(3);

/// Extends the leases of held rows every few seconds until stopped. A row the renewal does
/// not return leaves this instance's hands at once; a renewal that fails changes nothing, and
/// the leases run out on the boot clock.
pub(super) async fn renew_leases(
    pool: Db,
    owner: String,
    lease: Duration,
    held: SharedHeld,
    stop: CancellationToken,
) {
    // Renewals run on their own period: only the logging of failures is wanted here.
    let mut failing = Failures::new(
        "renew leases",
        "no new request starts until it can",
        Pace::DB_STEP,
    );
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
                failing.succeeded();
            }
            Err(e) => {
                failing.failed(&format!("{e:#}"));
            }
        }
    }
}
