use crate::process::{find_binary, free_port, kill, wait_for_port};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` child process on 127.0.0.1, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let bin = find_binary("redis-server", &[], "redis-server");
        let dir = tempfile::tempdir().expect("create a temporary directory");
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut child = child;
            if wait_for_port(port, Duration::from_secs(10)) {
                return RedisServer { child: Some(child), port, _dir: dir };
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
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }
}
