//! `TestApp`: a fresh migrated database (from `#[sqlx::test]`), the fake provider, and a config
//! file pointing at both, usable through the library (`ctx()`) or the binary (`command()`).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backfill_reporter::config::{self, Settings};
use backfill_reporter::queue::context::Context;
use backfill_reporter::queue::sender::{self, Scope};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::fake_provider::FakeProvider;

pub const API_KEY: &str = "bDqJFiq9";
pub const API_SECRET: &str = "7bz1lzh9-test-secret";

/// The knobs tests turn; everything else is the daemon's default.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub cron: String,
    pub timezone: String,
    pub window: String,
    pub query: Option<String>,
    pub min_cardinal: u64,
    pub apps: Vec<String>,
    pub max_in_flight: usize,
    /// `provider.concurrency` when set ("adaptive" or a number); the default otherwise.
    pub concurrency: Option<String>,
    pub max_attempts: Option<u32>,
    pub request_timeout: String,
    pub retry_backoff: String,
    pub retry_deadline: Option<String>,
    /// Instead of the fake provider's own address (a proxy in front of it, say).
    pub base_url: Option<String>,
    /// Lines added to `[database]` (`pooler = "transaction"`, `statement_timeout = "1s"`).
    pub database_extra: String,
    /// `[[accounts]]` instead of `[provider] api_key`; each one is known to the fake provider
    /// too, with its secret and apps.
    pub accounts: Vec<TestAccount>,
}

/// One `[[accounts]]` entry of a test config: its secret goes in a file of its own.
#[derive(Debug, Clone)]
pub struct TestAccount {
    pub name: &'static str,
    pub api_key: &'static str,
    pub api_secret: &'static str,
    pub apps: Vec<&'static str>,
}

impl TestAccount {
    /// Two accounts, as a company with two brands has them: `shop` (keys of its own) reports
    /// for `shop_apps`, `bank` for `bank_apps`.
    pub fn two(shop_apps: &[&'static str], bank_apps: &[&'static str]) -> Vec<TestAccount> {
        vec![
            TestAccount {
                name: "shop",
                api_key: "shopKey1",
                api_secret: "shop-secret-1",
                apps: shop_apps.to_vec(),
            },
            TestAccount {
                name: "bank",
                api_key: "bankKey1",
                api_secret: "bank-secret-1",
                apps: bank_apps.to_vec(),
            },
        ]
    }
}

impl Default for TestConfig {
    /// An hourly schedule whose tick was ten minutes ago: data seeded half an hour ago is in
    /// the latest tick's window, and what a test plans now has its deadline (the next tick)
    /// some 50 minutes away whatever the time of day. (A fixed `*/10` schedule put the next
    /// tick seconds away for a test started just before a real ten-minute boundary, cutting
    /// its retries short.) Only the minute is set, so the schedule means the same in every
    /// zone a whole number of hours from UTC.
    fn default() -> Self {
        Self {
            cron: TestConfig::hourly_ticked_ten_minutes_ago(),
            timezone: "Asia/Shanghai".into(),
            window: "24h".into(),
            query: None,
            min_cardinal: 1,
            apps: Vec::new(),
            max_in_flight: 4,
            concurrency: None,
            max_attempts: None,
            request_timeout: "5s".into(),
            retry_backoff: "10ms".into(),
            retry_deadline: None,
            base_url: None,
            database_extra: String::new(),
            accounts: Vec::new(),
        }
    }
}

impl TestConfig {
    /// `M * * * *` where M is the minute of ten minutes ago: the latest tick 10–11 minutes
    /// back, the next one 49–50 minutes ahead.
    pub fn hourly_ticked_ten_minutes_ago() -> String {
        use chrono::Timelike;
        let last = chrono::Utc::now() - chrono::Duration::minutes(10);
        format!("{} * * * *", last.minute())
    }

    /// A yearly schedule (in UTC) whose latest tick was about half a year ago, and that tick:
    /// its next tick is about half a year away at any date, where `0 0 1 1 *` has it hours
    /// away on 31 December. The day is at most the 28th, so that the date exists every year.
    pub fn yearly_ticked_half_a_year_ago() -> (String, DateTime<Utc>) {
        use chrono::{Datelike, TimeZone};
        let then = Utc::now() - chrono::Duration::days(182);
        let day = then.day().min(28);
        let tick = Utc
            .with_ymd_and_hms(then.year(), then.month(), day, 0, 0, 0)
            .unwrap();
        (format!("0 0 {day} {} *", then.month()), tick)
    }

    /// A six-field schedule that fires on every even second: for daemons that must tick
    /// while the test watches.
    pub fn every_two_seconds() -> Self {
        Self {
            cron: "*/2 * * * * *".into(),
            ..Self::default()
        }
    }

