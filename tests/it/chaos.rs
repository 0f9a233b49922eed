//! Faults for the drills and the fault harness: a TCP proxy that forwards, cuts, black-holes
//! or delays what passes through it, and a PostgreSQL server of the test's own that can be
//! stopped and started, so that no drill touches the shared server other tests use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// What a [`Proxy`] does to the traffic through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passes everything through.
    Forward,
    /// Unreachable: new connections are refused and open ones are cut (RST or FIN).
    Cut,
    /// A partition that sends no reset: connections are accepted and stay open, but no byte
    /// passes either way until the mode changes (then what was held goes through). From
    /// either end it looks like a peer that stopped answering: a half-open connection.
    Blackhole,
    /// Every chunk waits this long before it is passed on.
    Delay(Duration),
}

/// A TCP proxy in front of `target`, whose [`Fault`] a test sets at any moment.
pub struct Proxy {
    pub addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Fault>,
    accept: Mutex<Option<AbortHandle>>,
    conns: Arc<Mutex<JoinSet<()>>>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            target,
            mode: watch::channel(Fault::Forward).0,
            accept: Mutex::new(None),
            conns: Arc::default(),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let (target, conns, mode) = (self.target, self.conns.clone(), self.mode.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                let mode = mode.subscribe();
                conns.lock().unwrap().spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let _ = outbound.set_nodelay(true);
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        tokio::join!(pump(ri, wo, mode.clone()), pump(ro, wi, mode));
                    }
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task.abort_handle());
    }

    /// Puts `fault` in force from now on.
    pub async fn set(&self, fault: Fault) {
        let was = self.mode.send_replace(fault);
        match (was, fault) {
            (Fault::Cut, Fault::Cut) => {}
            (_, Fault::Cut) => {
                if let Some(task) = self.accept.lock().unwrap().take() {
                    task.abort();
                }
                self.conns.lock().unwrap().abort_all();
            }
            (Fault::Cut, _) => self.listen_again().await,
            _ => {}
        }
    }

    /// Unreachable: new connections are refused and open ones are cut.
    pub fn down(&self) {
        self.mode.send_replace(Fault::Cut);
        if let Some(task) = self.accept.lock().unwrap().take() {
            task.abort();
        }
        self.conns.lock().unwrap().abort_all();
    }

    /// Reachable again, on the same address.
    pub async fn up(&self) {
        self.set(Fault::Forward).await;
    }

    async fn listen_again(&self) {
        // The aborted listener may take a moment to close: retry the bind, for 10 s at most.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("the proxy cannot bind {} again: {e}", self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

/// How a chunk got through: whether it was held back by a black hole, and the delay to add.
struct Passage {
    held: bool,
    delay: Option<Duration>,
}

/// Waits while the proxy black-holes traffic.
async fn flowing(mode: &mut watch::Receiver<Fault>) -> Passage {
    let mut held = false;
    loop {
        match *mode.borrow_and_update() {
            Fault::Blackhole => {}
            Fault::Delay(d) => {
                return Passage {
                    held,
                    delay: Some(d),
                }
            }
            Fault::Forward | Fault::Cut => return Passage { held, delay: None },
        }
        held = true;
        if mode.changed().await.is_err() {
            return Passage { held, delay: None };
        }
    }
}

/// One direction of a connection: a chunk is read only while traffic flows, and held back
/// while it does not. A chunk held until its sender gave up is dropped: the sender's kernel
/// aborts a connection whose data stays unacknowledged (the client sets TCP_USER_TIMEOUT), so
/// a real network would not deliver it after the partition either.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Fault>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut more = vec![0u8; 16 * 1024];
    loop {
        flowing(&mut mode).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let passage = flowing(&mut mode).await;
        let mut extra = 0;
        if passage.held {
            match from.try_read(&mut more) {
                Ok(0) => break,
                Ok(m) => extra = m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
        }
        if let Some(delay) = passage.delay {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() || to.write_all(&more[..extra]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A PostgreSQL cluster in a temporary directory, on a free port, with trust authentication:
/// made with the machine's `initdb`, run with `pg_ctl`.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

impl PgServer {
    /// Panics, with the line that installs them, when no PostgreSQL server binaries are
    /// installed: a drill that cannot run must not pass.
    pub fn start() -> Self {
        let bin = server_binaries();
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self { dir, bin, port };
        // initdb refuses to run as root: the cluster belongs to the postgres user then.
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(server.dir.path()));
        }
        run(server
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(server.data()));
        server.start_again();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .command("pg_ctl")
            .args(["-w", "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.data())
            .args(["-o", &options, "start"]));
    }

    /// Stops it at once, cutting every connection.
    pub fn stop(&self) {
        run(self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop"));
    }

    /// A URL for `db` as the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .output();
    }
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || Path::new("/proc/self").metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            m.uid() == 0
        })
}

/// The directory of the PostgreSQL server binaries (`initdb`, `pg_ctl`): the newest
/// `/usr/lib/postgresql/N/bin`, else one on PATH. Panics with the line that installs them when
/// there are none: a test that needs a server of its own must fail, never pass unrun.
pub fn server_binaries() -> PathBuf {
    find_bin().expect(
        "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql or on PATH: \
         run scripts/test-db (or apt-get install postgresql)",
    )
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    // By number: 9.6 < 10 < 15, which a sort of the paths would get wrong past 9.
    versions.sort();
    versions.pop().map(|(_, bin)| bin).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
        })
    })
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the PostgreSQL tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
