//! The man page and shell completions that the Debian package ships (`dist/`) are generated
//! from the clap definitions. This test regenerates them and fails when a committed file is
//! stale, having rewritten it: review the diff and commit it.

use std::path::{Path, PathBuf};

use backfill_reporter::app::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;

/// Every file under `dist/` that comes from the clap definitions, with its content now: a man
/// page for the command and one per subcommand (as `man backfill-reporter-status`), and the
/// completions for bash, zsh and fish.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let pages = tempfile::tempdir().unwrap();
    clap_mangen::generate_to(Cli::command(), pages.path()).expect("rendering the man pages");
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(pages.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                root.join("man").join(e.file_name()),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    for (shell, name) in [
        (Shell::Bash, "backfill-reporter.bash"),
        (Shell::Zsh, "_backfill-reporter"),
        (Shell::Fish, "backfill-reporter.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "backfill-reporter", &mut buf);
        out.push((root.join("completions").join(name), buf));
    }
    out
}

fn committed() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let mut files = Vec::new();
    for dir in ["man", "completions"] {
        for e in std::fs::read_dir(root.join(dir)).into_iter().flatten() {
            files.push(e.unwrap().path());
        }
    }
    files
}

#[test]
fn the_packaged_man_pages_and_completions_match_the_clap_definitions() {
    let files = generated();
    let mut stale = Vec::new();
    for (path, content) in &files {
        if std::fs::read(path).ok().as_deref() != Some(&content[..]) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
            stale.push(path.display().to_string());
        }
    }
    for path in committed() {
        if !files.iter().any(|(p, _)| *p == path) {
            std::fs::remove_file(&path).unwrap();
            stale.push(format!("{} (removed)", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "regenerated from the clap definitions, review and commit: {stale:?}"
    );
}

#[test]
fn the_man_pages_document_every_subcommand_and_the_completions_offer_them() {
    let files = generated();
    let text = |name: &str| {
        let (_, content) = files
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .unwrap_or_else(|| panic!("{name} is generated"));
        String::from_utf8(content.clone()).unwrap()
    };
    let main = text("man/backfill-reporter.1");
    let bash = text("completions/backfill-reporter.bash");
    for sub in ["run", "record", "migrate", "check", "history", "status"] {
        assert!(
            main.contains(&format!("backfill\\-reporter\\-{sub}(1)")),
            "{sub}"
        );
        text(&format!("man/backfill-reporter-{sub}.1"));
        assert!(bash.contains(sub), "bash completion lacks {sub}");
    }
    assert!(
        main.contains("BACKFILL_REPORTER_CONFIG"),
        "environment variables are documented"
    );
    assert!(text("man/backfill-reporter-status.1").contains("\\-\\-json"));
}

#[test]
fn the_package_ships_the_dashboard_and_the_alert_rules_under_usr_share() {
    let manifest: toml::Value = toml::from_str(include_str!("../../Cargo.toml")).unwrap();
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .unwrap();
    let shipped = |source: &str| {
        assets.iter().find_map(|a| {
            let a = a.as_array().unwrap();
            (a[0].as_str() == Some(source)).then(|| a[1].as_str().unwrap().to_owned())
        })
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    for (source, target) in [
        (
            "dist/grafana/backfill-reporter.json",
            "usr/share/backfill-reporter/grafana/",
        ),
        (
            "dist/prometheus/backfill-reporter.rules.yml",
            "usr/share/backfill-reporter/prometheus/",
        ),
        (
            "dist/prometheus/backfill-reporter.rules.test.yml",
            "usr/share/backfill-reporter/prometheus/",
        ),
    ] {
        assert_eq!(shipped(source).as_deref(), Some(target), "{source}");
        assert!(root.join(source).is_file(), "{source} exists");
    }
}
