//! `resbench floor` on its own: no gateway and no NATS are involved.

use serde_json::Value;
use std::process::Command;

#[test]
fn floor_counts_every_delivery_and_the_writers_cpu() {
    let out = Command::new(env!("CARGO_BIN_EXE_resbench"))
        .args(["floor", "-n", "30", "-r", "3", "--rate", "200", "--duration", "0.5", "--warmup", "0.1", "--json"])
        .output()
        .expect("run resbench");
    assert!(out.status.success(), "resbench floor failed: {}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("resbench --json prints JSON");
    let step = &doc["result"]["step"];
    assert_eq!(doc["result"]["clients"], 30, "{doc:#}");
    assert_eq!(step["events"], 100);
    assert_eq!(step["delivered"], 100 * 10, "each event reaches the 10 connections of its resource: {doc:#}");
    assert_eq!(step["undelivered_bytes"], 0);
    assert!(step["gateway_cpu_us_per_delivery"].as_f64().is_some(), "{doc:#}");
    assert!(step["writer_system_us_per_delivery"].as_f64().is_some(), "{doc:#}");
}
