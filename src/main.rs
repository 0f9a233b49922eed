//! Entry point: make the process non-dumpable, parse the command line, start logging, run the
//! command, turn the result into an exit code (2 for a config or usage error, 3 for an
//! unreachable database, printed as one line).

use std::process::ExitCode;

use clap::Parser;
use rustix::process::DumpableBehavior;

use backfill_reporter::{app::cli::Cli, app::commands, app::telemetry};

fn main() -> ExitCode {
    // First, before any secret is read: no core dump of this process (it would hold the API
    // secret and the database password), no ptrace or /proc/PID/mem by other processes of
    // the same user. Also under a unit without LimitCORE=0, or outside systemd.
    let undumpable = rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable);
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    if let Err(e) = undumpable {
        tracing::warn!("could not make the process non-dumpable (prctl PR_SET_DUMPABLE): {e}");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(commands::execute(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            commands::exit_code_for(&e)
        }
    }
}
