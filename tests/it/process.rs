//! The process as the kernel sees it: not dumpable (no core dump, no ptrace by its own UID, so
//! no secret read out of its memory), and named by uname(2) even where /proc/sys is hidden.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sqlx::PgPool;

use crate::fake_provider::{FakeProvider, Scripted};
use crate::helpers::{eventually, isolated, TestApp, API_KEY, API_SECRET, BIN};

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// Whether `path` and every directory above it let others in.
fn others_can_run(path: &Path) -> bool {
    path.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
        && std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o005 == 0o005)
}

#[tokio::test]
async fn the_process_makes_itself_non_dumpable_at_start() {
    // A dumpable process's /proc/PID files belong to its UID; a non-dumpable one's to root.
    // As root, the binary runs under another UID so that the two can be told apart.
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    fake.script_all(vec![Scripted::Hang]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[provider]\nbase_url = {:?}\napi_key = {API_KEY:?}\nrequest_timeout = \"30s\"\n",
            fake.base_url
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_root = my_uid() == 0;
    let run_as: u32 = if as_root { 54_321 } else { my_uid() };
    let bin = if !as_root || others_can_run(Path::new(BIN)) {
        PathBuf::from(BIN)
    } else {
        let copy = dir.path().join("backfill-reporter");
        std::fs::copy(BIN, &copy).unwrap();
        copy
    };
    let mut cmd = isolated(bin);
    cmd.arg("--config")
        .arg(&config)
        .args(["record", "1234566"])
        .env("BACKFILL_REPORTER_API_SECRET", API_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if as_root {
        cmd.uid(run_as).gid(run_as);
    }
    let mut child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();

    // Once the request has arrived, the process is well past its start.
    eventually(Duration::from_secs(20), "the record request", || async {
        !fake.received().is_empty()
    })
    .await;
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .unwrap()
        .uid();
    child.kill().await.unwrap();

    assert_eq!(
        owner, 0,
        "/proc/{pid} belongs to uid {owner} (the process's own {run_as}): it is dumpable"
    );
}

#[sqlx::test]
async fn the_instance_name_comes_from_uname_where_proc_sys_is_hidden(pool: PgPool) {
    // The unit's ProcSubset=pid hides /proc/sys; a private mount namespace with a tmpfs over
    // it does the same here (root only).
    let can_hide = tokio::process::Command::new("unshare")
        .args(["--mount", "sh", "-c", "mount -t tmpfs none /proc/sys"])
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if !can_hide {
        eprintln!(
            "\n*** SKIPPED the_instance_name_comes_from_uname_where_proc_sys_is_hidden: \
             unshare --mount needs root ***\n"
        );
        return;
    }
    let app = TestApp::new(pool).await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let mut cmd = isolated("unshare");
    cmd.args([
        "--mount",
        "sh",
        "-c",
        "mount -t tmpfs none /proc/sys && test ! -e /proc/sys/kernel/hostname && exec \"$@\"",
        "sh",
        BIN,
        "--config",
    ])
    .arg(&app.config_path)
    .args(["run", "--once"]);

    let out = cmd.output().await.unwrap();

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let instance: String = sqlx::query_scalar("SELECT instance FROM report_runs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        instance.starts_with(&format!("{hostname}:")),
        "{instance} is not {hostname}:PID"
    );
}
