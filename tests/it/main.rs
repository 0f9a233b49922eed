//! One integration-test binary: helpers (a `TestApp` with a fresh database and the fake
//! provider), then one module per behaviour.

mod chaos;
mod fake_provider;
mod helpers;

mod alarm;
mod cli;
mod cron_choice;
mod cycle;
mod daemon;
mod db_tls;
mod dist;
mod docs;
mod drills;
mod fence;
mod harness;
mod metrics;
mod migrations;
mod pace;
mod process;
mod provider_client;
mod reload;
mod status;
mod terminal;
mod throttling;
mod unit_file;
