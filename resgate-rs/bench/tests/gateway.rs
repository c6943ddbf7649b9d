//! resbench against a real gateway: a tiny fanout, `get` and `call` requests, and the HTTP API.
//!
//! The gateway is the binary at `GATEWAY_BIN`, by default the workspace's `resgate-rs` next to
//! this test's `resbench` binary. It is started with Resgate's flags (`--nats`, `--addr`,
//! `--port`), so `GATEWAY_BIN=/path/to/resgate` runs the same test against the Go gateway.

use res_testkit::{NatsServer, free_port, wait_for_port};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Gateway {
    child: Child,
    port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gateway_bin() -> PathBuf {
    let bin = std::env::var_os("GATEWAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_resbench")).with_file_name("resgate-rs"));
    assert!(
        bin.is_file(),
        "gateway binary {} is missing: build it with `cargo build -p resgate-rs` (same profile as this test), \
         or point GATEWAY_BIN at a gateway binary",
        bin.display()
    );
    bin
}

fn start_gateway(nats: &NatsServer) -> Gateway {
    let port = free_port();
    let child = Command::new(gateway_bin())
        .args(["--nats", &nats.url(), "--addr", "127.0.0.1", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway");
    let gw = Gateway { child, port };
    assert!(wait_for_port(port, Duration::from_secs(15)), "the gateway did not listen on 127.0.0.1:{port}");
    gw
}

fn resbench(nats: &NatsServer, gw: &Gateway, args: &[&str]) -> Value {
    let pid = gw.child.id().to_string();
    let gateway = format!("127.0.0.1:{}", gw.port);
    let out = Command::new(env!("CARGO_BIN_EXE_resbench"))
        .args(args)
        .args(["--json", "--nats", &nats.url(), "--gateway", &gateway, "--gateway-pid", &pid, "--source-count", "2"])
        .stdin(Stdio::null())
        .output()
        .expect("run resbench");
    assert!(out.status.success(), "resbench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("resbench --json prints JSON")
}

#[test]
fn tiny_scenarios_against_the_gateway() {
    let nats = NatsServer::start();
    let gw = start_gateway(&nats);

    let f =
        resbench(&nats, &gw, &["fanout", "-n", "20", "-r", "2", "--rate", "200", "--duration", "1", "--warmup", "0.2"]);
    let step = &f["result"]["step"];
    assert_eq!(f["result"]["clients"], 20, "{f:#}");
    assert_eq!(step["events"], 200);
    assert_eq!(step["expected"], 200 * 10, "each event reaches the 10 subscribers of its resource");
    assert_eq!(step["delivered"], step["expected"], "{f:#}");
    assert_eq!(step["lost"], 0);
    assert_eq!(step["duplicates"], 0);
    assert_eq!(step["latency"]["count"], step["delivered"]);
    assert!(step["gateway"]["cpu_seconds"].as_f64().is_some(), "{f:#}");

    for op in ["get", "call"] {
        let r = resbench(
            &nats,
            &gw,
            &["requests", "--op", op, "-c", "4", "-w", "4", "-r", "2", "--duration", "1", "--warmup", "0.2"],
        );
        let res = &r["result"];
        assert!(res["ok"].as_u64().unwrap() > 0, "{r:#}");
        assert_eq!(res["errors"], serde_json::json!({}), "{r:#}");
        assert_eq!(res["unanswered"], 0);
        assert_eq!(res["latency"]["count"], res["ok"]);
        if op == "call" {
            assert!(res["service_answered"]["call"].as_u64().unwrap() >= res["ok"].as_u64().unwrap());
        }
    }

    let h = resbench(&nats, &gw, &["http", "-c", "2", "--duration", "1", "--warmup", "0.2"]);
    assert!(h["result"]["ok"].as_u64().unwrap() > 0, "{h:#}");
    assert_eq!(h["result"]["failures"], 0, "{h:#}");
}
