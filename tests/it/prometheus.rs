//! The Prometheus alert rules shipped in `dist/prometheus/`: valid for `promtool check rules`,
//! and passing their own unit tests (`promtool test rules`), which give each alert the series
//! that should fire it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `dist/prometheus/`, where the rules and their tests are.
pub fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/prometheus")
}

/// Runs promtool with `args` in the rules' folder; a missing promtool fails with the line
/// that installs it.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not be run ({e}): run scripts/test-db, or apt-get install prometheus (Debian's package has promtool)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (checked, check) = promtool(&["check", "rules", "backfill-reporter.rules.yml"]);
    let (tested, test) = promtool(&["test", "rules", "backfill-reporter.rules.test.yml"]);

    assert!(checked, "{check}");
    assert!(check.contains("SUCCESS: 7 rules found"), "{check}");
    assert!(tested, "{test}");
    assert!(test.contains("SUCCESS"), "{test}");
}

#[test]
fn every_alert_has_a_unit_test_and_readme_lists_it() {
    let rules = std::fs::read_to_string(rules_dir().join("backfill-reporter.rules.yml")).unwrap();
    let tests =
        std::fs::read_to_string(rules_dir().join("backfill-reporter.rules.test.yml")).unwrap();
    let readme = include_str!("../../README.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();

    assert_eq!(alerts.len(), 7, "{alerts:?}");
    for alert in alerts {
        let fired = tests
            .split("alertname: ")
            .skip(1)
            .filter(|t| t.starts_with(alert))
            .any(|t| t.contains("exp_annotations"));
        assert!(fired, "{alert}: no test in which it fires");
        assert!(
            readme.contains(&format!("`{alert}`")),
            "README lists {alert}"
        );
    }
}

/// Every `backfill_reporter_…` metric name the rules read.
pub fn metrics_the_rules_read() -> Vec<String> {
    let rules = std::fs::read_to_string(rules_dir().join("backfill-reporter.rules.yml")).unwrap();
    let mut names: Vec<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("backfill_reporter_"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}
