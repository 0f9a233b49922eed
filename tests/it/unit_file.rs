//! The shipped systemd unit: the settings the daemon's safety relies on, and its exposure
//! score.

const UNIT: &str = include_str!("../../systemd/backfill-reporter.service");

/// The values of `key=` in the unit, in order (commented lines excluded).
fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_allows_no_core_dump_and_its_watchdog_sends_no_core_dumping_signal() {
    assert_eq!(values("LimitCORE"), ["0"]);
    // signal(7): the signals whose default action is to dump core.
    let dumps_core = [
        "SIGABRT", "SIGQUIT", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGSYS", "SIGTRAP",
        "SIGXCPU", "SIGXFSZ", "SIGIOT", "6",
    ];
    let watchdog = values("WatchdogSignal");
    // Unset means systemd's default, SIGABRT.
    assert_eq!(
        watchdog.len(),
        1,
        "WatchdogSignal= must be set: {watchdog:?}"
    );
    assert!(!dumps_core.contains(&watchdog[0]), "{watchdog:?}");
    for kill in values("KillSignal") {
        assert!(!dumps_core.contains(&kill), "{kill}");
    }
}

#[test]
fn a_database_outage_cannot_fail_the_unit_and_the_stop_timeout_covers_the_drain() {
    let pre = values("ExecStartPre");
    assert!(
        pre.iter()
            .all(|c| !c.contains(" check") || c.contains("--offline")),
        "ExecStartPre must not need the database: {pre:?}"
    );
    let stop: u64 = values("TimeoutStopSec")[0]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    let drain = backfill_reporter::app::daemon::STOP_LIMIT.as_secs();
    assert!(
        stop >= drain + 2,
        "TimeoutStopSec={stop}s must cover the drain and last writes ({drain} s) and the exit"
    );
}

#[test]
fn the_unit_starts_after_the_clock_is_synchronised() {
    assert!(
        values("After")
            .iter()
            .any(|v| v.split_whitespace().any(|u| u == "time-sync.target")),
        "{:?}",
        values("After")
    );
}

#[test]
fn the_unit_scores_at_most_1_1_in_systemd_analyze_security() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/backfill-reporter.service"
    );
    let out = match std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", path])
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("\n*** SKIPPED the_unit_scores_at_most_1_1…: no systemd-analyze ({e}) ***\n");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for backfill-reporter.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 1.1, "exposure {score}");
}
