//! The database link over TLS, against a PostgreSQL of the test's own: `initdb` and `pg_ctl`
//! from the machine's binaries, on a free port in a temporary directory, with a certificate
//! signed by a CA the test makes (openssl). The shared server is never touched.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use backfill_reporter::config::DatabaseSettings;
use backfill_reporter::db;
use secrecy::SecretString;

use crate::fake_provider::FakeProvider;
use crate::helpers::{isolated, API_KEY, API_SECRET, BIN};

/// A PostgreSQL server with TLS on, stopped when dropped.
struct TlsServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// The postgres OS user's (uid, gid) when this process is root: initdb refuses root.
    owner: Option<(u32, u32)>,
}

impl TlsServer {
    /// Panics, with the line that installs them, when the machine has no PostgreSQL server
    /// binaries: the test must fail, not pass without having run.
    fn start(hostname: &str) -> Self {
        let bin = crate::chaos::server_binaries();
        let dir = tempfile::Builder::new()
            .prefix("bfr-tls-")
            .tempdir()
            .expect("tempdir");
        let owner = if rustix_free_is_root() {
            let (uid, gid) = postgres_user().expect("running as root needs the postgres OS user");
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            Some((uid, gid))
        } else {
            None
        };
        make_certificates(dir.path(), hostname, owner);
        let mut server = Self {
            dir,
            bin,
            port: 0,
            owner,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        std::fs::write(
            server.dir.path().join("data/pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        // A port taken between the probe and the start gets one more try on another.
        for attempt in 0..2 {
            server.port = free_port();
            let d = server.dir.path().display().to_string();
            let conf = format!(
                "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{d}'\n\
                 ssl = on\nssl_cert_file = '{d}/server.crt'\nssl_key_file = '{d}/server.key'\n\
                 fsync = off\nmax_connections = 20\n",
                port = server.port
            );
            std::fs::write(server.dir.path().join("data/extra.conf"), conf).unwrap();
            let main_conf = server.dir.path().join("data/postgresql.conf");
            let mut text = std::fs::read_to_string(&main_conf).unwrap();
            if !text.contains("include = 'extra.conf'") {
                text.push_str("\ninclude = 'extra.conf'\n");
                std::fs::write(&main_conf, text).unwrap();
            }
            let log = format!("{d}/server.log");
            let started = server.try_run(
                "pg_ctl",
                &["-D", &server.data(), "-l", &log, "-w", "-t", "30", "start"],
            );
            if started {
                return server;
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(attempt == 0, "pg_ctl start failed twice:\n{log}");
        }
        unreachable!()
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid).current_dir(self.dir.path());
        }
        cmd
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> bool {
        self.command(tool, args)
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{tool}: {e}"))
            .success()
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool, args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A database settings block for this server, as `host`, with `query` appended.
    fn settings(&self, host: &str, query: &str, ca_file: Option<PathBuf>) -> DatabaseSettings {
        DatabaseSettings {
            url: Some(SecretString::from(self.url(host, query))),
            pooler: backfill_reporter::config::Pooler::None,
            direct_url: None,
            max_connections: 2,
            statement_timeout: std::time::Duration::from_secs(60),
            keep: std::time::Duration::from_secs(86_400),
            ca_file,
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres{query}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.try_run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

fn rustix_free_is_root() -> bool {
    // The test process's own uid, from /proc (no extra crate for one number).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA, and a server certificate it signed for `localhost`, `hostname` and 127.0.0.1; the
/// key readable by the server's user only, as PostgreSQL demands.
fn make_certificates(dir: &Path, hostname: &str, owner: Option<(u32, u32)>) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/test-db installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=backfill-reporter test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "subjectAltName=DNS:localhost,DNS:{hostname},IP:127.0.0.1\n\
             basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    use std::os::unix::fs::PermissionsExt;
    for file in ["server.key", "server.crt"] {
        let path = dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
    }
}

/// This machine's name when it resolves to a loopback address only (Debian's /etc/hosts maps
/// it to 127.0.1.1): a host that the daemon must treat as remote, yet that reaches the test's
/// server.
async fn hostname_on_loopback() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()?
        .trim()
        .to_owned();
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((name.as_str(), 5432))
        .await
        .ok()?
        .map(|a| a.ip())
        .collect();
    (!addrs.is_empty() && addrs.iter().all(|ip| ip == &IpAddr::from([127, 0, 0, 1])))
        .then_some(name)
}

async fn ssl_in_use(settings: &DatabaseSettings) -> anyhow::Result<bool> {
    let pool = db::connect(settings).await?;
    let ssl = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    Ok(ssl)
}

#[tokio::test]
async fn postgres_over_tls_is_refused_without_the_ca_and_accepted_with_it() {
    let hostname = hostname_on_loopback().await;
    let server = TlsServer::start(hostname.as_deref().unwrap_or("localhost"));
    let ca = Some(server.ca());

    // verify-full written in the URL: the self-signed chain is refused without its CA…
    let refused = ssl_in_use(&server.settings("localhost", "?sslmode=verify-full", None))
        .await
        .unwrap_err();
    assert!(
        format!("{refused:#}")
            .to_lowercase()
            .contains("certificate"),
        "{refused:#}"
    );
    // …and accepted with it, from database.ca_file or from sslrootcert in the URL.
    let with_ca_file = server.settings("localhost", "?sslmode=verify-full", ca.clone());
    assert!(ssl_in_use(&with_ca_file).await.unwrap());
    let root_cert = format!("?sslmode=verify-full&sslrootcert={}", server.ca().display());
    assert!(ssl_in_use(&server.settings("localhost", &root_cert, None))
        .await
        .unwrap());

    // No sslmode in the URL and a host that is not local: verify-full all the same.
    match &hostname {
        Some(host) => {
            let refused = ssl_in_use(&server.settings(host, "", None))
                .await
                .unwrap_err();
            assert!(
                format!("{refused:#}").contains("sslmode=verify-full"),
                "{refused:#}"
            );
            assert!(ssl_in_use(&server.settings(host, "", ca.clone()))
                .await
                .unwrap());
            // The operator's own weaker choice in the URL is kept.
            assert!(ssl_in_use(&server.settings(host, "?sslmode=require", None))
                .await
                .unwrap());
        }
        None => eprintln!(
            "\n*** postgres_over_tls…: this machine's name does not resolve to 127.0.0.1 only; \
             the check of the verify-full default for a non-local host ran as a unit test only \
             (db::tests) ***\n"
        ),
    }

    // `check` says how the link is protected, and exits 2 when the certificate is refused.
    let fake = FakeProvider::start(API_KEY, API_SECRET).await;
    let host = hostname.clone().unwrap_or_else(|| "localhost".to_owned());
    let query = if hostname.is_some() {
        ""
    } else {
        "?sslmode=verify-full"
    };
    let config = server.dir.path().join("config.toml");
    let write = |ca_line: &str| {
        std::fs::write(
            &config,
            format!(
                "[provider]\nbase_url = {:?}\napi_key = {API_KEY:?}\n\
                 [database]\nurl = {:?}\n{ca_line}",
                fake.base_url,
                server.url(&host, query)
            ),
        )
        .unwrap();
    };
    let check = || async {
        let out = isolated(BIN)
            .arg("--config")
            .arg(&config)
            .arg("check")
            .env("BACKFILL_REPORTER_API_SECRET", API_SECRET)
            .output()
            .await
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    write(&format!(
        "ca_file = {:?}\n",
        server.ca().display().to_string()
    ));
    let (code, out, err) = check().await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("over TLS with a verified certificate (sslmode=verify-full): connected"),
        "{out}"
    );
    if hostname.is_some() {
        assert!(err.contains("is not local: requiring TLS"), "{err}");
    }
    write("");
    let (code, out, err) = check().await;
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}
