//! `resbench sale` against the real platform, small: `run.sh --no-build` (two instances of every
//! booking service, the local OpenID Provider minting the users' tokens, one gateway) on
//! ephemeral ports, a few dozen buyers and watchers selling one departure out. Asserts only
//! invariants: every seat sold exactly once and accounted for by an order a buyer was told of,
//! success ⇔ committed with its tickets, no hold left that nobody knows of, every view = the truth.
//!
//! The platform's binaries are the workspace's, next to this test's `resbench` (same profile), and
//! the web app's build: `./setup.sh` makes them.

use res_testkit::free_port;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Platform {
    run_sh: Child,
    _dir: tempfile::TempDir,
    nats: u16,
    pg: u16,
    redis: u16,
    oidc: u16,
    gateway: u16,
}

impl Drop for Platform {
    fn drop(&mut self) {
        // run.sh stops everything it started on SIGTERM.
        let _ = Command::new("kill").args(["-TERM", &self.run_sh.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.run_sh.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.run_sh.kill();
    }
}

/// A port such that it and the `n - 1` after it are free now, below the kernel's ephemeral range:
/// the services bind these last, after the platform's own outgoing connections have taken
/// ephemeral ports, and one of those once took an admin port between run.sh's check and the bind.
fn free_range(n: u16) -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (lowest, span) = (10_000, ephemeral_low.saturating_sub(10_000 + n).max(1));
    for _ in 0..200 {
        let base = lowest + rand::random::<u16>() % span;
        if (0..n).all(|k| TcpListener::bind(("127.0.0.1", base + k)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1 below {ephemeral_low}");
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

fn start_platform() -> Platform {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_resbench"));
    let profile_dir = exe.parent().expect("binary directory");
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile name");
    let dir = tempfile::tempdir().expect("temp dir");
    // PostgreSQL runs as its own user when the tests run as root: it must reach its data dir.
    let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
    let (nats, pg, redis, oidc, web, gateway) =
        (free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let admin = free_range(16);
    let log = dir.path().join("run.log");
    let mut cmd = Command::new(workspace_root().join("run.sh"));
    cmd.arg("--no-build");
    if profile == "release" {
        cmd.arg("--release");
    }
    let child = cmd
        .env("RUN_DIR", dir.path().join("run"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env("NATS_PORT", nats.to_string())
        .env("PG_PORT", pg.to_string())
        .env("REDIS_PORT", redis.to_string())
        .env("OIDC_PORT", oidc.to_string())
        .env("WEB_PORT", web.to_string())
        .env("GATEWAY_PORT", gateway.to_string())
        .env("ADMIN_PORT_BASE", admin.to_string())
        .env("SERVICE_INSTANCES", "2")
        .env("OIDC_TEST_ADMIN", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log file"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start run.sh");
    let mut p = Platform { run_sh: child, _dir: dir, nats, pg, redis, oidc, gateway };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("PLATFORM_READY") {
            return p;
        }
        if let Ok(Some(status)) = p.run_sh.try_wait() {
            panic!("run.sh exited ({status}) before the platform was ready (run ./setup.sh first?):\n{text}");
        }
        assert!(Instant::now() < deadline, "the platform was not ready within 120 s:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn resbench_sale(p: &Platform, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_resbench"))
        .args(["--json", "--source-count", "2", "--nats", &format!("nats://127.0.0.1:{}", p.nats)])
        .args(["--gateway", &format!("127.0.0.1:{}", p.gateway), "sale"])
        .args(["--issuer", &format!("http://127.0.0.1:{}/realms/booking", p.oidc)])
        .args(["--database-url", &format!("postgres://postgres@127.0.0.1:{}/booking", p.pg)])
        .args(["--redis-url", &format!("redis://127.0.0.1:{}/", p.redis)])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run resbench");
    assert!(out.status.success(), "resbench sale failed: {}", String::from_utf8_lossy(&out.stderr));
    for line in BufReader::new(&out.stderr[..]).lines().map_while(Result::ok) {
        eprintln!("resbench: {line}");
    }
    serde_json::from_slice(&out.stdout).expect("resbench --json prints JSON")
}

#[test]
fn a_small_sale_sells_every_seat_once_and_leaves_nothing_behind() {
    let p = start_platform();
    // An RE departure (146 seats) on Leipzig–Dresden, sold out by 40 buyers; 60 watchers.
    let r = resbench_sale(
        &p,
        &[
            "--buyers",
            "40",
            "--watchers",
            "60",
            "--departures",
            "1",
            "--until-sold-out",
            "--duration",
            "90",
            "--think-ms",
            "5,40",
            "--pay-pct",
            "80",
            "--decline-pct",
            "20",
            "--routes",
            "LL-DH,DH-LL",
        ],
    );
    let res = &r["result"];
    let audit = &res["audit"];
    println!("{}", serde_json::to_string_pretty(res).unwrap());
    assert_eq!(res["buyers_signed_in"], 40, "{r:#}");
    assert_eq!(res["watchers"], 60, "{r:#}");
    for list in [
        "sold_twice",
        "told_not_committed",
        "committed_not_told",
        "tickets_wrong",
        "sold_unaccounted",
        "orphan_holds",
        "views_wrong",
    ] {
        assert_eq!(audit[list], serde_json::json!([]), "audit.{list} must be empty: {audit:#}");
    }
    assert_eq!(audit["open_holds_left"], 0, "{audit:#}");
    assert_eq!(audit["sold_out"], true, "{audit:#}");
    let dep = &audit["departures"][0];
    assert_eq!(dep["sold"], dep["total"], "{dep}");
    assert_eq!(res["seats_booked"], dep["total"], "every seat sold is in an order a buyer was told of");
    assert_eq!(res["audit_clean"], true);
    assert!(res["watcher_events"].as_u64().unwrap() > 0, "watchers saw the sale: {res:#}");
    assert_eq!(res["watchers_disconnected"], 0);
    assert_eq!(res["buyers_disconnected"], 0);
}
