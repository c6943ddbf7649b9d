use crate::process::{find_binary, free_port, kill, running_as_root, wait_for_port};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const PG_BIN_DIRS: &[&str] =
    &["/usr/lib/postgresql/17/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/15/bin"];

/// A throwaway PostgreSQL cluster on 127.0.0.1 (trust authentication, user `postgres`), in its own
/// process group so that tests can crash it whole and restart it.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    next_db: AtomicU32,
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        let initdb = find_binary("initdb", PG_BIN_DIRS, "postgresql");
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data = dir.path().join("data");
        let as_root = running_as_root();
        if as_root {
            // PostgreSQL refuses to run as root: hand the directory to the postgres user.
            chown_postgres(dir.path());
        }
        run(
            as_root,
            Command::new(&initdb).args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"]).arg(&data),
        );
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(as_root, dir.path(), port);
            if wait_for_port(port, Duration::from_secs(20)) && accepts_queries(port, Duration::from_secs(20)) {
                return PostgresServer { child: Some(child), port, dir, next_db: AtomicU32::new(0) };
            }
            kill_group(&mut child);
        }
        panic!("postgres did not start on 127.0.0.1");
    }

    /// Kills the postmaster and every backend with SIGKILL (a crash: committed data survives in
    /// the WAL, connections break).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    /// Starts the cluster again on the same port and data, after crash recovery (kills it first
    /// if it runs).
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn(running_as_root(), self.dir.path(), self.port);
        if !wait_for_port(self.port, Duration::from_secs(30)) || !accepts_queries(self.port, Duration::from_secs(30)) {
            kill_group(&mut child);
            panic!("postgres did not restart on 127.0.0.1:{}", self.port);
        }
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    pub fn database_url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a fresh database and returns its URL, so tests sharing a cluster stay isolated.
    pub fn create_database(&self) -> String {
        let name = format!("test_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        let psql = find_binary("psql", PG_BIN_DIRS, "postgresql-client");
        let status = Command::new(psql)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-q", "-c"])
            .arg(format!("CREATE DATABASE {name}"))
            .stdout(Stdio::null())
            .status()
            .expect("run psql");
        assert!(status.success(), "CREATE DATABASE {name} failed");
        self.database_url(&name)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until the server answers queries: it listens before recovery and start-up finish
/// ("the database system is starting up").
fn accepts_queries(port: u16, timeout: Duration) -> bool {
    let psql = find_binary("psql", PG_BIN_DIRS, "postgresql-client");
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let ok = Command::new(&psql)
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-qtA", "-c", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Kills the process group the server was started in: the postmaster's backends (and `runuser`
/// in front of it when run as root) would outlive a kill of the direct child alone, and keep the
/// port and shared memory.
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |sig: &str| {
        Command::new("kill").args([sig, "--", &group]).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    signal("-KILL");
    kill(child);
    // A new postmaster refuses to start while a process of the old one exists, even as a zombie
    // waiting for init to reap it (it reads the PID from postmaster.pid).
    for _ in 0..1000 {
        if !signal("-0") {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn chown_postgres(dir: &Path) {
    let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status().expect("run chown");
    assert!(status.success(), "chown to postgres failed: is the `postgres` user there? run ./setup.sh");
}

fn as_postgres(as_root: bool, cmd: &Command) -> Command {
    if !as_root {
        let mut c = Command::new(cmd.get_program());
        c.args(cmd.get_args());
        return c;
    }
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(cmd.get_program()).args(cmd.get_args());
    c
}

fn run(as_root: bool, cmd: &mut Command) {
    let out = as_postgres(as_root, cmd).output().expect("run initdb");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn spawn(as_root: bool, dir: &Path, port: u16) -> Child {
    let postgres = find_binary("postgres", PG_BIN_DIRS, "postgresql");
    let mut cmd = Command::new(&postgres);
    cmd.arg("-D")
        .arg(dir.join("data"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(dir)
        // No fsync (tests survive process crashes, not power loss), but a commit reaches the OS
        // before it is acknowledged, so a killed server loses no acknowledged commit.
        .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
        .args(["-c", "max_connections=300"]);
    as_postgres(as_root, &cmd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres")
}
