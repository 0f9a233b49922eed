//! The command line. Flags that have an environment variable are one thing (`--config` and
//! `BACKFILL_REPORTER_CONFIG`). No flag takes a secret: the process list is public.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::telemetry::LogFormat;
use crate::domain::run::State;

/// Reports OTP backfill rates (codes typed back ÷ codes sent, per app and country) from
/// PostgreSQL to the iTniotech OTP API, on a cron schedule.
#[derive(Debug, Parser)]
#[command(name = "backfill-reporter", version, about, long_about = None)]
pub struct Cli {
    /// The TOML config file [default: /etc/backfill-reporter/config.toml]
    #[arg(
        long,
        global = true,
        env = "BACKFILL_REPORTER_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,

    /// Log format on stderr: text for people and journald, json for log shippers
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "BACKFILL_REPORTER_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the reporter: on the configured schedule until stopped, or once with --once
    Run {
        /// Run one cycle now and exit (within --deadline): 0 when every pair succeeded, was
        /// skipped or superseded, 1 when any failed, was invalid or was left pending
        /// (interrupted), 2 on a config error, 3 when the database cannot be reached
        #[arg(long)]
        once: bool,
        /// With --once: print what would be sent, skipped or refused; send and write nothing
        #[arg(long, requires = "once")]
        dry_run: bool,
        /// With --once: how long its pairs may be retried (while the provider is down, say);
        /// the run ends by then, its undelivered pairs failed with their last cause (or
        /// superseded by a newer tick). Never later than the schedule's next tick
        #[arg(long, requires = "once", value_name = "DURATION", default_value = "10m", value_parser = parse_deadline)]
        deadline: std::time::Duration,
    },
    /// Look up one OTP send by its order id (the id your system gave the send), to debug a
    /// delivery. Exit 0 when found, 1 on a provider error, 2 on a usage or config error
    Record {
        /// The order id (orderId) given when the OTP was sent
        order_id: String,
        /// The application the send belongs to (appId, 4-32 characters)
        #[arg(long, value_name = "ID")]
        app_id: Option<String>,
        /// The provider account to ask as, from [[accounts]] (its key and secret sign the
        /// lookup); by default the account of --app-id, or the only account
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// Print the provider's JSON answer as received instead of a summary
        #[arg(long)]
        json: bool,
    },
    /// Apply database migrations and say which were applied
    Migrate,
    /// Validate the config, connect to the database, check the source query's columns and
    /// print the next five fire times; nothing is sent. Exit 0 when all is well, 2 for a config
    /// problem, 3 when the database cannot be reached
    Check {
        /// Check the config and secrets only, without connecting anywhere (for ExecStartPre:
        /// a database outage must not keep the daemon from starting and waiting it out)
        #[arg(long)]
        offline: bool,
    },
    /// Show recent submissions, newest first
    History {
        /// How many rows
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        limit: i64,
        /// Only this application
        #[arg(long, value_name = "ID")]
        app_id: Option<String>,
        /// Only this country code (three digits)
        #[arg(long)]
        mcc: Option<String>,
        /// Only this state
        #[arg(long, value_enum)]
        state: Option<State>,
        /// Only this provider account's submissions (a name from [[accounts]])
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
    },
    /// Show every (app, MCC) pair: country, latest rate and outcome, baseline, the rates the
    /// provider accepted at the last 24 ticks as a sparkline (· where it accepted none), and
    /// whether its route-health alarm is firing
    Status {
        /// Only this application
        #[arg(long, value_name = "ID")]
        app_id: Option<String>,
        /// Only this provider account's pairs (a name from [[accounts]])
        #[arg(long, value_name = "NAME")]
        account: Option<String>,
        /// Print a JSON array, one object per pair (`alarm` is true only while firing)
        #[arg(long)]
        json: bool,
    },
}

/// A `--deadline`: a humantime duration ("90s", "10m", "2h") from 1 s to 366 days.
fn parse_deadline(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if !(std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(366 * 86_400))
        .contains(&d)
    {
        return Err("must be from 1s to 366d".into());
    }
    Ok(d)
}
