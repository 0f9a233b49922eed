//! Configuration: the TOML file, then environment overrides, validated into typed [`Settings`].
//! Raw structs mirror the file (unknown keys are errors); validation turns them into values
//! that cannot be wrong later (a parsed schedule, a time zone, an allow-list of [`AppId`]s).
//! This module reads files and the environment only; it opens no connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use chrono_tz::Tz;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::AppId;
use crate::schedule::Schedule;

/// Where the config is read from when neither `--config` nor `BACKFILL_REPORTER_CONFIG` names it.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/backfill-reporter/config.toml";

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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    base_url: Option<String>,
    api_key: Option<String>,
    api_secret: Option<SecretString>,
    api_secret_file: Option<PathBuf>,
    request_timeout: Option<String>,
    max_in_flight: Option<usize>,
    max_attempts: Option<u32>,
    retry_backoff: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<SecretString>,
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    window: Option<String>,
    query: Option<String>,
    min_cardinal: Option<u64>,
    apps: Option<Vec<String>>,
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
    pub api_key: String,
    /// `None` until one of the four sources provides it; commands that talk to the provider
    /// ask for it through [`ProviderSettings::secret`], so `history` or `migrate` work without.
    pub api_secret: Option<SecretString>,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub retry_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// A secret because it may carry a password.
    pub url: Option<SecretString>,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub window: Duration,
    pub query: Option<String>,
    pub min_cardinal: u64,
    /// Empty means every app.
    pub apps: Vec<AppId>,
}

#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    pub cron: Schedule,
    pub timezone: Tz,
}

impl ProviderSettings {
    pub fn secret(&self) -> anyhow::Result<&SecretString> {
        self.api_secret.as_ref().context(
            "provider.api_secret is not set: set provider.api_secret or provider.api_secret_file, \
             the BACKFILL_REPORTER_API_SECRET environment variable, or the systemd credential \
             api_secret",
        )
    }
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
    if let Some(warning) = permission_warning(path, &text) {
        settings.warnings.push(warning);
    }
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
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut warnings = Vec::new();
    // systemd's LoadCredential= puts each credential in a file under $CREDENTIALS_DIRECTORY.
    let credential = |name: &str| {
        env("CREDENTIALS_DIRECTORY")
            .map(|dir| PathBuf::from(dir).join(name))
            .filter(|path| path.exists())
    };

    let p = raw.provider;
    let base_url = p
        .base_url
        .unwrap_or_else(|| "https://api.itniotech.com/otp".to_owned());
    let base_url = validate_base_url(&base_url).context("provider.base_url")?;
    let api_key = env("BACKFILL_REPORTER_API_KEY")
        .or(p.api_key)
        .context("provider.api_key is not set (or BACKFILL_REPORTER_API_KEY)")?;
    if api_key.trim().is_empty() || api_key.chars().any(|c| c.is_control()) {
        bail!("provider.api_key is empty or has control characters");
    }
    if p.api_secret.is_some() && p.api_secret_file.is_some() {
        bail!("provider.api_secret and provider.api_secret_file are both set: keep one");
    }
    let api_secret = if let Some(secret) = env("BACKFILL_REPORTER_API_SECRET") {
        Some(SecretString::from(secret))
    } else if let Some(path) = credential("api_secret") {
        Some(read_secret_file(&path).context("systemd credential api_secret")?)
    } else if let Some(file) = &p.api_secret_file {
        if let Some(mode) = loose_mode(file) {
            warnings.push(format!(
                "provider.api_secret_file {} is readable by group or others (mode {mode:o}): run chmod 600 on it",
                file.display()
            ));
        }
        Some(read_secret_file(file).context("provider.api_secret_file")?)
    } else {
        p.api_secret
    };
    if let Some(secret) = &api_secret {
        let s = secret.expose_secret();
        if s.is_empty() || s.chars().any(|c| c.is_control()) {
            bail!("provider.api_secret is empty or has control characters");
        }
    }
    let provider = ProviderSettings {
        base_url,
        api_key,
        api_secret,
        request_timeout: duration(p.request_timeout, "10s", "provider.request_timeout")?,
        max_in_flight: positive(p.max_in_flight.unwrap_or(8), "provider.max_in_flight")?,
        max_attempts: positive(p.max_attempts.unwrap_or(5), "provider.max_attempts")?,
        retry_backoff: duration(p.retry_backoff, "500ms", "provider.retry_backoff")?,
    };

