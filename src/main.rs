//! Entry point: parse the command line, start logging, run the command, turn the result into
//! an exit code (2 for a config or usage error, 3 for an unreachable database, printed as one
//! line).

use std::process::ExitCode;

use clap::Parser;

use backfill_reporter::{cli::Cli, commands, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
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
