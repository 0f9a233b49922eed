//! What each subcommand does, and what it prints. The exit code is decided here for the
//! outcomes a command expects (a provider error, a failed pair); any `Err` is a config, usage
//! or database problem, which `main` turns into [`EXIT_CONFIG`] or, when the database could not
//! be reached, [`EXIT_UNREACHABLE`].

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use comfy_table::{presets, Table};

use crate::app::cli::{Cli, Command};
use crate::config::{self, Account, Settings};
use crate::domain::excerpt;
use crate::domain::run::Trigger;
use crate::domain::{AccountName, AppId, Mcc};
use crate::provider::record::render_record;
use crate::provider::{Class, ProviderClient};
use crate::queue::runs::{self, HistoryFilter};
use crate::queue::tick::{self, Preview, Verdict};
use crate::{app::daemon, app::shutdown, db, queue::source};

/// Exit code for a provider error or a pair that failed or was invalid.
pub const EXIT_FAILED: u8 = 1;
/// Exit code for a config or usage error: a person must change something.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code when the database could not be reached: retrying later may work.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Rows of its own submissions that `run --once` prints.
const ONCE_TABLE_ROWS: i64 = 50;

/// `print!` for the commands, through [`write_out`]; `?` after it.
macro_rules! out {
    ($($arg:tt)*) => {
        write_out(format_args!($($arg)*))
    };
}

/// `println!` for the commands, through [`write_out`]; `?` after it.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to standard output. Once its reader has gone (`run --once --dry-run | head -1`), it
/// writes nothing more and says nothing, as grep and rg do, and the command ends with its own
/// exit code; `println!` would panic there (exit 101), since Rust ignores SIGPIPE. Any other
/// write error (a full disk) ends the command.
fn write_out(args: std::fmt::Arguments) -> anyhow::Result<()> {
    use std::io::Write;
    static READER_GONE: AtomicBool = AtomicBool::new(false);
    if READER_GONE.load(Ordering::Relaxed) {
        return Ok(());
    }
    match std::io::stdout().lock().write_fmt(args) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            READER_GONE.store(true, Ordering::Relaxed);
            Ok(())
        }
        written => written.context("writing to standard output"),
    }
}

/// The exit code for an error that ended a command.
pub fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    ExitCode::from(if db::is_unreachable(e) {
        EXIT_UNREACHABLE
    } else {
        EXIT_CONFIG
    })
}

/// Runs the command. An error that shows a transaction pooler the config does not mention is
/// returned as that, alone: whatever statement met it first is not what to fix.
pub async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    dispatch(cli).await.map_err(db::explain)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = config::resolve_path(cli.config.as_deref());
    let settings = config::load(&path)?;
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Run { once: false, .. } => {
            daemon::run_until_signalled(path, settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            once: true,
            dry_run: true,
            ..
        } => dry_run(&settings).await,
        Command::Run {
            once: true,
            dry_run: false,
            deadline,
        } => run_once(settings, deadline).await,
        Command::Record {
            order_id,
            app_id,
            account,
            json,
        } => {
            let account = record_account(&settings, app_id.as_deref(), account.as_deref())?;
            record(&settings, account, &order_id, app_id.as_deref(), json).await
        }
        Command::Migrate => migrate(&settings).await,
        Command::Check { offline } => check(&settings, offline).await,
        Command::History {
            limit,
            app_id,
            mcc,
            state,
            account,
        } => {
            let filter = HistoryFilter {
                limit,
                app_id,
                mcc,
                state,
                run_id: None,
                account,
            };
            history(&settings, &filter).await
        }
        Command::Status {
            app_id,
            account,
            json,
        } => status(&settings, (app_id.as_deref(), account.as_deref()), json).await,
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN)
        .set_header(header.to_vec());
    t
}

