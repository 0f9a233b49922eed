//! Configuration: the TOML file, then environment overrides, validated into typed [`Settings`].
//! Raw structs mirror the file (unknown keys are errors); validation turns them into values
//! that cannot be wrong later (a parsed schedule, a time zone, an allow-list of [`AppId`]s).
//! This module reads files and the environment only; it opens no connection.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::schedule::Schedule;
use crate::domain::AppId;

mod accounts;
pub mod schedule;
mod secrets;
mod toml_error;

use secrets::{exposure, read_secret_file};
use toml_error::parse_error;

pub use accounts::{Account, Accounts};

/// Where the config is read from when neither `--config` nor `BACKFILL_REPORTER_CONFIG` names it.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/backfill-reporter/config.toml";

/// `provider.api_key` in the shipped example (and so in the package's conffile). Refused, so
/// that an unedited copy never starts sending: the key of the pages' worked example, which it
/// once held, is a real-looking key that some account may own.
pub const API_KEY_PLACEHOLDER: &str = "YOUR_API_KEY";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    provider: RawProvider,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    schedule: RawSchedule,
    #[serde(default)]
    alarm: RawAlarm,
    #[serde(default)]
    metrics: RawMetrics,
    accounts: Option<Vec<accounts::RawAccount>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: Option<String>,
    api_key: Option<String>,
    api_secret: Option<SecretString>,
    api_secret_file: Option<PathBuf>,
    request_timeout: Option<String>,
    concurrency: Option<RawConcurrency>,
    max_in_flight: Option<usize>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
    retry_deadline: Option<String>,
}

/// `concurrency = "adaptive"` or a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawConcurrency {
    Fixed(usize),
    Word(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<SecretString>,
    direct_url: Option<SecretString>,
    pooler: Option<String>,
    max_connections: Option<u32>,
    statement_timeout: Option<String>,
    keep: Option<String>,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    window: Option<String>,
    query: Option<String>,
    min_cardinal: Option<u64>,
    apps: Option<Vec<String>>,
    keep: Option<String>,
    sums: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Option<String>,
    timezone: Option<String>,
}

/// Everything the daemon needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub path: PathBuf,
    pub provider: ProviderSettings,
    pub database: DatabaseSettings,
    pub source: SourceSettings,
    pub schedule: ScheduleSettings,
    pub alarm: AlarmSettings,
    pub metrics: MetricsSettings,
    /// Problems worth a warning that do not stop the daemon (a world-readable secret).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// Without a trailing slash: endpoint paths are appended to it.
    pub base_url: String,
    /// Who signs: the named `[[accounts]]`, or the one unnamed account of `api_key`.
    pub accounts: Accounts,
    pub request_timeout: Duration,
    /// How many requests to keep on the wire: found by measuring the provider, or fixed.
    pub concurrency: Concurrency,
    /// The hard ceiling on requests in flight at once, per instance (a request counts until its
    /// outcome is recorded, so this also bounds what a crash sends twice).
    pub max_in_flight: usize,
    /// A cap on attempts per submission; `None` retries until the deadline.
    pub max_attempts: Option<u32>,
    pub retry_backoff: Duration,
    /// How long after its tick a submission may still be sent; `None`: until the next tick.
    pub retry_deadline: Option<Duration>,
}

/// `provider.concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// Measured from the provider's answers (see `concurrency`), up to `max_in_flight`.
    Adaptive,
    /// Always this many.
    Fixed(usize),
}

/// The default ceiling: the adaptive limit stays near the provider's capacity, far below it
/// for most deployments; it is this high so that 240,000 pairs fit a 10-minute schedule at
/// 100 ms a request from one instance, and it bounds what a crash sends twice.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;

impl Concurrency {
    fn from_raw(raw: Option<RawConcurrency>, max_in_flight: usize) -> anyhow::Result<Self> {
        match raw {
            None => Ok(Self::Adaptive),
            Some(RawConcurrency::Word(w)) if w == "adaptive" => Ok(Self::Adaptive),
            Some(RawConcurrency::Word(w)) => bail!(
                "provider.concurrency = {:?}: expected \"adaptive\" or a number of requests",
                crate::domain::excerpt::clean(&w, 32)
            ),
            Some(RawConcurrency::Fixed(n)) if (1..=max_in_flight).contains(&n) => {
                Ok(Self::Fixed(n))
            }
            Some(RawConcurrency::Fixed(n)) => bail!(
                "provider.concurrency = {n} is out of range: allowed 1 to provider.max_in_flight ({max_in_flight})"
            ),
        }
    }

    /// The fixed number, `None` when adaptive.
    pub fn fixed(self) -> Option<usize> {
        match self {
            Self::Adaptive => None,
            Self::Fixed(n) => Some(n),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// A secret because it may carry a password.
    pub url: Option<SecretString>,
    /// What sits between the daemon and PostgreSQL: decides what a session may keep.
    pub pooler: Pooler,
    /// A connection that bypasses the pooler, for migrations, the index build and `LISTEN`
    /// (used only with a pooler). A secret, as `url` is.
    pub direct_url: Option<SecretString>,
    pub max_connections: u32,
    /// Set on every connection, so that no statement (and so no cycle) can hang unseen.
    pub statement_timeout: Duration,
    /// How long runs and submissions are kept before they are deleted.
    pub keep: Duration,
    /// PEM certificates to trust for the server's TLS certificate, besides the public roots
    /// (a cloud provider's CA, or a private one); `sslrootcert` in the URL does the same.
    pub ca_file: Option<PathBuf>,
}

/// `database.pooler`: whether a connection pooler sits in front of PostgreSQL, and which kind.
/// It decides what the daemon may keep in a session (see `db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooler {
    /// A session of PostgreSQL's own: startup options, cached named statements, `LISTEN` and
    /// session advisory locks all hold.
    None,
    /// The pooler hands the server connection to another client after every transaction
    /// (PgBouncer `pool_mode = transaction`, RDS Proxy, Supavisor's transaction port): nothing
    /// may outlive a transaction.
    Transaction,
    /// The pooler keeps a server connection for the client's whole session but refuses
    /// startup options it does not know (PgBouncer `pool_mode = session`).
    Session,
}

impl Pooler {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Transaction => "transaction",
            Self::Session => "session",
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        [Self::None, Self::Transaction, Self::Session]
            .into_iter()
            .find(|p| p.as_str() == text)
            .with_context(|| {
                format!(
                    "database.pooler = {:?} is not one of \"none\", \"transaction\", \"session\"",
                    crate::domain::excerpt::clean(text, 32)
                )
            })
    }
}

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub window: Duration,
    pub query: Option<String>,
    pub min_cardinal: u64,
    /// Empty means every app.
    pub apps: Vec<AppId>,
    /// How long the default source's buckets (`otp_counts`) are kept; older ones are deleted.
    /// Unused with a `query` of the operator's own.
    pub keep: Duration,
    /// Whether the default source's window is summed incrementally (`source_sums`).
    pub incremental: bool,
}

#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub cron: Schedule,
    pub timezone: Tz,
}

impl DatabaseSettings {
    pub fn url(&self) -> anyhow::Result<&SecretString> {
        self.url
            .as_ref()
            .context("database.url is not set: set it in the config, in DATABASE_URL or as the systemd credential database_url")
    }
}

impl SourceSettings {
    pub fn allows(&self, app_id: &str) -> bool {
        self.apps.is_empty() || self.apps.iter().any(|a| a.as_str() == app_id)
    }
}

