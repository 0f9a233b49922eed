//! The daemon's watchers beside its dispatcher: `LISTEN` for new ticks, and the pace.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::provider::concurrency::Limiters;
use crate::queue::context::Context;
use crate::queue::store;

use super::dispatcher::POLL;

/// The daemon's watchers beside its dispatcher: `NOTIFY` for new ticks (or a word that the
/// poll stands in for it), and the pace of the current tick.
pub(super) fn watch_queue(
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

/// Wakes the dispatcher on every `NOTIFY` (a tick was queued, by any instance). Reconnects
/// after a failure; meanwhile the dispatcher's poll finds new rows a little later.
pub(super) async fn listen(pool: Db, wake: Arc<Notify>, stop: CancellationToken) {
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
