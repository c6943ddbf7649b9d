//! The identity-auth binary stops on SIGTERM whatever NATS does: while NATS is unreachable from
//! the start, and after NATS went away under a running service.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(nats_url: &str) -> (Child, u16) {
    let admin = res_testkit::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_identity-auth"))
        .env("IDENTITY_NATS_URL", nats_url)
        // Nothing listens there: the validator loads keys on first use.
        .env("IDENTITY_ISSUER_URL", format!("http://127.0.0.1:{}/realms/booking", res_testkit::free_port()))
        .env("IDENTITY_HTTP_TIMEOUT", "200ms")
        .env("IDENTITY_ADMIN_ADDR", format!("127.0.0.1:{admin}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start identity-auth");
    (child, admin)
}

/// Sends SIGTERM; the exit must follow within `limit`.
fn terminate_within(mut child: Child, limit: Duration) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("identity-auth did not exit within {limit:?} of SIGTERM");
}

#[test]
fn exits_on_sigterm_while_nats_was_never_reachable() {
    let (child, admin) = start(&format!("nats://127.0.0.1:{}", res_testkit::free_port()));
    assert!(res_testkit::wait_for_port(admin, Duration::from_secs(10)), "admin endpoint");
    std::thread::sleep(Duration::from_millis(300));
    terminate_within(child, Duration::from_secs(5));
}

#[test]
fn exits_on_sigterm_after_nats_went_away() {
    let mut nats = res_testkit::NatsServer::start();
    let (child, admin) = start(&nats.url());
    assert!(res_testkit::wait_for_port(admin, Duration::from_secs(10)), "admin endpoint");
    // Serving: the admin endpoint answers healthy once connected and subscribed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthy(admin) {
        assert!(Instant::now() < deadline, "identity-auth never became healthy");
        std::thread::sleep(Duration::from_millis(50));
    }
    nats.stop();
    std::thread::sleep(Duration::from_millis(300));
    terminate_within(child, Duration::from_secs(15));
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200")
}