impl ScheduleSettings {
    /// The first tick after `after`. `Schedule::parse` refused patterns that never match, so
    /// the fallback (a year away, logged) is only there so that no caller has to handle none.
    pub fn next_tick(&self, after: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        self.cron
            .next_after(after, self.timezone)
            .unwrap_or_else(|| {
                tracing::error!(cron = %self.cron, "the schedule has no next tick; checking again in a year");
                after + chrono::Duration::days(365)
            })
    }
}

/// The config path: the flag, else `BACKFILL_REPORTER_CONFIG` (clap folds both into `flag`),
/// else the default.
pub fn resolve_path(flag: Option<&Path>) -> PathBuf {
    flag.map_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH), Path::to_path_buf)
}

/// Reads and validates the file at `path`, with overrides from the process environment.
pub fn load(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let mut settings = from_toml(&text, path, &|name| std::env::var(name).ok())
        .with_context(|| format!("config file {}", path.display()))?;
    settings.warnings.extend(permission_warning(path, &text));
    Ok(settings)
}

/// Parses and validates config text; `env` stands in for the process environment so that tests
/// need not mutate it.
pub fn from_toml(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Settings> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| parse_error(text, &e))?;
    let outside = Outside { env };
    let mut warnings = Vec::new();
    let credential = |name: &str| outside.credential(name);
    Ok(Settings {
        path: path.to_path_buf(),
        provider: raw
            .provider
            .validate(raw.accounts, &outside, &mut warnings)?,
        database: raw.database.validate(&outside, &mut warnings)?,
        source: raw.source.validate()?,
        schedule: raw.schedule.validate()?,
        alarm: alarm_settings(raw.alarm, &credential)?,
        metrics: metrics_settings(raw.metrics)?,
        warnings,
    })
}

/// Where settings come from besides the file: the environment, and systemd credentials (which
/// `LoadCredential=` puts in files under `$CREDENTIALS_DIRECTORY`).
struct Outside<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Outside<'_> {
    /// A variable that is set and not empty.
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.is_empty())
    }

    fn credential(&self, name: &str) -> Option<PathBuf> {
        self.var("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(name))
            .filter(|path| path.exists())
    }

    /// A database URL, by precedence: the environment variable `env`, the systemd credential
    /// `credential`, the file's value.
    fn secret_url(
        &self,
        env: &str,
        credential: &str,
        file: Option<SecretString>,
    ) -> anyhow::Result<Option<SecretString>> {
        if let Some(url) = self.var(env) {
            return Ok(Some(SecretString::from(url)));
        }
        match self.credential(credential) {
            Some(path) => read_secret_file(&path)
                .with_context(|| format!("systemd credential {credential}"))
                .map(Some),
            None => Ok(file),
        }
    }
}

impl RawProvider {
    fn validate(
        self,
        accounts: Option<Vec<accounts::RawAccount>>,
        outside: &Outside,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<ProviderSettings> {
        let base_url = self
            .base_url
            .as_deref()
            .unwrap_or("https://api.itniotech.com/otp");
        let base_url = validate_base_url(base_url).context("provider.base_url")?;
        let keys = accounts::ProviderKeys {
            api_key: self.api_key,
            api_secret: self.api_secret,
            api_secret_file: self.api_secret_file,
        };
        let accounts = accounts::accounts(keys, accounts, outside, warnings)?;
        let max_in_flight = bounded(
            "provider.max_in_flight",
            self.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            MAX_IN_FLIGHT,
        )?;
        let concurrency = Concurrency::from_raw(self.concurrency, max_in_flight)?;
        Ok(ProviderSettings {
            base_url,
            accounts,
            request_timeout: bounded_duration(
                "provider.request_timeout",
                duration(self.request_timeout, "10s", "provider.request_timeout")?,
                REQUEST_TIMEOUT,
            )?,
            max_in_flight,
            concurrency,
            max_attempts: at_least("provider.max_attempts", self.max_attempts, 1)?,
            retry_backoff: bounded_duration(
                "provider.retry_backoff",
                duration(self.retry_backoff, "500ms", "provider.retry_backoff")?,
                RETRY_BACKOFF,
            )?,
            retry_deadline: self
                .retry_deadline
                .map(|d| {
                    let d = duration(Some(d), "", "provider.retry_deadline")?;
                    bounded_duration("provider.retry_deadline", d, RETRY_DEADLINE)
                })
                .transpose()?,
        })
    }
}

impl RawDatabase {
    fn validate(
        self,
        outside: &Outside,
        warnings: &mut Vec<String>,
    ) -> anyhow::Result<DatabaseSettings> {
        let url = outside.secret_url("DATABASE_URL", "database_url", self.url)?;
        let direct_url = outside.secret_url(
            "BACKFILL_REPORTER_DIRECT_DATABASE_URL",
            "direct_database_url",
            self.direct_url,
        )?;
        let pooler = self
            .pooler
            .as_deref()
            .map_or(Ok(Pooler::None), Pooler::parse)?;
        if pooler == Pooler::None && direct_url.is_some() {
            warnings.push(
                "database.direct_url is set but database.pooler is \"none\": it is not used; \
                 set database.pooler when database.url goes through a pooler"
                    .to_owned(),
            );
        }
        Ok(DatabaseSettings {
            url,
            pooler,
            direct_url,
            max_connections: bounded(
                "database.max_connections",
                self.max_connections.unwrap_or(5),
                MAX_CONNECTIONS,
            )?,
            statement_timeout: bounded_duration(
                "database.statement_timeout",
                duration(self.statement_timeout, "60s", "database.statement_timeout")?,
                STATEMENT_TIMEOUT,
            )?,
            keep: bounded_duration(
                "database.keep",
                duration(self.keep, "90days", "database.keep")?,
                KEEP,
            )?,
            ca_file: self
                .ca_file
                .map(|f| readable_file("database.ca_file", f))
                .transpose()?,
        })
    }
}

impl RawSource {
    fn validate(self) -> anyhow::Result<SourceSettings> {
        let window = bounded_duration(
            "source.window",
            duration(self.window, "24h", "source.window")?,
            WINDOW,
        )?;
        let query = self.query.filter(|q| !q.trim().is_empty());
        if let Some(q) = &query {
            if !q.contains("$1") || !q.contains("$2") {
                bail!("source.query must use $1 (window start) and $2 (window end)");
            }
        }
        let apps = app_ids(self.apps).map_err(|e| anyhow::anyhow!("source.apps: {e}"))?;
        Ok(SourceSettings {
            keep: source_keep(self.keep, window)?,
            incremental: match self.sums.as_deref() {
                None | Some("incremental") => true,
                Some("full") => false,
                Some(other) => bail!(
                    "source.sums = {:?}: expected \"incremental\" or \"full\"",
                    crate::domain::excerpt::clean(other, 32)
                ),
            },
            window,
            query,
            min_cardinal: self.min_cardinal.unwrap_or(1),
            apps,
        })
    }
}

/// `source.keep`: by default the window and two hours more, at least the window and an hour
/// (a tick's planning subtracts the buckets that left the window since the last: they must
/// still be there; the sums are recounted when older than an hour), at most ten years.
fn source_keep(raw: Option<String>, window: Duration) -> anyhow::Result<Duration> {
    let hour = Duration::from_secs(3600);
    let keep = match raw {
        None => window + 2 * hour,
        Some(text) => duration(Some(text), "", "source.keep")?,
    };
    bounded_duration("source.keep", keep, (window + hour, KEEP.1))
}

/// A list of appIds as written (absent: none), each validated.
fn app_ids(raw: Option<Vec<String>>) -> Result<Vec<AppId>, String> {
    raw.unwrap_or_default()
        .iter()
        .map(|a| AppId::parse(a))
        .collect()
}

impl RawSchedule {
    fn validate(self) -> anyhow::Result<ScheduleSettings> {
        let cron_text = self.cron.unwrap_or_else(|| "*/10 * * * *".to_owned());
        let cron = Schedule::parse(&cron_text)
            .map_err(|e| anyhow::anyhow!("schedule.cron {cron_text:?}: {e}"))?;
        let tz_text = self.timezone.unwrap_or_else(|| "UTC".to_owned());
        let timezone: Tz = tz_text.parse().map_err(|_| {
            anyhow::anyhow!(
                "schedule.timezone {tz_text:?} is not an IANA time zone name (such as \"Asia/Shanghai\" or \"UTC\")"
            )
        })?;
        Ok(ScheduleSettings { cron, timezone })
    }
}

/// `provider.base_url`: https, or http to this machine only. The signing headers in cleartext
/// let anyone on the path replay requests and brute-force a short secret offline. The URL is
/// never echoed: it may carry a password, which is refused too (the API is authenticated by
/// its headers, and `check` prints the URL). It is returned as the url crate writes it, scheme
/// and host in lowercase, so that `HTTP://127.0.0.1` is the http it was judged to be.
fn validate_base_url(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed).map_err(|e| anyhow::anyhow!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        bail!(
            "must not carry a user name or password (user:password@): the API is \
             authenticated by provider.api_key and the signature"
        );
    }
    https_unless_loopback(&url, "the signing headers")?;
    if url.query().is_some() || url.fragment().is_some() {
        bail!("must not carry a query or fragment");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// https, or http to this machine only, for every URL the daemon sends something secret to:
/// over http, `what` would cross the network in cleartext. (The url crate has already
/// lowercased the scheme, so `HTTP://` is http.)
fn https_unless_loopback(url: &reqwest::Url, what: &str) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => bail!(
            "http:// is allowed for a loopback host only (127.0.0.1, ::1, localhost): {what} \
             would cross the network in cleartext; use https://"
        ),
        other => bail!("scheme {other:?} is not https"),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(crate::domain::host::is_loopback)
}

// The allowed ranges, one per bounded setting, checked by `bounded`, `bounded_duration` and
// `at_least`, which name the key and the range when a value falls outside.

/// Below a second no answer can arrive; above five minutes a hung provider holds a cycle (and
/// the shutdown drain) longer than an operator would wait.
const REQUEST_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
/// More requests in flight than this is a flood, not a report.
const MAX_IN_FLIGHT: (usize, usize) = (1, 1024);
/// A cycle writes outcomes while it reads; PostgreSQL's default `max_connections` is 100, so
/// more could never all be served.
const MAX_CONNECTIONS: (u32, u32) = (2, 100);
/// A leap year: a longer window is a typo (`3660d`), and its query would scan everything.
const WINDOW: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(366 * 86_400));
/// The first retry's delay. Zero doubles to zero: every failure retried at once, a busy loop
/// against a provider that is down (and the breaker's first probe at its 1 s floor). Above the
/// backoff's 60 s cap there is nothing left to double.
const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(60));
/// A retry deadline under a second cannot fit one request; over a year is a typo.
const RETRY_DEADLINE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(366 * 86_400));
/// Long enough for the slowest source query, short enough that a stuck one is seen.
const STATEMENT_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Runs and submissions are kept at least a day (`history` and `status` read them), at most
/// ten years.
const KEEP: (Duration, Duration) = (
    Duration::from_secs(86_400),
    Duration::from_secs(3650 * 86_400),
);

