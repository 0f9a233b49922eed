//! One integration-test binary: helpers (a `TestApp` with a fresh database and the fake
//! provider), then one module per behaviour.

mod fake_provider;
mod helpers;

mod alarm;
mod cli;
mod cron_choice;
mod cycle;
mod daemon;
mod dist;
mod metrics;
mod provider_client;
mod status;