async fn dry_run(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&settings.database).await?;
    let tick = runs::now_tick(&pool).await?;
    let plan = tick::preview(&pool, settings, tick).await?;
    print_plan(&plan)?;
    let invalid = plan
        .pairs
        .iter()
        .any(|(_, verdict, _)| matches!(verdict, Verdict::Invalid(_)));
    Ok(if invalid {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_plan(plan: &Preview) -> anyhow::Result<()> {
    outln!(
        "dry run for window [{}, {}); nothing is sent or written",
        plan.window.0.to_rfc3339(),
        plan.window.1.to_rfc3339()
    )?;
    let named = plan.pairs.iter().any(|(_, _, account)| account.is_some());
    let mut header = vec![
        "app",
        "mcc",
        "backfilled",
        "sent",
        "rate",
        "callbackTime",
        "action",
    ];
    if named {
        header.insert(1, "account");
    }
    let mut t = table(&header);
    for (row, verdict, account) in &plan.pairs {
        let action = match verdict {
            Verdict::Send(_) => "send".to_owned(),
            Verdict::Skip(why) => format!("skip: {}", shown_text(why)),
            Verdict::Invalid(why) => format!("invalid: {}", shown_text(why)),
        };
        let mut cells = vec![
            shown(&row.app_id),
            shown(&row.mcc),
            shown(&row.backfill_number),
            shown(&row.cardinal_number),
            verdict
                .rate()
                .map_or_else(|| "-".to_owned(), |r| r.to_string()),
            plan.callback_time.clone(),
            action,
        ];
        if named {
            cells.insert(1, shown(account));
        }
        t.add_row(cells);
    }
    outln!("{t}")
}

async fn run_once(settings: Settings, deadline: std::time::Duration) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&settings.database).await?;
    db::migrate(&pool).await?;
    let ctx = crate::queue::context::Context::new(settings, pool, daemon::instance_name())?;
    let stop = shutdown::on_signal();
    let tick = runs::now_tick(&ctx.pool).await?;
    let report = tick::run_within(&ctx, tick, Trigger::Once, &stop, Some(deadline))
        .await?
        .context("an ad-hoc run is never claimed by another instance")?;
    crate::views::alarm::wait_for_notifications(std::time::Duration::from_secs(10)).await;
    let t = &report.tally;
    outln!(
        "run {} at {}: {t}, {} left pending",
        report.run_id,
        tick.to_rfc3339(),
        t.pending
    )?;
    if t.pending > 0 {
        eprintln!(
            "interrupted: {} pairs stay pending; a running daemon (or the next run) sends them before their deadline",
            t.pending
        );
    }
    // A screenful, problems first: a table of 240,000 rows helps nobody (and would take more
    // memory than the run).
    let filter = HistoryFilter {
        limit: ONCE_TABLE_ROWS,
        run_id: Some(report.run_id),
        ..HistoryFilter::default()
    };
    print_history(runs::history(&ctx.pool, &filter).await?)?;
    if t.pairs > ONCE_TABLE_ROWS {
        outln!(
            "(the first {ONCE_TABLE_ROWS} of {} rows, failed and invalid first; `backfill-reporter history --limit {}` shows them all)",
            t.pairs, t.pairs
        )?;
    }
    Ok(if report.all_good() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

async fn migrate(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pool = db::connect(&settings.database).await?;
    let applied = db::migrate(&pool).await?;
    if applied.is_empty() {
        outln!(
            "database is up to date ({} migrations)",
            db::MIGRATOR.iter().count()
        )?;
    }
    for m in applied {
        outln!("applied {m}")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(settings: &Settings, offline: bool) -> anyhow::Result<ExitCode> {
    outln!("config {}: valid", settings.path.display())?;
    check_accounts(settings)?;
    if offline {
        // What ExecStartPre runs: a bad config never starts, but a database outage cannot stop
        // the start (the daemon waits it out).
        outln!("database and source not checked (--offline)")?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = db::connect_options(&settings.database)?;
    let pool = db::connect(&settings.database).await?;
    outln!("database {}: connected", db::describe(&options))?;
    match (settings.database.pooler, pool.check_direct().await?) {
        (_, Some(direct)) => outln!("database.direct_url {direct}: connected")?,
        (config::Pooler::Transaction, None) => outln!(
            "through a transaction pooler without database.direct_url: migrations go through \
             it, and the queue is polled every 2 s instead of woken by NOTIFY"
        )?,
        _ => {}
    }
    // Only the default source can be waiting for its table: a custom query is checked as it is.
    let unmigrated =
        settings.source.query.is_none() && source::default_table_missing(&pool).await?;
    if unmigrated {
        // `run` applies the migrations that create it; a first start must not be refused.
        outln!("source otp_counts: not created yet; `run` or `migrate` creates it")?;
    } else {
        source::check_columns(&pool, &settings.source).await?;
        let which = if settings.source.query.is_some() {
            "query"
        } else {
            "otp_counts"
        };
        outln!("source {which}: columns app_id, mcc, backfill_number, cardinal_number present")?;
    }
    let tz = settings.schedule.timezone;
    outln!(
        "schedule {:?} in {tz}, next five fire times:",
        settings.schedule.cron.to_string()
    )?;
    for t in settings.schedule.cron.upcoming(chrono::Utc::now(), tz, 5) {
        outln!("  {}", t.to_rfc3339())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Every account's secret is there and its client builds: one line per account.
fn check_accounts(settings: &Settings) -> anyhow::Result<()> {
    crate::provider::Clients::new(&settings.provider)?;
    let base = &settings.provider.base_url;
    for account in settings.provider.accounts.iter() {
        let key = shown_text(&account.api_key);
        match &account.name {
            None => outln!("provider {base} with api key {key}: secret set")?,
            Some(name) => outln!(
                "provider {base} as account {name} with api key {key}: secret set, {}",
                crate::queue::sender::count(account.apps.len() as u32, "app")
            )?,
        }
    }
    Ok(())
}

async fn history(settings: &Settings, filter: &HistoryFilter) -> anyhow::Result<ExitCode> {
    if let Some(app) = &filter.app_id {
        AppId::parse(app).map_err(|e| anyhow::anyhow!("--app-id: {e}"))?;
    }
    if let Some(mcc) = &filter.mcc {
        Mcc::parse(mcc).map_err(|e| anyhow::anyhow!("--mcc: {e}"))?;
    }
    if let Some(account) = &filter.account {
        AccountName::parse(account).map_err(|e| anyhow::anyhow!("--account: {e}"))?;
    }
    let pool = db::connect(&settings.database).await?;
    print_history(runs::history(&pool, filter).await?)?;
    Ok(ExitCode::SUCCESS)
}

/// The table of `history` and `run --once`; with an account column when any row has an
/// account (a deployment without `[[accounts]]` has none).
fn print_history(rows: Vec<runs::HistoryRow>) -> anyhow::Result<()> {
    let named = rows.iter().any(|r| r.account.is_some());
    let mut header = vec![
        "tick (UTC)",
        "callbackTime sent",
        "app",
        "mcc",
        "backfilled",
        "sent",
        "rate",
        "state",
        "tries",
        "status",
        "http",
        "detail",
    ];
    if named {
        header.insert(2, "account");
    }
    let mut t = table(&header);
    for r in rows {
        let mut cells = vec![
            r.scheduled_for.format("%Y-%m-%d %H:%M:%S").to_string(),
            shown_text(&r.callback_time),
            r.app_id
                .as_deref()
                .map_or_else(|| "(null)".into(), shown_text),
            r.mcc.as_deref().map_or_else(|| "(null)".into(), shown_text),
            shown(&r.backfill_number),
            shown(&r.cardinal_number),
            r.rate.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            r.state.as_str().to_owned(),
            r.attempts.to_string(),
            shown(&r.provider_status.as_ref().map(ToString::to_string)),
            r.http_status
                .map_or_else(|| "-".to_owned(), |h| h.to_string()),
            shown(&r.detail),
        ];
        if named {
            cells.insert(2, shown(&r.account));
        }
        t.add_row(cells);
    }
    outln!("{t}")
}

/// The account `record` asks as: `--account`, else the account of `--app-id`, else the only
/// account. With several and neither flag, the operator must say which: a lookup signed by
/// the wrong account would only say the order is unknown.
fn record_account<'a>(
    settings: &'a Settings,
    app_id: Option<&str>,
    account: Option<&str>,
) -> anyhow::Result<&'a Account> {
    let accounts = &settings.provider.accounts;
    if let Some(name) = account {
        let name = AccountName::parse(name).map_err(|e| anyhow::anyhow!("--account: {e}"))?;
        return accounts.get(Some(name.as_str())).with_context(|| {
            format!(
                "--account {name}: no such account in the config (accounts: {})",
                accounts.names()
            )
        });
    }
    if let Some(app) = app_id {
        AppId::parse(app).map_err(|e| anyhow::anyhow!("--app-id: {e}"))?;
        if accounts.are_named() {
            return accounts.of_app(app).with_context(|| {
                format!(
                    "--app-id {app} is in no account's apps: say which account to ask as with \
                     --account NAME ({})",
                    accounts.names()
                )
            });
        }
    }
    let mut all = accounts.iter();
    match (all.next(), all.next()) {
        (Some(only), None) => Ok(only),
        _ => anyhow::bail!(
            "several provider accounts are configured: say which to ask as with --account NAME \
             ({}), or give --app-id",
            accounts.names()
        ),
    }
}

async fn record(
    settings: &Settings,
    account: &Account,
    order_id: &str,
    app_id: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if order_id.is_empty() || order_id.chars().count() > 64 {
        anyhow::bail!("ORDER_ID must be 1 to 64 characters");
    }
    if let Some(app) = app_id {
        AppId::parse(app).map_err(|e| anyhow::anyhow!("--app-id: {e}"))?;
    }
    let client = ProviderClient::new(&settings.provider, account)?;
    let ex = client.lookup_record(order_id, app_id).await;
    if json {
        // As received, before anything can fail on it: the operator debugging a delivery must
        // see what came back even when it is an error or not what the page documents.
        if let Some(body) = &ex.body {
            outln!("{}", for_terminal(body))?;
        }
    }
    if ex.class != Class::Success {
        eprintln!(
            "provider error: status {}, reason {}{}",
            ex.provider_status.as_deref().unwrap_or("-"),
            ex.reason.as_deref().unwrap_or("-"),
            ex.http_status
                .map(|h| format!(", HTTP {h}"))
                .unwrap_or_default()
        );
        if let Some(e) = &ex.error {
            eprintln!("{e}");
        }
        return Ok(ExitCode::from(EXIT_FAILED));
    }
    if !json {
        out!("{}", render_record(&ex.data.unwrap_or_default()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A provider's body as received, but safe for a terminal: JSON through
/// [`excerpt::clean_json`] (the same value, so `jq` reads what the provider sent), anything
/// else line by line through [`shown_text`]; without its final newline.
fn for_terminal(body: &str) -> String {
    let body = body.strip_suffix('\n').unwrap_or(body);
    if serde_json::from_str::<serde::de::IgnoredAny>(body).is_ok() {
        excerpt::clean_json(body)
    } else {
        body.lines().map(shown_text).collect::<Vec<_>>().join("\n")
    }
}

async fn status(
    settings: &Settings,
    (app_id, account): (Option<&str>, Option<&str>),
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    if let Some(app) = app_id {
        AppId::parse(app).map_err(|e| anyhow::anyhow!("--app-id: {e}"))?;
    }
    if let Some(account) = account {
        AccountName::parse(account).map_err(|e| anyhow::anyhow!("--account: {e}"))?;
    }
    let pool = db::connect(&settings.database).await?;
    let rows = crate::views::status::rows(&pool, app_id, account).await?;
    if json {
        outln!("{}", crate::views::status::render_json(&rows))?;
    } else {
        let color = crate::views::status::use_color(
            std::io::stdout().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        );
        if let Some(span) = crate::views::status::last_tick(&pool, &settings.schedule).await? {
            outln!("{span}")?;
        }
        out!(
            "{}",
            crate::views::status::render_table(&rows, &settings.alarm, color)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The most characters of one text that a command prints: a provider's reason is capped at
/// 500 and an error at 1,000 when stored, a source's value at nothing.
const SHOWN_CHARS: usize = 1000;

/// Text from outside (the provider, the source, the database: an app id can hold an ESC or a
/// right-to-left override) for the terminal, [`excerpt::clean`]ed so that it cannot drive it.
fn shown_text(text: &str) -> String {
    excerpt::clean(text, SHOWN_CHARS)
}

/// [`shown_text`], or "-" where there is none.
fn shown(text: &Option<String>) -> String {
    text.as_deref().map_or_else(|| "-".to_owned(), shown_text)
}