fn bounded<T: PartialOrd + Display + Copy>(
    key: &str,
    value: T,
    (min, max): (T, T),
) -> anyhow::Result<T> {
    if value < min || value > max {
        bail!("{key} = {value} is out of range: allowed {min} to {max}");
    }
    Ok(value)
}

fn bounded_duration(
    key: &str,
    value: Duration,
    (min, max): (Duration, Duration),
) -> anyhow::Result<Duration> {
    if value < min || value > max {
        bail!(
            "{key} = \"{}\" is out of range: allowed {} to {}",
            short(value),
            short(min),
            short(max)
        );
    }
    Ok(value)
}

/// A duration in the largest whole unit that fits (`366d`, `5m`), as a config file writes it.
fn short(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return humantime::format_duration(d).to_string();
    }
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A setting with a floor only, where absent is allowed (`provider.max_attempts`).
fn at_least<T: PartialOrd + Display + Copy>(
    key: &str,
    value: Option<T>,
    min: T,
) -> anyhow::Result<Option<T>> {
    match value {
        Some(v) if v < min => bail!("{key} = {v} is out of range: allowed {min} or more"),
        _ => Ok(value),
    }
}

/// A file the daemon will read later, opened now so that `check` names it rather than a TLS
/// handshake failing with a vaguer error.
fn readable_file(key: &str, path: PathBuf) -> anyhow::Result<PathBuf> {
    std::fs::File::open(&path).with_context(|| format!("{key} {}", path.display()))?;
    Ok(path)
}

fn duration(raw: Option<String>, default: &str, key: &str) -> anyhow::Result<Duration> {
    let text = raw.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(&text).map_err(|e| {
        anyhow::anyhow!("{key} {text:?} is not a duration such as \"10s\" or \"24h\": {e}")
    })
}

/// The secrets written in the config file itself, in words for the warning.
fn secrets_in(raw: &RawConfig) -> Vec<&'static str> {
    let mut secrets = Vec::new();
    if raw.provider.api_secret.is_some() {
        secrets.push("the API secret (provider.api_secret)");
    }
    if raw
        .accounts
        .iter()
        .flatten()
        .any(accounts::RawAccount::has_inline_secret)
    {
        secrets.push("an account's API secret (api_secret in [[accounts]])");
    }
    let has_password = |url: &Option<SecretString>| {
        url.as_ref()
            .and_then(|u| reqwest::Url::parse(u.expose_secret()).ok())
            .is_some_and(|u| {
                u.password().is_some()
                    || u.query_pairs()
                        .any(|(k, v)| k == "password" && !v.is_empty())
            })
    };
    if has_password(&raw.database.url) {
        secrets.push("a database password (database.url)");
    }
    if has_password(&raw.database.direct_url) {
        secrets.push("a database password (database.direct_url)");
    }
    if raw.alarm.webhook_url.is_some() {
        secrets.push("a webhook URL (alarm.webhook_url)");
    }
    secrets
}

/// Warnings about who may read or write the config file: a secret in it that group or others
/// can read (an inline API secret, or a database password in the URL, as `user:pw@` or
/// `?password=`), and a file others can write (they could point provider.base_url at their
/// own host and collect signed requests).
fn permission_warning(path: &Path, text: &str) -> Vec<String> {
    let Some(e) = exposure(path) else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    if let Some(who) = e.writable_by {
        warnings.push(format!(
            "config file {} is writable by {who} (mode {:04o}): whoever can write it can send \
             the signed requests elsewhere; make it writable by its owner only (chmod go-w)",
            path.display(),
            e.mode
        ));
    }
    let Some(who) = e.readable_by else {
        return warnings;
    };
    let Ok(raw) = toml::from_str::<RawConfig>(text) else {
        return warnings;
    };
    let secrets = secrets_in(&raw);
    if !secrets.is_empty() {
        warnings.push(format!(
            "config file {} holds {} and is readable by {who} (mode {:04o}): the shipped \
             unit's DynamicUser must be able to read this file, so move the secret out of it \
             into a systemd credential (LoadCredential=api_secret:… or \
             LoadCredential=database_url:…, direct_database_url or alarm_webhook_url, see the unit) rather than changing the mode",
            path.display(),
            secrets.join(" and "),
            e.mode
        ));
    }
    warnings
}

