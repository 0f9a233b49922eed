//! backfill-reporter reads per-app, per-MCC OTP counts from PostgreSQL, computes each pair's
//! backfill rate exactly and reports it to the iTniotech OTP API on a cron schedule, recording
//! every run and every submission's outcome back in PostgreSQL.
//!
//! The data flow, one module per step:
//!
//! ```text
//! config ─▶ daemon/schedule ─▶ source (counts) ─▶ rate ─▶ provider (signed POST) ─▶ outcomes
//!                 └──────────── cycle: claim → read → judge → submit → record ───────┘
//! ```
//!
//! A cycle claims its tick and writes every pair as pending in one transaction before any
//! request, so a crash leaves rows that the next start sends again ([`cycle::recover`]); the
//! unique key on (app, MCC, tick) keeps a tick from being submitted twice, and a PostgreSQL
//! advisory lock lets several instances share one database with one cycle at a time.
//!
//! Around the flow, for the operator: [`alarm`] judges each new rate against its pair's
//! baseline (the route-health alarm, with a webhook), [`status`] shows every pair at a glance,
//! [`metrics`] serves Prometheus metrics and a health check, [`mcc`] names the countries.

pub mod alarm;
pub mod cli;
pub mod commands;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod db;
pub mod domain;
pub mod mcc;
pub mod metrics;
pub mod outcomes;
pub mod provider;
pub mod rate;
pub mod schedule;
pub mod source;
pub mod status;
pub mod telemetry;
