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
//!
//! One file per task: [`dispatcher`] (claims and starts requests), [`request`] (one request and
//! what its answer means), [`writer`] (group commit), [`renewer`] (leases), [`listen`]
//! (`NOTIFY`), [`close`] (closing runs); [`held`] is the lease book they share and [`types`]
//! the messages between them.

mod close;
mod dispatcher;
mod held;
mod listen;
mod renewer;
mod request;
mod types;
mod writer;

use rand::Rng;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::provider::concurrency::Limiters;
use crate::queue::context::Context;

pub use close::close_run;
pub use types::{count, lease, Scope, DRAIN_LIMIT, RECORD_LIMIT};

use dispatcher::Dispatcher;
use held::SharedHeld;
use listen::watch_queue;
use renewer::renew_leases;
use writer::write_outcomes;

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