// ---------------------------------------------------------------------------------------------
// [alarm] and [metrics]: the operator-facing extras (route-health alarm, Prometheus endpoint).
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlarm {
    drop_points: Option<f64>,
    baseline_samples: Option<u32>,
    webhook_url: Option<SecretString>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

/// The route-health alarm: a pair whose new rate is more than `drop_points` below the median of
/// its last `baseline_samples` succeeded reports fires (see `alarm`).
#[derive(Debug, Clone)]
pub struct AlarmSettings {
    /// Percentage points, in (0, 100].
    pub drop_points: f64,
    /// How many succeeded reports the baseline is the median of.
    pub baseline_samples: u32,
    /// Where alerts are POSTed. A secret: chat webhook URLs carry their token in the path.
    pub webhook_url: Option<SecretString>,
}

impl AlarmSettings {
    /// A baseline needs at least half the samples, so that a pair's first reports, or a pair
    /// seen again after a long pause, are not judged against one or two numbers.
    pub fn min_samples(&self) -> u32 {
        self.baseline_samples.div_ceil(2)
    }
}

impl Default for AlarmSettings {
    fn default() -> Self {
        Self {
            drop_points: 20.0,
            baseline_samples: 12,
            webhook_url: None,
        }
    }
}

/// The opt-in HTTP endpoint for `/metrics` and `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    /// `None`: no endpoint.
    pub listen: Option<std::net::SocketAddr>,
}

/// `credential` finds a systemd credential by name: the webhook URL may come as the credential
/// `alarm_webhook_url` (it wins over the file), since under the unit the config file is
/// world-readable.
fn alarm_settings(
    raw: RawAlarm,
    credential: &dyn Fn(&str) -> Option<PathBuf>,
) -> anyhow::Result<AlarmSettings> {
    let defaults = AlarmSettings::default();
    let drop_points = raw.drop_points.unwrap_or(defaults.drop_points);
    if !(drop_points > 0.0 && drop_points <= 100.0) {
        bail!("alarm.drop_points must be more than 0 and at most 100 (percentage points), not {drop_points}");
    }
    let baseline_samples = raw.baseline_samples.unwrap_or(defaults.baseline_samples);
    if !(2..=1000).contains(&baseline_samples) {
        bail!("alarm.baseline_samples must be 2 to 1000, not {baseline_samples}");
    }
    let webhook_url = match credential("alarm_webhook_url") {
        Some(path) => {
            Some(read_secret_file(&path).context("systemd credential alarm_webhook_url")?)
        }
        None => raw.webhook_url,
    };
    if let Some(url) = &webhook_url {
        // Never echoed: the URL is the webhook's credential.
        let parsed = reqwest::Url::parse(url.expose_secret().trim())
            .map_err(|_| anyhow::anyhow!("alarm.webhook_url is not a URL"))?;
        https_unless_loopback(&parsed, "the webhook's token (in its URL) and the alerts")
            .context("alarm.webhook_url")?;
    }
    Ok(AlarmSettings {
        drop_points,
        baseline_samples,
        webhook_url: webhook_url.map(|u| SecretString::from(u.expose_secret().trim().to_owned())),
    })
}

