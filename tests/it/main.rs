//! One integration-test binary: helpers (a `TestApp` with a fresh database and the fake
//! provider), then one module per behaviour.

// Tests arrange and inspect the database with sqlx's own types; the product may not
// (clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod chaos;
mod fake_provider;
mod helpers;
mod pgbouncer;

mod accounts;
mod alarm;
mod cli;
mod cron_choice;
mod cycle;
mod daemon;
mod dashboard;
mod db_tls;
mod dist;
mod docs;
mod drills;
mod fence;
mod harness;
mod metrics;
mod migrations;
mod pace;
mod pooler;
mod process;
mod prometheus;
mod provider_client;
mod reload;
mod status;
mod sums;
mod terminal;
mod throttling;
mod unit_file;
