//! A real PgBouncer (Debian's package, which `scripts/test-db` installs) in front of the test
//! server: its own process on a free port, with a stock configuration but for the few lines
//! that must be set (where to listen, the server, the pool mode, the login), killed when
//! dropped. Also used by the queue benchmark (`benches/support`), so it needs nothing of the
//! test binary.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgBouncer {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl PgBouncer {
    /// `pool_mode` is `transaction` or `session`.
    pub async fn start(pool_mode: &str) -> Self {
        Self::start_with(pool_mode, "").await
    }

    /// With `extra` lines in its `[pgbouncer]` section.
    pub async fn start_with(pool_mode: &str, extra: &str) -> Self {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "pgbouncer is not installed: run scripts/test-db (or apt-get install pgbouncer)",
            );
        // A port taken between the probe and pgbouncer's bind: try another.
        for _ in 0..3 {
            let dir = config_dir(pool_mode);
            let port = free_port();
            write_ini(dir.path(), pool_mode, port, extra);
            let log = std::fs::File::create(dir.path().join("pgbouncer.log")).unwrap();
            let child = Command::new(program)
                .arg(dir.path().join("pgbouncer.ini"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("pgbouncer starts");
            let mut bouncer = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                dir,
            };
            if bouncer.wait_until_listening().await {
                return bouncer;
            }
        }
        panic!("pgbouncer did not start on three free ports");
    }

    /// Whether it accepts connections (within 10 s); false when it exited first.
    async fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return true;
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer does not listen: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The login of DATABASE_URL (the tests' role), as PgBouncer's auth file: it checks clients
/// with it (SCRAM) and logs in to the server with it.
fn config_dir(pool_mode: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("pgbouncer-{pool_mode}-"))
        .tempdir()
        .unwrap();
    let server = server_url();
    let mut users = std::fs::File::create(dir.path().join("userlist.txt")).unwrap();
    writeln!(
        users,
        "{:?} {:?}",
        server.username(),
        server.password().unwrap_or("")
    )
    .unwrap();
    // Run as root, PgBouncer changes to `nobody` (it refuses to run as root): it must be able
    // to read its files then.
    for path in [dir.path(), &dir.path().join("userlist.txt")] {
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    dir
}

fn server_url() -> reqwest::Url {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        "postgres://backfill_test:backfill_test@127.0.0.1:5432/backfill_test".into()
    });
    reqwest::Url::parse(&url).expect("DATABASE_URL is a URL")
}

fn write_ini(dir: &Path, pool_mode: &str, port: u16, extra: &str) {
    let server = server_url();
    let user = if rustix::process::geteuid().is_root() {
        "user = nobody\n"
    } else {
        ""
    };
    let ini = format!(
        "[databases]\n* = host={host} port={server_port}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {auth}\npool_mode = {pool_mode}\n{user}{extra}",
        host = server.host_str().unwrap_or("127.0.0.1"),
        server_port = server.port().unwrap_or(5432),
        auth = dir.join("userlist.txt").display(),
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
    std::fs::set_permissions(
        dir.join("pgbouncer.ini"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
}