fn metrics_settings(raw: RawMetrics) -> anyhow::Result<MetricsSettings> {
    let listen = raw
        .listen
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse::<std::net::SocketAddr>().map_err(|_| {
                anyhow::anyhow!(
                    "metrics.listen {l:?} is not an address and port such as \"127.0.0.1:9464\""
                )
            })
        })
        .transpose()?;
    Ok(MetricsSettings { listen })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        from_toml(text, Path::new("test.toml"), &|_| None)
    }

    const MINIMAL: &str = "[provider]\napi_key = \"bDqJFiq9\"\napi_secret = \"7bz1lzh9\"\n";

    #[test]
    fn the_shipped_example_config_is_valid() {
        // As an operator fills it in: the key from the environment, the secret too.
        let env = |name: &str| match name {
            "BACKFILL_REPORTER_API_SECRET" => Some("s3cret".to_owned()),
            "BACKFILL_REPORTER_API_KEY" => Some("acctKey1".to_owned()),
            _ => None,
        };
        let example = from_toml(
            include_str!("../../config.example.toml"),
            Path::new("config.example.toml"),
            &env,
        )
        .unwrap();
        assert_eq!(
            example.provider.accounts.get(None).unwrap().api_key,
            "acctKey1"
        );
    }

    /// Each `key = value` the example writes, commented out or not, with its `[section]`
    /// (`accounts` for the commented `[[accounts]]` entry). A line of prose that happens to
    /// hold " = " is returned as an `Err` with its key, for the caller to account for.
    fn example_keys() -> Vec<Result<ExampleKey, String>> {
        let mut lines = include_str!("../../config.example.toml").lines();
        let (mut section, mut keys) = (String::new(), Vec::new());
        while let Some(line) = lines.next() {
            let (commented, text) = match line.strip_prefix('#') {
                Some(rest) => (true, rest.trim_start()),
                None => (false, line),
            };
            if let Some(name) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                section = name.trim_matches(['[', ']']).to_owned();
                continue;
            }
            let Some((key, mut value)) = text.split_once(" = ").map(|(k, v)| (k, v.to_owned()))
            else {
                continue;
            };
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                continue;
            }
            if value == "\"\"\"" {
                // A multi-line string, commented out line by line.
                for more in lines.by_ref() {
                    let more = more.strip_prefix('#').unwrap_or(more);
                    value.push('\n');
                    value.push_str(more.strip_prefix(' ').unwrap_or(more));
                    if more.trim() == "\"\"\"" {
                        break;
                    }
                }
            }
            keys.push(match format!("v = {value}").parse::<toml::Table>() {
                Ok(mut table) => Ok(ExampleKey {
                    name: format!("{section}.{key}"),
                    value: table.remove("v").unwrap(),
                    commented,
                }),
                Err(_) => Err(format!("{section}.{key}")),
            });
        }
        keys
    }

    struct ExampleKey {
        /// `section.key`.
        name: String,
        value: toml::Value,
        commented: bool,
    }

    #[test]
    fn every_default_the_example_states_is_the_default() {
        let keys = example_keys();
        let prose: Vec<&String> = keys.iter().filter_map(|k| k.as_ref().err()).collect();
        assert_eq!(
            prose,
            ["database.pool_mode"],
            "a key whose value is not TOML"
        );
        let keys: Vec<&ExampleKey> = keys.iter().filter_map(|k| k.as_ref().ok()).collect();
        // Written in the example, but no default: what every operator must fill in.
        const REQUIRED: [&str; 2] = ["provider.api_key", "database.url"];
        let defaults = parse(MINIMAL).unwrap();
        // Settings has no PartialEq (its secrets have none); its Debug writes every field, a
        // secret as [REDACTED]: two equal Debug texts are two equal settings.
        let default_text = format!("{defaults:?}");
        let stated: Vec<&ExampleKey> = keys
            .iter()
            .copied()
            .filter(|k| !k.commented && !REQUIRED.contains(&k.name.as_str()))
            .collect();
        for key in &stated {
            let (section, name) = key.name.split_once('.').unwrap();
            let line = format!("{name} = {}\n", key.value);
            let text = match section {
                "provider" => format!("{MINIMAL}{line}"),
                _ => format!("{MINIMAL}[{section}]\n{line}"),
            };
            let settings = parse(&text).unwrap_or_else(|e| panic!("{}: {e:#}", key.name));
            assert_eq!(
                format!("{settings:?}"),
                default_text,
                "the example states {} = {}, which is not its default",
                key.name,
                key.value
            );
        }
        // So that a parser that found nothing cannot pass.
        let names: Vec<&str> = stated.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "provider.base_url",
                "provider.request_timeout",
                "provider.concurrency",
                "provider.max_in_flight",
                "provider.retry_backoff",
                "database.pooler",
                "database.max_connections",
                "database.statement_timeout",
                "database.keep",
                "source.window",
                "source.min_cardinal",
                "source.apps",
                "source.keep",
                "source.sums",
                "schedule.cron",
                "schedule.timezone",
                "alarm.drop_points",
                "alarm.baseline_samples",
            ]
        );

        // Commented out: a key that is unset by default, shown with an example value, or one
        // of the other ways to give the secret and the accounts.
        let unset_by_default = [
            (
                "provider.retry_deadline",
                defaults.provider.retry_deadline.is_none(),
            ),
            (
                "provider.max_attempts",
                defaults.provider.max_attempts.is_none(),
            ),
            (
                "database.direct_url",
                defaults.database.direct_url.is_none(),
            ),
            ("database.ca_file", defaults.database.ca_file.is_none()),
            ("source.query", defaults.source.query.is_none()),
            ("alarm.webhook_url", defaults.alarm.webhook_url.is_none()),
            ("metrics.listen", defaults.metrics.listen.is_none()),
        ];
        for (name, unset) in unset_by_default {
            assert!(
                unset,
                "{name} is set by default, the example shows it unset"
            );
        }
        let alternatives = [
            "provider.api_secret",
            "provider.api_secret_file",
            "accounts.name",
            "accounts.api_key",
            "accounts.api_secret_file",
            "accounts.apps",
        ];
        let mut commented: Vec<&str> = keys
            .iter()
            .filter(|k| k.commented)
            .map(|k| k.name.as_str())
            .collect();
        let mut known: Vec<&str> = unset_by_default.iter().map(|(name, _)| *name).collect();
        known.extend(alternatives);
        commented.sort_unstable();
        known.sort_unstable();
        assert_eq!(
            commented, known,
            "a commented-out key of the example is unaccounted for"
        );
    }

    #[test]
    fn the_examples_placeholder_key_is_refused_and_the_pages_example_key_is_not() {
        let example = include_str!("../../config.example.toml");
        assert!(example.contains("api_key = \"YOUR_API_KEY\""), "{example}");
        assert!(
            !example.contains("bDqJFiq9"),
            "the pages' sample key is not shipped"
        );
        let env =
            |name: &str| (name == "BACKFILL_REPORTER_API_SECRET").then(|| "s3cret".to_owned());
        let err = format!(
            "{:#}",
            from_toml(example, Path::new("config.example.toml"), &env).unwrap_err()
        );
        assert!(err.contains("provider.api_key"), "{err}");
        assert!(err.contains("put your account's API key there"), "{err}");
        for placeholder in ["YOUR_API_KEY", " your_api_key "] {
            let text = format!("[provider]\napi_key = {placeholder:?}\napi_secret = \"x\"\n");
            assert!(parse(&text).is_err(), "{placeholder:?}");
        }
        assert_eq!(
            parse(MINIMAL)
                .unwrap()
                .provider
                .accounts
                .get(None)
                .unwrap()
                .api_key,
            "bDqJFiq9"
        );
    }

    #[test]
    fn concurrency_is_adaptive_or_a_number_up_to_the_ceiling() {
        let with =
            |line: &str| parse(&MINIMAL.replace("[provider]", &format!("[provider]\n{line}")));
        assert_eq!(
            with("concurrency = \"adaptive\"")
                .unwrap()
                .provider
                .concurrency,
            Concurrency::Adaptive
        );
        assert_eq!(
            with("concurrency = 12").unwrap().provider.concurrency,
            Concurrency::Fixed(12)
        );
        let err = format!("{:#}", with("concurrency = 300").unwrap_err());
        assert!(err.contains("provider.concurrency = 300 is out of range: allowed 1 to provider.max_in_flight (256)"), "{err}");
        let err = format!("{:#}", with("concurrency = \"fast\"").unwrap_err());
        assert!(err.contains("expected \"adaptive\" or a number"), "{err}");
        let err = format!("{:#}", with("concurrency = 0").unwrap_err());
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn source_keep_covers_the_window_and_sums_are_incremental_or_full() {
        let with = |lines: &str| parse(&format!("{MINIMAL}[source]\n{lines}"));
        let s = with("window = \"6h\"\n").unwrap().source;
        assert_eq!(
            s.keep,
            Duration::from_secs(8 * 3600),
            "window + 2h by default"
        );
        assert!(s.incremental);
        let err = format!("{:#}", with("keep = \"24h\"\n").unwrap_err());
        assert!(
            err.contains("source.keep = \"1d\" is out of range: allowed 25h to"),
            "{err}"
        );
        assert!(!with("sums = \"full\"\n").unwrap().source.incremental);
        let err = format!("{:#}", with("sums = \"fast\"\n").unwrap_err());
        assert!(
            err.contains("expected \"incremental\" or \"full\""),
            "{err}"
        );
    }

    #[test]
    fn defaults_fill_every_optional_key() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.provider.base_url, "https://api.itniotech.com/otp");
        assert_eq!(s.provider.request_timeout, Duration::from_secs(10));
        assert_eq!(s.provider.max_in_flight, 256);
        assert_eq!(s.provider.concurrency, Concurrency::Adaptive);
        assert_eq!(s.provider.max_attempts, None);
        assert_eq!(s.provider.retry_deadline, None);
        assert_eq!(s.database.keep, Duration::from_secs(90 * 86_400));
        assert_eq!(s.database.statement_timeout, Duration::from_secs(60));
        assert_eq!(s.source.window, Duration::from_secs(24 * 3600));
        assert_eq!(s.source.min_cardinal, 1);
        assert!(s.source.apps.is_empty());
        assert_eq!(s.schedule.timezone, chrono_tz::UTC);
        assert_eq!(s.alarm.drop_points, 20.0);
        assert_eq!(s.alarm.baseline_samples, 12);
        assert_eq!(s.alarm.min_samples(), 6);
        assert!(s.alarm.webhook_url.is_none());
        assert!(s.metrics.listen.is_none());
    }

    #[test]
    fn alarm_and_metrics_sections_are_read() {
        let s = parse(&format!(
            "{MINIMAL}[alarm]\ndrop_points = 12.5\nbaseline_samples = 5\n\
             webhook_url = \"https://hooks.example/T000/B000/XXXX\"\n\
             [metrics]\nlisten = \"127.0.0.1:9464\"\n"
        ))
        .unwrap();
        assert_eq!(s.alarm.drop_points, 12.5);
        assert_eq!(s.alarm.min_samples(), 3);
        assert_eq!(s.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(
            !format!("{s:?}").contains("XXXX"),
            "the webhook URL is a secret"
        );
    }

    #[test]
    fn the_webhook_url_may_come_as_a_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("alarm_webhook_url"),
            "https://hooks.example/T1/B1/FROMCRED\n",
        )
        .unwrap();
        let cred = dir.path().to_str().unwrap().to_owned();
        let env = move |n: &str| (n == "CREDENTIALS_DIRECTORY").then(|| cred.clone());
        let text = format!("{MINIMAL}[alarm]\nwebhook_url = \"https://hooks.example/FROMFILE\"\n");
        let s = from_toml(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(
            s.alarm.webhook_url.unwrap().expose_secret(),
            "https://hooks.example/T1/B1/FROMCRED"
        );
    }

    #[test]
    fn a_webhook_url_is_https_or_loopback_like_the_base_url() {
        for ok in [
            "https://hooks.example/T000/B000/XXXX",
            "http://127.0.0.1:9000/hook",
            "http://[::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://localhost/hook",
        ] {
            parse(&format!("{MINIMAL}[alarm]\nwebhook_url = {ok:?}\n")).unwrap();
        }
        for bad in [
            "http://hooks.example/T000/B000/SECRETTOKEN",
            "http://10.0.0.5/SECRETTOKEN",
        ] {
            let err = format!(
                "{:#}",
                parse(&format!("{MINIMAL}[alarm]\nwebhook_url = {bad:?}\n")).unwrap_err()
            );
            assert!(err.contains("alarm.webhook_url"), "{err}");
            assert!(err.contains("loopback host only"), "{err}");
            assert!(!err.contains("SECRETTOKEN"), "{err}");
        }
    }

    #[test]
    fn a_malformed_webhook_url_is_never_echoed() {
        for text in [
            "[alarm]\nwebhook_url = hooks.example/T000/SECRETTOKEN\n",
            "[alarm]\nwebhook_url = \"not a url SECRETTOKEN\"\n",
        ] {
            let err = format!("{:#}", parse(&format!("{MINIMAL}{text}")).unwrap_err());
            assert!(!err.contains("SECRETTOKEN"), "{err}");
            assert!(err.contains("webhook_url"), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_is_an_error_that_names_it() {
        let err = parse(&format!("{MINIMAL}request_timout = \"5s\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("request_timout"), "{err:#}");
    }

    #[test]
    fn a_bad_duration_names_its_key() {
        let err = parse(&format!("{MINIMAL}[source]\nwindow = \"24 parsecs\"\n")).unwrap_err();
        assert!(format!("{err:#}").contains("source.window"), "{err:#}");
    }

    #[test]
    fn a_trailing_slash_on_the_base_url_is_dropped() {
        let s = parse(&format!(
            "{MINIMAL}base_url = \"https://example.test/otp/\"\n"
        ))
        .unwrap();
        assert_eq!(s.provider.base_url, "https://example.test/otp");
    }

    /// The secret of the one unnamed account.
    fn secret_of(s: &Settings) -> &str {
        let account = s.provider.accounts.get(None).unwrap();
        account.secret().unwrap().expose_secret()
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |name: &str| match name {
            "BACKFILL_REPORTER_API_KEY" => Some("envkey12".to_owned()),
            "BACKFILL_REPORTER_API_SECRET" => Some("envsecret".to_owned()),
            "DATABASE_URL" => Some("postgres://u:pw@db/x".to_owned()),
            _ => None,
        };
        let s = from_toml(MINIMAL, Path::new("t.toml"), &env).unwrap();
        assert_eq!(s.provider.accounts.get(None).unwrap().api_key, "envkey12");
        assert_eq!(secret_of(&s), "envsecret");
        assert_eq!(
            s.database.url().unwrap().expose_secret(),
            "postgres://u:pw@db/x"
        );
    }

    #[test]
    fn the_secret_comes_from_a_file_or_a_systemd_credential() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("api_secret"), "fromcred\n").unwrap();
        let file = dir.path().join("other");
        std::fs::write(&file, "fromfile\n").unwrap();
        let text = format!(
            "[provider]\napi_key = \"bDqJFiq9\"\napi_secret_file = \"{}\"\n",
            file.display()
        );
        let s = parse(&text).unwrap();
        assert_eq!(secret_of(&s), "fromfile");
        let cred = dir.path().to_str().unwrap().to_owned();
        let env = move |n: &str| (n == "CREDENTIALS_DIRECTORY").then(|| cred.clone());
        std::fs::write(dir.path().join("database_url"), "postgres://u:pw@db/cred\n").unwrap();
        let s = from_toml(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(secret_of(&s), "fromcred");
        assert_eq!(
            s.database.url().unwrap().expose_secret(),
            "postgres://u:pw@db/cred"
        );
    }

    #[test]
    fn a_secret_file_over_4_kib_is_refused_naming_its_key_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let with_file = |path: &Path| {
            format!(
                "[provider]\napi_key = \"bDqJFiq9\"\napi_secret_file = {:?}\n",
                path.display().to_string()
            )
        };
        let exact = file_with_mode(dir.path(), "exact", &"s".repeat(4096), 0o600);
        let settings = parse(&with_file(&exact)).unwrap();
        let secret = settings
            .provider
            .accounts
            .get(None)
            .unwrap()
            .secret()
            .unwrap();
        assert_eq!(secret.expose_secret().len(), 4096);
        let large = file_with_mode(dir.path(), "large", &"s".repeat(64 * 1024), 0o600);
        for path in [large.as_path(), Path::new("/dev/zero")] {
            let err = format!("{:#}", parse(&with_file(path)).unwrap_err());
            assert!(err.contains("provider.api_secret_file"), "{err}");
            assert!(err.contains("holds more than 4 KiB"), "{err}");
            assert!(!err.contains("sss"), "{err}");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = parse(&format!(
            "{MINIMAL}[database]\nurl = \"postgres://u:hunter2@db/x\"\n\
             pooler = \"transaction\"\ndirect_url = \"postgres://u:hunter2@db:5432/x\"\n"
        ))
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("7bz1lzh9"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn a_malformed_secret_is_never_echoed_in_the_error_whatever_the_layout() {
        let secrets = ["hunter2SECRET", "12345678", "hunter2", "123456"];
        for text in [
            // A section, a bare value, a number.
            "[provider]\napi_key = \"k1234\"\napi_secret = hunter2SECRET\n",
            "[provider]\napi_key = \"k1234\"\napi_secret = 12345678\n",
            // An inline table, on one line and spread over several.
            "provider = { api_key = \"k1234\", api_secret = 12345678 }\n",
            "provider = { api_key = \"k1234\",\n  api_secret = 12345678 }\n",
            // Quoted and dotted keys.
            "[provider]\n\"api_secret\" = 12345678\n",
            "[provider]\n'api_secret' = 12345678\n",
            "provider.api_secret = 12345678\n",
            "provider . \"api_secret\" = 12345678\n",
            "[\"provider\"]\napi_secret = 12345678\n",
            // Multi-line strings, in an array, and an unterminated one.
            "[provider]\napi_secret = [\"\"\"\nhunter2SECRET\n\"\"\"]\n",
            "[provider]\napi_secret = '''\nhunter2SECRET\n",
            "[provider]\napi_secret = [\n  \"hunter2SECRET\",\n]\n",
            // A table where a string belongs.
            "[provider.api_secret]\nvalue = 12345678\n",
            // The database URL in every layout.
            "[database]\nurl = postgres://u:hunter2@db/x\n",
            "[database]\nurl = 123456\n",
            "database = { url = 123456 }\n",
            "database.url = 123456\n",
            "[database]\n\"url\" = 123456\n",
            "[database]\nurl = [\"postgres://u:hunter2@db/x\"]\n",
            "[database]\ndirect_url = postgres://u:hunter2@db/x\n",
            "database = { direct_url = 123456 }\n",
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            for secret in secrets {
                assert!(!err.contains(secret), "{text:?} leaked {secret}: {err}");
            }
            assert!(err.contains("line "), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_syntax_error_inside_a_multi_line_secret_shows_nothing_from_the_string() {
        for text in [
            // The issue's case: an invalid escape on a line of a """ secret holding an `=`.
            "[provider]\napi_key = \"k1234\"\napi_secret = \"\"\"\nhunter2=abc\\q\n\"\"\"\n",
            "[provider]\napi_key = \"k1234\"\napi_secret = \"\"\"\nline one\nhunter2 = more\\q\n\"\"\"\n",
            "[provider]\napi_secret = \"\"\"a \\\"\"\" quote\nhunter2 = x\\q\"\"\"\n",
            "[database]\nurl = '''\npostgres://u:hunter2@db/x?a=b\n",
            "[provider]\napi_secret = [\n  \"hunter2=x\\q\",\n]\n",
            "[provider] # a \" in a comment\napi_secret = \"\"\"\nhunter2=x\\q\"\"\"\n",
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(!err.contains("hunter2"), "{text:?} leaked: {err}");
            assert!(err.contains("line "), "{text:?}: {err}");
        }
        // Outside a string, the key is still named.
        let err = format!(
            "{:#}",
            parse("[provider]\napi_key = \"k\\q\"\n").unwrap_err()
        );
        assert!(err.contains("(api_key)"), "{err}");
    }

    #[test]
    fn an_error_beside_a_secret_names_its_own_key_and_shows_no_secret() {
        for (text, key) in [
            (
                "provider = { api_key = \"k1234\", api_secret = \"hunter2SECRET\", max_in_flight = \"many\" }\n",
                "provider.max_in_flight",
            ),
            (
                "[provider]\napi_key = \"k1234\"\napi_secret = \"\"\"\nhunter2SECRET\"\"\"\nmax_in_flight = -1\n",
                "provider.max_in_flight",
            ),
            (
                "[database]\nurl = 'postgres://u:hunter2@db/x'\nmax_connections = \"lots\"\n",
                "database.max_connections",
            ),
        ] {
            let err = format!("{:#}", parse(&format!("[provider]\napi_key = \"k1234\"\n{text}")).or_else(|_| parse(text)).unwrap_err());
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            (
                "[schedule]\ntimezone = \"Mars/Olympus\"\n",
                "schedule.timezone",
            ),
            ("[schedule]\ncron = \"61 * * * *\"\n", "schedule.cron"),
            ("[source]\napps = [\"abc\"]\n", "source.apps"),
            ("[source]\nquery = \"SELECT 1\"\n", "source.query"),
            ("max_in_flight = 0\n", "provider.max_in_flight"),
            ("base_url = \"ftp://x\"\n", "provider.base_url"),
            ("[alarm]\ndrop_points = 0\n", "alarm.drop_points"),
            ("[alarm]\ndrop_points = 101\n", "alarm.drop_points"),
            ("[alarm]\nbaseline_samples = 1\n", "alarm.baseline_samples"),
            (
                "[alarm]\nwebhook_url = \"ftp://hooks\"\n",
                "alarm.webhook_url",
            ),
            ("[metrics]\nlisten = \"localhost\"\n", "metrics.listen"),
        ] {
            let err = parse(&format!("{MINIMAL}{extra}")).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{key}: {err:#}");
        }
    }

    fn file_with_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn the_permission_warning_says_who_may_read_or_write_and_advises_a_credential() {
        let dir = tempfile::tempdir().unwrap();
        let with_secret = |mode| file_with_mode(dir.path(), "c.toml", MINIMAL, mode);

        let readable = permission_warning(&with_secret(0o644), MINIMAL);
        assert_eq!(readable.len(), 1, "{readable:?}");
        assert!(readable[0].contains("the API secret (provider.api_secret)"));
        assert!(readable[0].contains("readable by group and others (mode 0644)"));
        assert!(readable[0].contains("LoadCredential="), "{readable:?}");
        assert!(
            !readable[0].contains("chmod"),
            "DynamicUser needs it readable"
        );

        let group_writable = permission_warning(&with_secret(0o620), MINIMAL);
        assert_eq!(group_writable.len(), 1, "{group_writable:?}");
        assert!(group_writable[0].contains("writable by group (mode 0620)"));
        assert!(
            !group_writable[0].contains("readable"),
            "{group_writable:?}"
        );

        let others_read = permission_warning(&with_secret(0o604), MINIMAL);
        assert!(others_read[0].contains("readable by others (mode 0604)"));
        assert!(permission_warning(&with_secret(0o600), MINIMAL).is_empty());
        assert!(
            permission_warning(&with_secret(0o711), MINIMAL).is_empty(),
            "x bits"
        );
    }

    #[test]
    fn the_permission_warning_finds_a_database_password_in_either_place() {
        let dir = tempfile::tempdir().unwrap();
        for (url, secret) in [
            ("postgres://u:hunter2@db/x", true),
            (
                "postgres://u@db/x?password=hunter2&sslmode=verify-full",
                true,
            ),
            ("postgres://u@db/x?sslmode=verify-full", false),
            ("postgres:///x?host=/run/postgresql", false),
        ] {
            let text = format!("[provider]\napi_key = \"k1234\"\n[database]\nurl = {url:?}\n");
            let path = file_with_mode(dir.path(), "c.toml", &text, 0o644);
            let warnings = permission_warning(&path, &text);
            assert_eq!(
                warnings
                    .iter()
                    .any(|w| w.contains("a database password (database.url)")),
                secret,
                "{url}: {warnings:?}"
            );
            assert!(
                warnings.iter().all(|w| !w.contains("hunter2")),
                "{warnings:?}"
            );
            let text =
                format!("[provider]\napi_key = \"k1234\"\n[database]\ndirect_url = {url:?}\n");
            let path = file_with_mode(dir.path(), "d.toml", &text, 0o644);
            let warnings = permission_warning(&path, &text);
            assert_eq!(
                warnings
                    .iter()
                    .any(|w| w.contains("a database password (database.direct_url)")),
                secret,
                "{url}: {warnings:?}"
            );
        }
    }

    #[test]
    fn a_readable_secret_file_gets_the_credential_advice() {
        let dir = tempfile::tempdir().unwrap();
        let secret = file_with_mode(dir.path(), "api_secret", "s3cret", 0o644);
        let text = format!(
            "[provider]\napi_key = \"bDqJFiq9\"\napi_secret_file = \"{}\"\n",
            secret.display()
        );
        let warnings = parse(&text).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("provider.api_secret_file"));
        assert!(warnings[0].contains("readable by group and others"));
        assert!(warnings[0].contains("LoadCredential=api_secret:"));

        file_with_mode(dir.path(), "api_secret", "s3cret", 0o602);
        let warnings = parse(&text).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("writable by others (mode 0602)"),
            "{warnings:?}"
        );

        file_with_mode(dir.path(), "api_secret", "s3cret", 0o600);
        assert!(parse(&text).unwrap().warnings.is_empty());
    }

    #[test]
    fn every_bounded_setting_refuses_values_outside_its_range_naming_key_and_range() {
        for (extra, key, range) in [
            (
                "request_timeout = \"0s\"\n",
                "provider.request_timeout",
                "allowed 1s to 5m",
            ),
            (
                "request_timeout = \"500ms\"\n",
                "provider.request_timeout",
                "allowed 1s to 5m",
            ),
            (
                "request_timeout = \"301s\"\n",
                "provider.request_timeout",
                "allowed 1s to 5m",
            ),
            (
                "max_in_flight = 0\n",
                "provider.max_in_flight",
                "allowed 1 to 1024",
            ),
            (
                "max_in_flight = 1025\n",
                "provider.max_in_flight",
                "allowed 1 to 1024",
            ),
            (
                "max_attempts = 0\n",
                "provider.max_attempts",
                "allowed 1 or more",
            ),
            (
                "[database]\nmax_connections = 1\n",
                "database.max_connections",
                "allowed 2 to 100",
            ),
            (
                "[database]\nmax_connections = 0\n",
                "database.max_connections",
                "allowed 2 to 100",
            ),
            (
                "[database]\nmax_connections = 101\n",
                "database.max_connections",
                "allowed 2 to 100",
            ),
            (
                "[source]\nwindow = \"0s\"\n",
                "source.window",
                "allowed 1s to 366d",
            ),
            (
                "[source]\nwindow = \"367d\"\n",
                "source.window",
                "allowed 1s to 366d",
            ),
            (
                "retry_backoff = \"0s\"\n",
                "provider.retry_backoff",
                "allowed 10ms to 1m",
            ),
            (
                "retry_backoff = \"9ms\"\n",
                "provider.retry_backoff",
                "allowed 10ms to 1m",
            ),
            (
                "retry_backoff = \"61s\"\n",
                "provider.retry_backoff",
                "allowed 10ms to 1m",
            ),
        ] {
            let err = format!("{:#}", parse(&format!("{MINIMAL}{extra}")).unwrap_err());
            assert!(err.contains(key) && err.contains(range), "{extra}: {err}");
        }
        for extra in [
            "request_timeout = \"1s\"\nmax_in_flight = 1\nmax_attempts = 1\n",
            "request_timeout = \"5m\"\nmax_in_flight = 1024\nmax_attempts = 1000\n",
            "[database]\nmax_connections = 2\n[source]\nwindow = \"366d\"\n",
            "[database]\nmax_connections = 100\n[source]\nwindow = \"1s\"\n",
            "retry_backoff = \"10ms\"\n",
            "retry_backoff = \"60s\"\n",
        ] {
            parse(&format!("{MINIMAL}{extra}")).unwrap();
        }
    }

    #[test]
    fn http_is_for_loopback_only_and_a_base_url_never_carries_credentials() {
        for ok in [
            "https://api.example.com/otp",
            "http://127.0.0.1:8080/otp",
            "http://127.9.9.9/otp",
            "http://[::1]:8080/otp",
            "http://localhost/otp",
        ] {
            let s = parse(&format!("{MINIMAL}base_url = {ok:?}\n")).unwrap();
            assert_eq!(s.provider.base_url, ok);
        }
        for (written, read) in [
            ("HTTP://127.0.0.1:8080/otp/", "http://127.0.0.1:8080/otp"),
            ("Https://API.example.com/otp", "https://api.example.com/otp"),
            ("https://api.example.com", "https://api.example.com"),
            ("http://LOCALHOST/otp", "http://localhost/otp"),
            // IPv4-mapped loopback, as the url crate writes it: this machine too.
            (
                "http://[::ffff:127.0.0.1]/otp",
                "http://[::ffff:7f00:1]/otp",
            ),
        ] {
            let s = parse(&format!("{MINIMAL}base_url = {written:?}\n")).unwrap();
            assert_eq!(s.provider.base_url, read);
        }
        for (bad, why) in [
            ("http://api.example.com/otp", "loopback host only"),
            ("http://10.0.0.5/otp", "loopback host only"),
            ("http://[::ffff:10.0.0.5]/otp", "loopback host only"),
            (
                "https://user:hunter2@api.example.com/otp",
                "user name or password",
            ),
            (
                "https://:hunter2@api.example.com/otp",
                "user name or password",
            ),
            (
                "ftp://user:hunter2@api.example.com/otp",
                "user name or password",
            ),
            ("ftp://api.example.com/otp", "not https"),
        ] {
            let err = format!(
                "{:#}",
                parse(&format!("{MINIMAL}base_url = {bad:?}\n")).unwrap_err()
            );
            assert!(
                err.contains("provider.base_url") && err.contains(why),
                "{bad}: {err}"
            );
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn the_pooler_is_none_unless_set_and_only_a_known_kind_is_accepted() {
        assert_eq!(parse(MINIMAL).unwrap().database.pooler, Pooler::None);
        for (text, kind) in [
            ("none", Pooler::None),
            ("transaction", Pooler::Transaction),
            ("session", Pooler::Session),
        ] {
            let s = parse(&format!("{MINIMAL}[database]\npooler = {text:?}\n")).unwrap();
            assert_eq!(s.database.pooler, kind);
        }
        let err = format!(
            "{:#}",
            parse(&format!("{MINIMAL}[database]\npooler = \"statement\"\n")).unwrap_err()
        );
        assert!(err.contains("database.pooler = \"statement\""), "{err}");
        assert!(err.contains("\"transaction\""), "{err}");
    }

    #[test]
    fn the_direct_url_comes_from_its_own_variable_credential_or_the_file() {
        let text = format!(
            "{MINIMAL}[database]\npooler = \"transaction\"\ndirect_url = \"postgres://u@db/file\"\n"
        );
        let direct = |s: &Settings| {
            s.database
                .direct_url
                .as_ref()
                .unwrap()
                .expose_secret()
                .to_owned()
        };
        assert_eq!(direct(&parse(&text).unwrap()), "postgres://u@db/file");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("direct_database_url"),
            "postgres://u@db/cred\n",
        )
        .unwrap();
        let cred = dir.path().to_str().unwrap().to_owned();
        let from_cred = move |n: &str| (n == "CREDENTIALS_DIRECTORY").then(|| cred.clone());
        let s = from_toml(&text, Path::new("t.toml"), &from_cred).unwrap();
        assert_eq!(direct(&s), "postgres://u@db/cred");
        let cred = dir.path().to_str().unwrap().to_owned();
        let from_env = move |n: &str| match n {
            "CREDENTIALS_DIRECTORY" => Some(cred.clone()),
            "BACKFILL_REPORTER_DIRECT_DATABASE_URL" => Some("postgres://u@db/env".to_owned()),
            _ => None,
        };
        let s = from_toml(&text, Path::new("t.toml"), &from_env).unwrap();
        assert_eq!(direct(&s), "postgres://u@db/env");
        // DATABASE_URL is the pooled URL only: it never becomes the direct one.
        let pooled_only = |n: &str| (n == "DATABASE_URL").then(|| "postgres://u@pool/x".to_owned());
        let s = from_toml(&text, Path::new("t.toml"), &pooled_only).unwrap();
        assert_eq!(direct(&s), "postgres://u@db/file");
    }

    #[test]
    fn a_direct_url_without_a_pooler_is_unused_and_said_so() {
        let s = parse(&format!(
            "{MINIMAL}[database]\ndirect_url = \"postgres://u@db/x\"\n"
        ))
        .unwrap();
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("database.direct_url is set but database.pooler is \"none\"")),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn a_ca_file_must_exist() {
        let err = parse(&format!(
            "{MINIMAL}[database]\nca_file = \"/no/such/ca.pem\"\n"
        ))
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("database.ca_file /no/such/ca.pem"),
            "{err:#}"
        );
        let dir = tempfile::tempdir().unwrap();
        let ca = file_with_mode(dir.path(), "ca.pem", "", 0o644);
        let s = parse(&format!(
            "{MINIMAL}[database]\nca_file = {:?}\n",
            ca.display().to_string()
        ))
        .unwrap();
        assert_eq!(s.database.ca_file, Some(ca));
    }
}
