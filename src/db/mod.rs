//! The PostgreSQL pool and the embedded migrations (`migrate`). Connection settings come from
//! [`DatabaseSettings`]; the URL is a secret (it may carry a password) and is never echoed,
//! not even when it does not parse. A server that is not on this machine is reached over TLS
//! with a verified certificate unless the URL says otherwise.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};

use crate::config::DatabaseSettings;

mod migrate;

pub use migrate::{migrate, MIGRATOR};

/// Options for the configured database, with the application name set so that operators see
/// the daemon in `pg_stat_activity`.
///
/// sqlx defaults to `sslmode=prefer`: it encrypts without checking the certificate and falls
/// back to plaintext when the server (or a machine in the middle) declines, so the password
/// and the counts could be read or changed on the way. For a host that is not local, the
/// default here is `verify-full`; an `sslmode` written in the URL is the operator's choice and
/// is kept, weaker or not. `database.ca_file` adds certificates to trust.
pub fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let url = settings.url()?;
    refuse_unknown_parameters(url.expose_secret())?;
    // sqlx's parse error may quote the URL; replace it rather than chain it.
    let mut options = PgConnectOptions::from_str(url.expose_secret()).map_err(|_| {
        anyhow::anyhow!("database.url is not a valid PostgreSQL URL (postgres://user@host/db)")
    })?;
    if tls_required_by_default(url.expose_secret(), &options) {
        options = options.ssl_mode(PgSslMode::VerifyFull);
    }
    if let Some(ca) = &settings.ca_file {
        options = options.ssl_root_cert(ca);
    }
    let timeout = format!("{}ms", settings.statement_timeout.as_millis());
    Ok(options
        .application_name("backfill-reporter")
        // Bounds every statement and every transaction left idle, so that no query, lock wait
        // or forgotten transaction can stall a cycle (or hold a lock) unseen.
        .options([
            ("statement_timeout", timeout.as_str()),
            ("idle_in_transaction_session_timeout", timeout.as_str()),
            // The queue's statements take ids and arrays: one generic plan each, made once
            // per connection, instead of a plan per execution (3 ms of a 3.5 ms outcome
            // write). The source query, whose best plan depends on the window, sets it back
            // for its transaction (`source::Cursor::open`).
            ("plan_cache_mode", "force_generic_plan"),
        ])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

/// The URL parameters sqlx reads. It logs any other with its value at WARN, and that value may
/// be a password under a misspelt name (`pasword=`): such a URL is refused, naming the key.
const URL_PARAMETERS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

fn refuse_unknown_parameters(url: &str) -> anyhow::Result<()> {
    let Ok(url) = reqwest::Url::parse(url) else {
        return Ok(()); // refused by the parse that follows, without echo
    };
    for (key, _) in url.query_pairs() {
        if !URL_PARAMETERS.contains(&&*key) && !key.starts_with("options[") {
            anyhow::bail!(
                "database.url has an unknown parameter {:?} (its value is not shown); known: {}",
                crate::provider::clean(&key, 64),
                URL_PARAMETERS.join(", ")
            );
        }
    }
    Ok(())
}

/// Whether [`connect_options`] raises the TLS mode to `verify-full`: the URL names no
/// `sslmode` and the server is not on this machine.
fn tls_required_by_default(url: &str, options: &PgConnectOptions) -> bool {
    let explicit = reqwest::Url::parse(url)
        .map(|u| {
            u.query_pairs()
                .any(|(k, _)| k == "sslmode" || k == "ssl-mode")
        })
        .unwrap_or(false);
    !explicit && !is_local(options)
}

/// A Unix socket, `localhost` or a loopback address: traffic that never leaves the machine.
pub fn is_local(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return true;
    }
    let host = options.get_host();
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| match ip {
                std::net::IpAddr::V4(v4) => v4.is_loopback(),
                std::net::IpAddr::V6(v6) => {
                    v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            })
}

/// What protects the connection, in words.
fn tls_in_words(options: &PgConnectOptions) -> &'static str {
    if options.get_socket().is_some() || options.get_host().starts_with('/') {
        return "via a Unix socket";
    }
    match options.get_ssl_mode() {
        PgSslMode::Disable => "without TLS (sslmode=disable)",
        PgSslMode::Allow => "without TLS unless the server insists (sslmode=allow)",
        PgSslMode::Prefer => "over TLS if offered, certificate not verified (sslmode=prefer)",
        PgSslMode::Require => "over TLS, certificate not verified (sslmode=require)",
        PgSslMode::VerifyCa => {
            "over TLS, certificate verified but not its host name (sslmode=verify-ca)"
        }
        PgSslMode::VerifyFull => "over TLS with a verified certificate (sslmode=verify-full)",
    }
}

/// Where the options point and how the link is protected, without the password, for
/// messages.
pub fn describe(options: &PgConnectOptions) -> String {
    format!(
        "{}@{}:{}/{} {}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)"),
        tls_in_words(options)
    )
}

/// The database could not be reached (refused, timed out, shut down): not a config error, so
/// commands exit with their own code for it, and the daemon waits it out.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(String);

