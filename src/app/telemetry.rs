//! Logging: tracing to stderr, plain text (coloured only on a terminal, without timestamps under
//! journald, which adds its own) or JSON for log shippers; `RUST_LOG` filters. Nothing here may
//! print a secret: secrets are `SecretString`s and never reach a field.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. Safe to call once; a second call is ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal();
            let builder = builder.with_ansi(ansi).with_target(false);
            // journald stamps every line itself: a second timestamp is noise.
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.without_time().try_init()
            } else {
                builder.try_init()
            }
        }
    };
}
