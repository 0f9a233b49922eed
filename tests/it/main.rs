//! One integration-test binary: helpers (a `TestApp` with a fresh database and the fake
//! provider), then one module per behaviour.

mod chaos;
mod fake_provider;
mod helpers;

mod cli;
mod cron_choice;
mod cycle;
mod daemon;
mod db_tls;
mod drills;
mod migrations;
mod process;
mod provider_client;
mod reload;
mod unit_file;