/// Whether an error, anywhere in its chain, means the server could not be reached or the
/// connection was lost, as opposed to a statement the server refused.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Unreachable>() || c.downcast_ref::<sqlx::Error>().is_some_and(lost_connection)
    })
}

fn lost_connection(e: &sqlx::Error) -> bool {
    match e {
        // A certificate the client refuses arrives as InvalidData: a config problem.
        sqlx::Error::Io(io) => io.kind() != std::io::ErrorKind::InvalidData,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        // 08: connection exception; 57P01-57P03: server shutting down or starting.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

fn pool_options(settings: &DatabaseSettings) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // No ping before every statement (a round trip each): a connection that died is found
        // by the statement itself, and every database step of the daemon is retried.
        .test_before_acquire(false)
}

/// Says once, at connection, when TLS with a verified certificate is required by default.
fn log_tls_choice(settings: &DatabaseSettings, options: &PgConnectOptions) {
    if let Some(url) = &settings.url {
        if tls_required_by_default(url.expose_secret(), options) {
            tracing::info!(
                "database host {} is not local: requiring TLS with a verified certificate \
                 (sslmode=verify-full); set database.ca_file for a private CA, or write another \
                 sslmode in database.url to choose otherwise",
                options.get_host()
            );
        }
    }
}

/// A pool for the configured database; fails fast when the server does not answer.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = connect_options(settings)?;
    let target = describe(&options);
    log_tls_choice(settings, &options);
    pool_options(settings)
        .connect_with(options)
        .await
        // sqlx's Display already includes its source; chaining it would print the cause twice.
        .map_err(|e| {
            let message = format!("connecting to PostgreSQL at {target}: {e}");
            if lost_connection(&e) {
                Unreachable(message).into()
            } else {
                anyhow::anyhow!(message)
            }
        })
}

/// A pool that connects on first use: the daemon starts (and waits out an outage) without one.
pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<PgPool> {
    let options = connect_options(settings)?;
    log_tls_choice(settings, &options);
    Ok(pool_options(settings).connect_lazy_with(options))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn options(url: &str) -> PgConnectOptions {
        connect_options(&DatabaseSettings {
            url: Some(SecretString::from(url.to_owned())),
            pooler: crate::config::Pooler::None,
            direct_url: None,
            max_connections: 2,
            statement_timeout: Duration::from_secs(60),
            keep: Duration::from_secs(86_400),
            ca_file: None,
        })
        .unwrap()
    }

    fn mode(url: &str) -> String {
        format!("{:?}", options(url).get_ssl_mode())
    }

    #[test]
    fn a_host_that_is_not_local_gets_verify_full_unless_the_url_says_otherwise() {
        for url in [
            "postgres://u:pw@db.example.com/x",
            "postgres://u@10.0.0.5:5433/x",
            "postgres://u@[2001:db8::1]/x",
            "postgres://u@db.example.com/x?application_name=y",
        ] {
            assert_eq!(mode(url), "VerifyFull", "{url}");
            assert!(describe(&options(url)).contains("sslmode=verify-full"));
        }
        for (url, expected) in [
            ("postgres://u@db.example.com/x?sslmode=require", "Require"),
            ("postgres://u@db.example.com/x?sslmode=disable", "Disable"),
            (
                "postgres://u@db.example.com/x?ssl-mode=verify-ca",
                "VerifyCa",
            ),
            ("postgres://u@db.example.com/x?sslmode=prefer", "Prefer"),
        ] {
            assert_eq!(mode(url), expected, "{url}");
        }
    }

    #[test]
    fn a_local_server_keeps_the_default() {
        for url in [
            "postgres://u@localhost/x",
            "postgres://u@127.0.0.1:5432/x",
            "postgres://u@127.0.1.1/x",
            "postgres://u@[::1]/x",
            "postgres://u@[::ffff:127.0.0.1]/x",
            "postgres:///x?host=/run/postgresql&user=u",
            "postgres://u@%2Frun%2Fpostgresql/x",
        ] {
            assert!(is_local(&options(url)), "{url}");
            assert_ne!(mode(url), "VerifyFull", "{url}");
        }
    }

    #[test]
    fn an_unknown_url_parameter_is_refused_without_its_value() {
        let settings = DatabaseSettings {
            url: Some(SecretString::from(
                "postgres://u@db.example.com/x?pasword=hunter2".to_owned(),
            )),
            pooler: crate::config::Pooler::None,
            direct_url: None,
            max_connections: 2,
            statement_timeout: Duration::from_secs(60),
            keep: Duration::from_secs(86_400),
            ca_file: None,
        };
        let err = format!("{:#}", connect_options(&settings).unwrap_err());
        assert!(err.contains("unknown parameter \"pasword\""), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        options("postgres://u@db.example.com/x?password=pw&options[search_path]=a&sslmode=require");
    }

    #[test]
    fn the_description_names_the_tls_mode_and_never_the_password() {
        let d = describe(&options("postgres://u:hunter2@db.example.com:6432/x"));
        assert_eq!(
            d,
            "u@db.example.com:6432/x over TLS with a verified certificate (sslmode=verify-full)"
        );
        let d = describe(&options("postgres:///x?host=/run/postgresql"));
        assert!(d.ends_with("via a Unix socket"), "{d}");
    }
}