    /// This config on a daily schedule whose tick was an hour ago, in its zone: what a test
    /// plans now has its deadline (the next tick) 23 hours away whatever the time of day, so
    /// that a real ten-minute or hour boundary cannot cut its retries short.
    pub fn next_tick_a_day_away(self) -> Self {
        use chrono::Timelike;
        let tz: chrono_tz::Tz = self.timezone.parse().expect("a valid test zone");
        let last = (chrono::Utc::now() - chrono::Duration::hours(1)).with_timezone(&tz);
        Self {
            cron: format!("{} {} * * *", last.minute(), last.hour()),
            ..self
        }
    }
}

/// What a run of the binary left.
#[derive(Debug)]
pub struct Output {
    /// The exit code, -1 when a signal ended it.
    pub code: i32,
    /// Stdout, as text.
    pub out: String,
    /// Stderr, as text.
    pub err: String,
}

/// A row of `report_submissions`, as far as tests look at it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Submission {
    pub app_id: String,
    pub mcc: String,
    pub state: String,
    pub attempts: i32,
    pub provider_status: Option<String>,
    pub reason: Option<String>,
}

pub struct TestApp {
    pub pool: PgPool,
    pub provider: FakeProvider,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub db_url: String,
    pub config: TestConfig,
}

/// The URL of the database behind `pool`: the server of DATABASE_URL, the test's database.
fn url_of(pool: &PgPool) -> String {
    let master = std::env::var("DATABASE_URL").expect("DATABASE_URL (see .cargo/config.toml)");
    let mut url = reqwest::Url::parse(&master).expect("DATABASE_URL is a URL");
    let db = pool
        .connect_options()
        .get_database()
        .expect("a test database")
        .to_owned();
    url.set_path(&format!("/{db}"));
    url.to_string()
}

impl TestApp {
    pub async fn new(pool: PgPool) -> Self {
        Self::with(pool, TestConfig::default()).await
    }

    pub async fn with(pool: PgPool, config: TestConfig) -> Self {
        let url = url_of(&pool);
        Self::on(pool, url, config).await
    }

    /// On a database of another server (a drill's own), reached at `db_url`.
    pub async fn on(pool: PgPool, db_url: String, config: TestConfig) -> Self {
        let provider = FakeProvider::start(API_KEY, API_SECRET).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let app = Self {
            db_url,
            pool,
            provider,
            config_path: dir.path().join("config.toml"),
            dir,
            config,
        };
        let secret = app.dir.path().join("api_secret");
        std::fs::write(&secret, format!("{API_SECRET}\n")).unwrap();
        // As an operator would: the daemon warns about a secret others can read.
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        for account in &app.config.accounts {
            app.provider
                .add_account(account.api_key, account.api_secret, &account.apps);
            app.write_account_secret(account.name, account.api_secret);
        }
        app.write_config(&app.config.clone());
        app
    }

