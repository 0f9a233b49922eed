//! backfill-reporter reads per-app, per-MCC OTP counts from PostgreSQL, computes each pair's
//! backfill rate exactly and reports it to the iTniotech OTP API on a cron schedule, recording
//! every run and every submission's outcome back in PostgreSQL.
//!
//! The folders are floors; a module imports only from the floors below its own:
//!
//! ```text
//! app       the command line, the daemon's loop, the one-shot commands
//! queue     a tick: claim it, stream the source, judge, enqueue; send under a lease; record
//! views     what the operator reads and watches: status, the alarm, metrics
//! retry     when to try again, and when to stop (backoff, deadlines, the breaker)
//! provider  the iTniotech API: signed requests, its answers, its record of one send
//! db        the one way to PostgreSQL, its migrations, and its clock
//! config    the operator's settings, accounts, schedule
//! domain    the values everything else speaks of: app ids, MCCs, rates, bounded text
//! ```
//!
//! PostgreSQL is the only coordination between instances: a tick is claimed once (`ON CONFLICT
//! DO NOTHING` on `report_runs`) and queued in the claiming transaction; every instance sends
//! from the queue ([`queue::store`], [`queue::sender`]), rows claimed with `FOR UPDATE SKIP
//! LOCKED` under a lease that only a dead or cut-off instance loses.

pub mod app;
pub mod config;
pub mod db;
pub mod domain;
pub mod provider;
pub mod queue;
pub mod retry;
pub mod views;
