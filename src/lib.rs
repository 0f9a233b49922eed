//! backfill-reporter reads per-app, per-MCC OTP counts from PostgreSQL, computes each pair's
//! backfill rate exactly and reports it to the iTniotech OTP API on a cron schedule, recording
//! every run and every submission's outcome back in PostgreSQL.
//!
//! The data flow, one module per step:
//!
//! ```text
//! config ─▶ daemon/schedule ─▶ cycle: claim the tick, stream the source, judge (rate), enqueue
//!                                          │
//!           report_submissions (the queue) ◀┘
//!                  │
//!           sender: claim due rows under a lease ─▶ provider (signed POST) ─▶ group commit
//! ```
//!
//! PostgreSQL is the only coordination between instances: a tick is claimed once (`ON CONFLICT
//! DO NOTHING` on `report_runs`) and queued in the claiming transaction; every instance sends
//! from the queue ([`queue`], [`sender`]), rows claimed with `FOR UPDATE SKIP LOCKED` under a
//! lease that only a dead or cut-off instance loses. A transient failure stays pending until its
//! deadline; [`breaker`] pauses an instance while the provider is unreachable; [`retention`]
//! keeps the record bounded.
//!
//! Around the flow, for the operator: [`alarm`] judges each new rate against its pair's
//! baseline (the route-health alarm, with a webhook), [`status`] shows every pair at a glance,
//! [`metrics`] serves Prometheus metrics and a health check, [`mcc`] names the countries, and
//! [`record`] reads the provider's record of one send (`backfill-reporter record`).

pub mod alarm;
pub mod breaker;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod concurrency;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod db;
pub mod domain;
pub mod excerpt;
pub mod mcc;
pub mod metrics;
pub mod outcomes;
pub mod pace;
pub mod provider;
pub mod queue;
pub mod rate;
pub mod record;
pub mod retention;
pub mod schedule;
pub mod sender;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod sums;
pub mod telemetry;