    let d = raw.database;
    let database = DatabaseSettings {
        url: match env("DATABASE_URL") {
            Some(url) => Some(SecretString::from(url)),
            None => match credential("database_url") {
                Some(path) => {
                    Some(read_secret_file(&path).context("systemd credential database_url")?)
                }
                None => d.url,
            },
        },
        max_connections: positive(d.max_connections.unwrap_or(5), "database.max_connections")?,
    };

    let s = raw.source;
    let window = duration(s.window, "24h", "source.window")?;
    if window.is_zero() {
        bail!("source.window must be longer than 0s");
    }
    let query = s.query.filter(|q| !q.trim().is_empty());
    if let Some(q) = &query {
        if !q.contains("$1") || !q.contains("$2") {
            bail!("source.query must use $1 (window start) and $2 (window end)");
        }
    }
    let apps = s
        .apps
        .unwrap_or_default()
        .iter()
        .map(|a| AppId::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("source.apps: {e}"))?;
    let source = SourceSettings {
        window,
        query,
        min_cardinal: s.min_cardinal.unwrap_or(1),
        apps,
    };

    let c = raw.schedule;
    let cron_text = c.cron.unwrap_or_else(|| "*/10 * * * *".to_owned());
    let cron = Schedule::parse(&cron_text)
        .map_err(|e| anyhow::anyhow!("schedule.cron {cron_text:?}: {e}"))?;
    let tz_text = c.timezone.unwrap_or_else(|| "UTC".to_owned());
    let timezone: Tz = tz_text.parse().map_err(|_| {
        anyhow::anyhow!("schedule.timezone {tz_text:?} is not an IANA time zone name (such as \"Asia/Shanghai\" or \"UTC\")")
    })?;

    Ok(Settings {
        path: path.to_path_buf(),
        provider,
        database,
        source,
        schedule: ScheduleSettings { cron, timezone },
        alarm: alarm_settings(raw.alarm, &credential)?,
        metrics: metrics_settings(raw.metrics)?,
        warnings,
    })
}

/// A TOML error as one line with its line number. toml's own Display quotes the offending line
/// and its messages quote values, which may be a secret (`api_secret = 1234` is a type error
/// that would print 1234): neither is shown for a line that sets a secret.
fn parse_error(text: &str, e: &toml::de::Error) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{}", e.message());
    };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or_default();
    let key = line.split('=').next().unwrap_or_default().trim();
    if SECRET_KEYS
        .iter()
        .any(|k| key == *k || key.ends_with(&format!(".{k}")))
    {
        anyhow::anyhow!("line {line_no}: invalid value for {key} (not shown: it may hold a secret)")
    } else {
        anyhow::anyhow!(
            "line {line_no}: {}",
            e.message().trim_end().replace('\n', " ")
        )
    }
}

/// Keys whose values are never echoed in an error.
const SECRET_KEYS: [&str; 3] = ["api_secret", "url", "webhook_url"];

fn validate_base_url(raw: &str) -> anyhow::Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed).context("not a URL")?;
    match url.scheme() {
        "https" | "http" => {}
        other => bail!("{raw:?}: scheme {other:?} is not http or https"),
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        // Not echoed: it may carry credentials.
        bail!("must not carry a query, fragment or credentials");
    }
    Ok(trimmed.to_owned())
}

fn duration(raw: Option<String>, default: &str, key: &str) -> anyhow::Result<Duration> {
    let text = raw.unwrap_or_else(|| default.to_owned());
    humantime::parse_duration(&text).map_err(|e| {
        anyhow::anyhow!("{key} {text:?} is not a duration such as \"10s\" or \"24h\": {e}")
    })
}

fn positive<T: PartialOrd + Default + std::fmt::Display>(v: T, key: &str) -> anyhow::Result<T> {
    if v > T::default() {
        Ok(v)
    } else {
        bail!("{key} must be at least 1, not {v}")
    }
}

