//! The PostgreSQL pool and the embedded migrations (`migrate`). Connection settings come from
//! [`DatabaseSettings`]; the URL is a secret (it may carry a password) and is never echoed,
//! not even when it does not parse. A server that is not on this machine is reached over TLS
//! with a verified certificate unless the URL says otherwise.

// The one module that holds sqlx's pool, connections and transactions (see clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, Executor};

use crate::config::{DatabaseSettings, Pooler};

pub mod clock;
mod handle;
mod migrate;

use handle::Setup;
pub use handle::{Db, Tx};
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
    let options = url_options(settings, settings.url()?, "database.url")?;
    Ok(match settings.pooler {
        // A server session of its own: the limits go in the startup packet, no round trip.
        Pooler::None => options.options(limits(settings)),
        // A pooler refuses startup parameters it does not track (PgBouncer answers
        // "unsupported startup parameter"): the limits are set per transaction or per session
        // instead ([`setup_sql`]), and extra_float_digits, which changes nothing since
        // PostgreSQL 12 and which stock PgBouncer refuses too, is not sent.
        Pooler::Transaction | Pooler::Session => options.extra_float_digits(None),
    })
}

/// What bounds every statement and every transaction left idle, so that no query, lock wait or
/// forgotten transaction can stall a cycle (or hold a lock) unseen; and the plans.
fn limits(settings: &DatabaseSettings) -> [(&'static str, String); 3] {
    let timeout = format!("{}ms", settings.statement_timeout.as_millis());
    [
        ("statement_timeout", timeout.clone()),
        ("idle_in_transaction_session_timeout", timeout),
        // The queue's statements take ids and arrays: one generic plan each, made once per
        // connection (once per execution through a transaction pooler), instead of a custom
        // plan per execution (3 ms of a 3.5 ms outcome write). The source query, whose best
        // plan depends on the window, sets it back for its transaction (`source::Cursor`).
        ("plan_cache_mode", "force_generic_plan".to_owned()),
    ]
}

/// [`limits`] as SQL, for a pooler that refuses them as startup options: `BEGIN; SET LOCAL …`
/// that opens every transaction through a transaction pooler (one round trip: a simple query
/// may hold several statements), or the `SET …` a session-mode pooler's connection runs once.
fn setup_sql(settings: &DatabaseSettings, pooler: Pooler) -> String {
    let scope = if pooler == Pooler::Transaction {
        "SET LOCAL"
    } else {
        "SET"
    };
    let sets: Vec<String> = limits(settings)
        .iter()
        .map(|(key, value)| format!("{scope} {key} = '{value}'"))
        .collect();
    match pooler {
        Pooler::Transaction => format!("BEGIN; {}", sets.join("; ")),
        Pooler::Session => sets.join("; "),
        Pooler::None => String::new(),
    }
}

/// Options for `url` (`key` names it in errors), before the limits.
fn url_options(
    settings: &DatabaseSettings,
    url: &SecretString,
    key: &str,
) -> anyhow::Result<PgConnectOptions> {
    refuse_unknown_parameters(url.expose_secret(), key)?;
    // sqlx's parse error may quote the URL; replace it rather than chain it.
    let mut options = PgConnectOptions::from_str(url.expose_secret()).map_err(|_| {
        anyhow::anyhow!("{key} is not a valid PostgreSQL URL (postgres://user@host/db)")
    })?;
    if tls_required_by_default(url.expose_secret(), &options) {
        options = options.ssl_mode(PgSslMode::VerifyFull);
    }
    if let Some(ca) = &settings.ca_file {
        options = options.ssl_root_cert(ca);
    }
    Ok(options
        .application_name("backfill-reporter")
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

fn refuse_unknown_parameters(url: &str, key: &str) -> anyhow::Result<()> {
    let Ok(url) = reqwest::Url::parse(url) else {
        return Ok(()); // refused by the parse that follows, without echo
    };
    for (name, _) in url.query_pairs() {
        if !URL_PARAMETERS.contains(&&*name) && !name.starts_with("options[") {
            anyhow::bail!(
                "{key} has an unknown parameter {:?} (its value is not shown); known: {}",
                crate::domain::excerpt::clean(&name, 64),
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
    let host = options.get_host();
    options.get_socket().is_some()
        || host.starts_with('/')
        || crate::domain::host::is_loopback(host)
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
        // Garbage where the server's answer should be: seen when a proxy or pooler in front of
        // a restarting server accepts the connection and then drops it (SSLRequest answered
        // 0x00). Waited out like an outage, never taken for a config error.
        sqlx::Error::Protocol(_) => true,
        // A pooler refusing a startup parameter says 08P01 as well, but no wait will fix it.
        sqlx::Error::Database(d) if refused_parameter(d.message()) => false,
        // 08: connection exception; 57P01-57P03: server shutting down or starting.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// Whether the message is a pooler's refusal of a startup parameter: PgBouncer's
/// ("unsupported startup parameter: options"), RDS Proxy's ("RDS Proxy currently doesn't
/// support command-line options").
fn refused_parameter(message: &str) -> bool {
    message.contains("unsupported startup parameter")
        || message.contains("support command-line options")
}

/// The database answered as a transaction-mode pooler does while `database.pooler` says
/// otherwise. Its message is the whole story: [`explain`] drops the context around it, which
/// would blame whatever statement met it first.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the database answers like a connection pooler (PgBouncer, RDS Proxy, Supavisor), not a \
     PostgreSQL session of its own: {sign}; set [database] pooler = \"transaction\" (\"session\" \
     for a pooler in session mode), and direct_url for migrations and LISTEN (README: \
     \"Connection poolers\")"
)]
pub struct PoolerSuspected {
    sign: String,
}

/// The sign of a transaction pooler in an error, if it is one: a startup parameter refused
/// (only a pooler does that, and only "none" sends them), or a named statement that already
/// exists or no longer does (only a server connection that changes hands between
/// transactions loses or shares them).
fn pooler_sign(pooler: Pooler, e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(d) = e else {
        return None;
    };
    let named = matches!(d.code().as_deref(), Some("42P05" | "26000"))
        && d.message().contains("prepared statement");
    let refused = pooler == Pooler::None && refused_parameter(d.message());
    (pooler != Pooler::Transaction && (named || refused))
        .then(|| crate::domain::excerpt::line(d.message()))
}

/// `e`, or the error that says the database sits behind a transaction pooler when it shows
/// the signs and `pooler` does not expect one.
fn suspect(pooler: Pooler, e: sqlx::Error) -> sqlx::Error {
    match pooler_sign(pooler, &e) {
        Some(sign) => sqlx::Error::Configuration(Box::new(PoolerSuspected { sign })),
        None => e,
    }
}

/// The error as a command prints it: a suspected pooler alone, in its one line.
pub fn explain(e: anyhow::Error) -> anyhow::Error {
    match e
        .chain()
        .find_map(|c| c.downcast_ref::<PoolerSuspected>())
        .cloned()
    {
        Some(suspected) => suspected.into(),
        None => e,
    }
}

fn pool_options(max_connections: u32, pooler: Pooler, setup: &Setup) -> PgPoolOptions {
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // No ping before every statement (a round trip each): a connection that died is found
        // by the statement itself, and every database step of the daemon is retried.
        .test_before_acquire(false);
    match pooler {
        Pooler::None => options,
        Pooler::Session => {
            let setup = setup.clone();
            options.after_connect(move |conn, _| {
                let sql = setup.sql();
                Box::pin(async move { conn.execute(&*sql).await.map(drop) })
            })
        }
        // A connection handed back while it still knows a named statement left its
        // transaction before the end (a task dropped midway): its names would collide on a
        // server connection another client used since, so it is closed rather than reused.
        // sqlx's statement cache stays on: without it, names are still used, never closed.
        Pooler::Transaction => options.after_release(|conn, _| {
            Box::pin(async move { Ok(conn.cached_statements_size() == 0) })
        }),
    }
}

/// Says once, at connection, when TLS with a verified certificate is required by default.
fn log_tls_choice(url: &SecretString, options: &PgConnectOptions, key: &str) {
    if tls_required_by_default(url.expose_secret(), options) {
        tracing::info!(
            "database host {} is not local: requiring TLS with a verified certificate \
             (sslmode=verify-full); set database.ca_file for a private CA, or write another \
             sslmode in {key} to choose otherwise",
            options.get_host()
        );
    }
}

/// A pool for the configured database; fails fast when the server does not answer.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<Db> {
    let options = connect_options(settings)?;
    let target = describe(&options);
    log_tls_choice(settings.url()?, &options, "database.url");
    let setup = Setup::new(setup_sql(settings, settings.pooler));
    let pool = pool_options(settings.max_connections, settings.pooler, &setup)
        .connect_with(options)
        .await
        .map_err(|e| connect_error(settings.pooler, &target, e))?;
    Ok(Db {
        pool,
        pooler: settings.pooler,
        setup,
        direct: direct(settings)?,
    })
}

/// sqlx's Display already includes its source; chaining it would print the cause twice.
fn connect_error(pooler: Pooler, target: &str, e: sqlx::Error) -> anyhow::Error {
    let context = format!("connecting to PostgreSQL at {target}");
    if let Some(sign) = pooler_sign(pooler, &e) {
        return anyhow::Error::new(PoolerSuspected { sign }).context(context);
    }
    let message = format!("{context}: {e}");
    if lost_connection(&e) {
        Unreachable(message).into()
    } else {
        anyhow::anyhow!(message)
    }
}

/// A pool that connects on first use: the daemon starts (and waits out an outage) without one.
pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<Db> {
    let options = connect_options(settings)?;
    log_tls_choice(settings.url()?, &options, "database.url");
    let setup = Setup::new(setup_sql(settings, settings.pooler));
    Ok(Db {
        pool: pool_options(settings.max_connections, settings.pooler, &setup)
            .connect_lazy_with(options),
        pooler: settings.pooler,
        setup,
        direct: direct(settings)?,
    })
}

/// Connections over `database.direct_url`: one for `LISTEN`, two for a migration (its lock's
/// session and its statements).
const DIRECT_CONNECTIONS: u32 = 3;

/// The pool over `database.direct_url`, with a pooler, connected on first use. It is treated
/// as a session-mode pooler's (limits set after connecting, not as startup options), which a
/// server accepts as well: managed services often offer a session-mode pooler as the way
/// around their transaction-mode one.
fn direct(settings: &DatabaseSettings) -> anyhow::Result<Option<Arc<Db>>> {
    let Some(url) = settings
        .direct_url
        .as_ref()
        .filter(|_| settings.pooler != Pooler::None)
    else {
        return Ok(None);
    };
    let options = url_options(settings, url, "database.direct_url")?.extra_float_digits(None);
    log_tls_choice(url, &options, "database.direct_url");
    let setup = Setup::new(setup_sql(settings, Pooler::Session));
    Ok(Some(Arc::new(Db {
        pool: pool_options(DIRECT_CONNECTIONS, Pooler::Session, &setup).connect_lazy_with(options),
        pooler: Pooler::Session,
        setup,
        direct: None,
    })))
}

impl Db {
    /// Connects over `database.direct_url`, if set, as `check` does with `url`; returns where
    /// it points, without the password.
    pub async fn check_direct(&self) -> anyhow::Result<Option<String>> {
        let Some(direct) = &self.direct else {
            return Ok(None);
        };
        let target = describe(&direct.pool.connect_options());
        direct
            .pool
            .acquire()
            .await
            .map_err(|e| connect_error(Pooler::Session, &target, e))
            .context("database.direct_url")?;
        Ok(Some(target))
    }

    /// Takes new settings (a rotated URL, another CA or `statement_timeout`): tried once, then
    /// used for every new connection. The pooler, `direct_url` and the pool size wait for a
    /// restart (the caller keeps the old ones in `settings`).
    pub async fn reconfigure(&self, settings: &DatabaseSettings) -> anyhow::Result<()> {
        let options = connect_options(settings)?;
        let conn = options
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("the new database settings do not connect: {e}"))?;
        let _ = conn.close().await;
        self.pool.set_connect_options(options);
        self.setup.replace(setup_sql(settings, self.pooler));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn settings(url: &str, pooler: Pooler) -> DatabaseSettings {
        DatabaseSettings {
            url: Some(SecretString::from(url.to_owned())),
            pooler,
            direct_url: None,
            max_connections: 2,
            statement_timeout: Duration::from_secs(60),
            keep: Duration::from_secs(86_400),
            ca_file: None,
        }
    }

    fn options(url: &str) -> PgConnectOptions {
        connect_options(&settings(url, Pooler::None)).unwrap()
    }

    #[test]
    fn the_limits_go_in_the_startup_packet_for_a_server_and_in_sql_for_a_pooler() {
        let url = "postgres://u@localhost/x";
        let server = options(url);
        let startup = server.get_options().unwrap_or_default();
        assert!(startup.contains("statement_timeout=60000ms"), "{startup}");
        assert!(
            startup.contains("plan_cache_mode=force_generic_plan"),
            "{startup}"
        );
        for pooler in [Pooler::Transaction, Pooler::Session] {
            let pooled = connect_options(&settings(url, pooler)).unwrap();
            assert_eq!(pooled.get_options(), None, "{pooler:?}");
        }
        let s = settings(url, Pooler::Transaction);
        assert_eq!(
            setup_sql(&s, Pooler::Transaction),
            "BEGIN; SET LOCAL statement_timeout = '60000ms'; \
             SET LOCAL idle_in_transaction_session_timeout = '60000ms'; \
             SET LOCAL plan_cache_mode = 'force_generic_plan'"
        );
        assert_eq!(
            setup_sql(&s, Pooler::Session),
            "SET statement_timeout = '60000ms'; SET idle_in_transaction_session_timeout = \
             '60000ms'; SET plan_cache_mode = 'force_generic_plan'"
        );
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
        let settings = settings(
            "postgres://u@db.example.com/x?pasword=hunter2",
            Pooler::None,
        );
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
