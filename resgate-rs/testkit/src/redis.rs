use crate::process::{find_binary, free_port, kill, wait_for_port};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child process on 127.0.0.1 with an append-only file (`appendfsync
/// everysec`, as the platform runs it), so tests can kill it and restart it on its data.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(&dir, port);
            if wait_for_port(port, Duration::from_secs(10)) {
                return RedisServer { child: Some(child), port, dir };
            }
            kill(&mut child);
        }
        panic!("redis-server did not start on 127.0.0.1");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's `--dir` (its append-only files live in `appendonlydir/`).
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL: what it had not written to its append-only file is lost.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts the server again on the same port and data (after [`kill`](Self::kill), or kills
    /// it first).
    pub fn restart(&mut self) {
        self.kill();
        let mut child = spawn(&self.dir, self.port);
        if !wait_for_port(self.port, Duration::from_secs(10)) {
            kill(&mut child);
            panic!("redis-server did not restart on 127.0.0.1:{}", self.port);
        }
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &tempfile::TempDir, port: u16) -> Child {
    let bin = find_binary("redis-server", &[], "redis-server");
    Command::new(&bin)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()))
}