fn read_secret_file(path: &Path) -> anyhow::Result<SecretString> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading secret file {}", path.display()))?;
    // Editors and `echo` add a final newline that is not part of the secret.
    Ok(SecretString::from(
        text.trim_end_matches(['\n', '\r']).to_owned(),
    ))
}

/// The file's permission bits when group or others may read or write it.
fn loose_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// A warning when the file holds a secret (an inline API secret, or a database URL with a
/// password) and group or others may read it.
fn permission_warning(path: &Path, text: &str) -> Option<String> {
    let mode = loose_mode(path)?;
    let raw: RawConfig = toml::from_str(text).ok()?;
    let db_password = raw
        .database
        .url
        .as_ref()
        .and_then(|u| reqwest::Url::parse(u.expose_secret()).ok())
        .is_some_and(|u| u.password().is_some());
    let webhook = raw.alarm.webhook_url.is_some();
    (raw.provider.api_secret.is_some() || db_password || webhook).then(|| {
        format!(
            "config file {} holds a secret and is readable by group or others (mode {:o}): \
             run chmod 600 on it, or move the secret to provider.api_secret_file or a systemd credential",
            path.display(),
            mode
        )
    })
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
        if !matches!(parsed.scheme(), "https" | "http") {
            bail!("alarm.webhook_url must be an http or https URL");
        }
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
    fn defaults_fill_every_optional_key() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.provider.base_url, "https://api.itniotech.com/otp");
        assert_eq!(s.provider.request_timeout, Duration::from_secs(10));
        assert_eq!(s.provider.max_in_flight, 8);
        assert_eq!(s.provider.max_attempts, 5);
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

    #[test]
    fn environment_overrides_the_file() {
        let env = |name: &str| match name {
            "BACKFILL_REPORTER_API_KEY" => Some("envkey12".to_owned()),
            "BACKFILL_REPORTER_API_SECRET" => Some("envsecret".to_owned()),
            "DATABASE_URL" => Some("postgres://u:pw@db/x".to_owned()),
            _ => None,
        };
        let s = from_toml(MINIMAL, Path::new("t.toml"), &env).unwrap();
        assert_eq!(s.provider.api_key, "envkey12");
        assert_eq!(s.provider.secret().unwrap().expose_secret(), "envsecret");
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
        assert_eq!(s.provider.secret().unwrap().expose_secret(), "fromfile");
        let cred = dir.path().to_str().unwrap().to_owned();
        let env = move |n: &str| (n == "CREDENTIALS_DIRECTORY").then(|| cred.clone());
        std::fs::write(dir.path().join("database_url"), "postgres://u:pw@db/cred\n").unwrap();
        let s = from_toml(&text, Path::new("t.toml"), &env).unwrap();
        assert_eq!(s.provider.secret().unwrap().expose_secret(), "fromcred");
        assert_eq!(
            s.database.url().unwrap().expose_secret(),
            "postgres://u:pw@db/cred"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = parse(&format!(
            "{MINIMAL}[database]\nurl = \"postgres://u:hunter2@db/x\"\n"
        ))
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("7bz1lzh9"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn a_malformed_secret_is_never_echoed_in_the_error() {
        for text in [
            "[provider]\napi_key = \"k1234\"\napi_secret = 7bz1lzh9SECRET\n",
            "[provider]\napi_key = \"k1234\"\napi_secret = 12345678\n",
            "[database]\nurl = postgres://u:hunter2@db/x\n",
            "[database]\nurl = 123456\n",
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            for secret in ["7bz1lzh9SECRET", "12345678", "hunter2", "123456"] {
                assert!(!err.contains(secret), "{err}");
            }
            assert!(err.contains("line "), "{err}");
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

    #[test]
    fn a_world_readable_file_with_a_secret_gets_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(permission_warning(&path, MINIMAL)
            .unwrap()
            .contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(permission_warning(&path, MINIMAL).is_none());

        let secret = dir.path().join("api_secret");
        std::fs::write(&secret, "s3cret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "[provider]\napi_key = \"bDqJFiq9\"\napi_secret_file = \"{}\"\n",
            secret.display()
        );
        let warnings = parse(&text).unwrap().warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("provider.api_secret_file")),
            "{warnings:?}"
        );
    }
}