    /// Writes the secret of account `name` in its file (`api_secret_<name>`, mode 0600), as
    /// an operator would: a new one is read at the next reload.
    pub fn write_account_secret(&self, name: &str, secret: &str) {
        let path = self.dir.path().join(format!("api_secret_{name}"));
        std::fs::write(&path, format!("{secret}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }

    /// The `[provider]` keys and `[[accounts]]` of `c`: the unnamed account of the fake's
    /// own key, or the named ones, each secret in its file.
    fn accounts_text(&self, c: &TestConfig) -> (String, String) {
        if c.accounts.is_empty() {
            let secret = self.dir.path().join("api_secret").display().to_string();
            return (
                format!("api_key = {API_KEY:?}\napi_secret_file = {secret:?}\n"),
                String::new(),
            );
        }
        let entries = c
            .accounts
            .iter()
            .map(|a| {
                let secret = self.dir.path().join(format!("api_secret_{}", a.name));
                format!(
                    "[[accounts]]\nname = {:?}\napi_key = {:?}\napi_secret_file = {:?}\napps = {:?}\n",
                    a.name,
                    a.api_key,
                    secret.display().to_string(),
                    a.apps
                )
            })
            .collect();
        (String::new(), entries)
    }

    /// Writes the config file from `c` (the file the binary and `settings()` read).
    pub fn write_config(&self, c: &TestConfig) {
        std::fs::write(&self.config_path, self.config_text(c, &self.db_url)).unwrap();
    }

    /// Writes the config of another instance, `<name>.toml` beside the main one: `c`, with
    /// the database reached at `db_url` (a proxy in front of it, say). Returns its path.
    pub fn instance_config(&self, name: &str, c: &TestConfig, db_url: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, self.config_text(c, db_url)).unwrap();
        path
    }

    /// The test database's URL with its host and port replaced by `addr` (a proxy).
    pub fn db_url_via(&self, addr: std::net::SocketAddr) -> String {
        let mut url = reqwest::Url::parse(&self.db_url).expect("the test database URL");
        url.set_ip_host(addr.ip()).unwrap();
        url.set_port(Some(addr.port())).unwrap();
        url.to_string()
    }

    fn config_text(&self, c: &TestConfig, db_url: &str) -> String {
        let query = c
            .query
            .as_ref()
            .map(|q| format!("query = {q:?}\n"))
            .unwrap_or_default();
        let mut retries = String::new();
        if let Some(n) = c.max_attempts {
            retries.push_str(&format!("max_attempts = {n}\n"));
        }
        if let Some(d) = &c.retry_deadline {
            retries.push_str(&format!("retry_deadline = {d:?}\n"));
        }
        if let Some(c) = &c.concurrency {
            let value = if c.parse::<usize>().is_ok() {
                c.clone()
            } else {
                format!("{c:?}")
            };
            retries.push_str(&format!("concurrency = {value}\n"));
        }
        let (keys, accounts) = self.accounts_text(c);
        format!(
            "[provider]\nbase_url = {base:?}\n{keys}\
             request_timeout = {rt:?}\nmax_in_flight = {mif}\n{retries}retry_backoff = {rb:?}\n\
             [database]\nurl = {db:?}\n{database}\
             [source]\nwindow = {w:?}\nmin_cardinal = {mc}\napps = {apps:?}\n{query}\
             [schedule]\ncron = {cron:?}\ntimezone = {tz:?}\n{accounts}",
            base = c.base_url.as_ref().unwrap_or(&self.provider.base_url),
            rt = c.request_timeout,
            mif = c.max_in_flight,
            rb = c.retry_backoff,
            db = db_url,
            database = c.database_extra,
            w = c.window,
            mc = c.min_cardinal,
            apps = c.apps,
            cron = c.cron,
            tz = c.timezone,
        )
    }

    /// The settings of the config file alone: the test process's own environment (DATABASE_URL
    /// names the server, not this test's database) must not override them.
    pub fn settings(&self) -> Settings {
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        config::from_toml(&text, &self.config_path, &|_| None).expect("the test config is valid")
    }

    pub fn ctx(&self) -> Context {
        Context::new(self.settings(), self.pool.clone(), "test:1".into()).unwrap()
    }

    /// Runs a sender over the whole queue, as a daemon would, until nothing is pending.
    pub async fn drain_queue(&self) {
        let stop = CancellationToken::new();
        let sender = tokio::spawn(sender::work(self.ctx(), Scope::All, stop.clone()));
        eventually(Duration::from_secs(30), "the queue drained", || async {
            self.submissions_in("pending").await == 0
        })
        .await;
        stop.cancel();
        sender.await.unwrap().unwrap();
    }

    pub async fn seed(
        &self,
        app: &str,
        mcc: i32,
        bucket: DateTime<Utc>,
        sent: i64,
        backfilled: i64,
    ) {
        sqlx::query(
            "INSERT INTO otp_counts (app_id, mcc, bucket_start, sent, backfilled) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(app)
        .bind(mcc)
        .bind(bucket)
        .bind(sent)
        .bind(backfilled)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A scheduled run of `tick` with a one-day window, as an earlier instance (or release)
    /// `instance` claimed it: finished at `finished_at`, or still open. Returns its id.
    pub async fn scheduled_run(
        &self,
        tick: DateTime<Utc>,
        instance: &str,
        finished_at: Option<DateTime<Utc>>,
    ) -> i64 {
        sqlx::query_scalar(
            "INSERT INTO report_runs (scheduled_for, trigger, window_start, window_end, instance, \
                 finished_at) \
             VALUES ($1, 'schedule', $1 - interval '1 day', $1, $2, $3) RETURNING id",
        )
        .bind(tick)
        .bind(instance)
        .bind(finished_at)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// One pair (mcc 460, 10 codes sent, 4 typed back) half an hour ago: inside the window of
    /// every tick from now on for a day.
    pub async fn seed_recent(&self, app: &str) {
        let bucket = Utc::now() - chrono::Duration::minutes(30);
        self.seed(app, 460, bucket, 10, 4).await;
    }

    /// The binary with `--config` set and an environment that cannot override the file.
    pub fn command(&self, args: &[&str]) -> Command {
        command_with(&self.config_path, args)
    }

    /// Runs the binary to completion.
    pub async fn run(&self, args: &[&str]) -> Output {
        let out = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("the command finishes within 60 s")
            .expect("the binary runs");
        Output {
            code: out.status.code().unwrap_or(-1),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Every submission, by pair and tick.
    pub async fn submissions(&self) -> Vec<Submission> {
        sqlx::query_as(
            "SELECT app_id, mcc, state, attempts, provider_status, reason FROM report_submissions ORDER BY app_id, mcc, scheduled_for",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    /// How many submissions are in `state` (`pending`, `succeeded`, …).
    pub async fn submissions_in(&self, state: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM report_submissions WHERE state = $1")
            .bind(state)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// How many runs are not closed yet (a submission of theirs has no final state).
    pub async fn open_runs(&self) -> i64 {
        self.count("SELECT count(*) FROM report_runs WHERE finished_at IS NULL")
            .await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// The one text value `sql` selects.
    pub async fn count_text(&self, sql: &str) -> String {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_backfill-reporter");

/// The binary with `--config config` and an environment that cannot override the file.
pub fn command_with(config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = isolated(BIN);
    cmd.arg("--config").arg(config).args(args);
    cmd
}

/// Makes `cmd` read a wall clock `offset` off the real one ("+2m", "-120s"), as on a host whose
/// clock is wrong, with libfaketime (Debian's `faketime`, which `scripts/test-db` installs).
/// Its boot and monotonic clocks are left alone: only the wall clock is wrong on such a host.
pub fn skew_clock(cmd: &mut Command, offset: &str) {
    let lib = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib",
    ]
    .iter()
    .map(|d| std::path::Path::new(d).join("faketime/libfaketimeMT.so.1"))
    .find(|p| p.exists())
    .expect("libfaketime is not installed: run scripts/test-db (or apt-get install faketime)");
    cmd.env("LD_PRELOAD", lib)
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_DONT_RESET", "1");
}

/// `program` with an environment that cannot override a config file (the test process's
/// DATABASE_URL, credentials, systemd's sockets), RUST_LOG at info, no stdin, killed when
/// dropped.
pub fn isolated(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for var in [
        "DATABASE_URL",
        "BACKFILL_REPORTER_API_KEY",
        "BACKFILL_REPORTER_API_SECRET",
        "BACKFILL_REPORTER_CONFIG",
        "CREDENTIALS_DIRECTORY",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A daemon process (`run`) with its stderr collected line by line.
pub struct Daemon {
    pub child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
    /// Stdout, read to its end, when [`Daemon::spawn_keeping_stdout`] started it.
    stdout: Option<tokio::task::JoinHandle<String>>,
}

impl Daemon {
    pub fn start(app: &TestApp) -> Self {
        Self::start_with(app, &[])
    }

    /// With extra environment variables (`CREDENTIALS_DIRECTORY`, say).
    pub fn start_with(app: &TestApp, env: &[(&str, &std::path::Path)]) -> Self {
        let mut command = app.command(&["run"]);
        for (name, value) in env {
            command.env(name, value);
        }
        Self::spawn(command)
    }

    /// Starts `command` (the binary, with `run` or `run --once`), its stderr collected.
    pub fn spawn(command: Command) -> Self {
        Self::spawn_piped(command, false)
    }

    /// The same, keeping stdout too: for `run --once`, which prints its summary there.
    pub fn spawn_keeping_stdout(command: Command) -> Self {
        Self::spawn_piped(command, true)
    }

    fn spawn_piped(mut command: Command, keep_stdout: bool) -> Self {
        use tokio::io::AsyncReadExt;
        let mut child = command
            .stdout(if keep_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("the daemon starts");
        let stdout = child.stdout.take().map(|mut out| {
            tokio::spawn(async move {
                let mut text = String::new();
                let _ = out.read_to_string(&mut text).await;
                text
            })
        });
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            log,
            reader,
            stdout,
        }
    }

    /// The exit code, stdout (empty unless kept) and the whole log, once the process has
    /// ended by itself within `limit`.
    pub async fn finished(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("the process ends by itself")
            .unwrap();
        let _ = self.reader.await;
        let stdout = match self.stdout {
            Some(out) => out.await.unwrap(),
            None => String::new(),
        };
        let log = self.log.lock().unwrap().clone();
        (status.code(), stdout, log)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        eventually(limit, &format!("log line {needle:?}"), || async {
            self.log().contains(needle)
        })
        .await;
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL, and the log up to then.
    pub async fn kill(mut self) -> String {
        self.child.kill().await.unwrap();
        let _ = self.reader.await;
        self.log.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit code (within 30 s) and the whole log.
    pub async fn stop(mut self) -> Stopped {
        self.signal("TERM").await;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the daemon exits within 30 s of SIGTERM")
            .unwrap();
        // The reader ends when the process's stderr closes: the log is complete.
        let _ = self.reader.await;
        let log = self.log.lock().unwrap().clone();
        Stopped {
            code: status.code().unwrap_or(-1),
            log,
        }
    }
}

/// How a daemon ended: its exit code (-1 when killed by a signal) and its whole log.
#[derive(Debug)]
pub struct Stopped {
    pub code: i32,
    pub log: String,
}

/// Polls `check` every 100 ms until it holds or `limit` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}
