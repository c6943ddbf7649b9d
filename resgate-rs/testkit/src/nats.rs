use crate::process::{find_binary, kill, wait_for_port};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `nats-server` child process on 127.0.0.1.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a port it picks itself.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// Starts a server with extra command-line arguments (e.g. `--max_payload`).
    pub fn start_with(extra_args: &[&str]) -> NatsServer {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, port) = spawn(&dir, None, &extra_args);
        NatsServer { child: Some(child), port, dir, extra_args }
    }

    /// Starts a server with JetStream, storing in its directory: streams survive
    /// [`restart`](Self::restart), which also starts a [`stop`](Self::stop)ped (killed) server again.
    pub fn start_jetstream() -> NatsServer {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let store = dir.path().join("jetstream");
        let extra_args = vec!["-js".to_owned(), "-sd".to_owned(), store.to_string_lossy().into_owned()];
        let (child, port) = spawn(&dir, None, &extra_args);
        NatsServer { child: Some(child), port, dir, extra_args }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server (clients see the connection drop).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let (child, _) = spawn(&self.dir, Some(self.port), &self.extra_args);
        self.child = Some(child);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(dir: &tempfile::TempDir, port: Option<u16>, extra_args: &[String]) -> (Child, u16) {
    let bin = find_binary("nats-server", &["/usr/sbin"], "nats-server");
    let ports_dir = dir.path().join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).expect("create ports dir");
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
        .arg(&ports_dir)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let port = match port {
        Some(p) => p,
        None => read_port(&ports_dir),
    };
    assert!(wait_for_port(port, Duration::from_secs(10)), "nats-server did not listen on 127.0.0.1:{port}");
    (child, port)
}

/// Reads the client port from the ports file nats-server writes once it listens.
fn read_port(ports_dir: &std::path::Path) -> u16 {
    for _ in 0..500 {
        if let Some(entry) = std::fs::read_dir(ports_dir).ok().and_then(|mut d| d.next()).and_then(Result::ok)
            && let Ok(text) = std::fs::read_to_string(entry.path())
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = json["nats"][0].as_str()
            && let Some(port) = url.rsplit(':').next().and_then(|p| p.parse().ok())
        {
            return port;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nats-server wrote no ports file in {}", ports_dir.display());
}
