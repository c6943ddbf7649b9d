//! Behaviour that a real nats-server does not let us provoke: a server that pings us and then
//! stops answering.

use res_nats::{Client, Event, Options};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_server_pings_and_drops_a_server_that_stops_answering() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut sock = BufReader::new(sock);
        sock.write_all(b"INFO {\"server_id\":\"fake\",\"max_payload\":1024,\"proto\":1}\r\n").await.unwrap();
        let mut line = String::new();
        sock.read_line(&mut line).await.unwrap();
        let connect: serde_json::Value =
            serde_json::from_str(line.strip_prefix("CONNECT ").expect("CONNECT first")).unwrap();
        line.clear();
        sock.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PING\r\n");
        sock.write_all(b"PONG\r\nPING\r\n").await.unwrap();
        line.clear();
        sock.read_line(&mut line).await.unwrap();
        assert_eq!(line, "PONG\r\n", "the client answers the server's PING");
        // From now on, never answer: count the client's keepalive PINGs until it hangs up.
        let mut pings = 0;
        loop {
            line.clear();
            match sock.read_line(&mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) if line == "PING\r\n" => pings += 1,
                Ok(_) => panic!("unexpected {line:?}"),
            }
        }
        (connect, pings)
    });
    let mut opts = Options::new(url);
    opts.name = "gateway".into();
    opts.no_echo = true;
    opts.ping_interval = Duration::from_millis(50);
    let (client, mut events) = tokio::time::timeout(WAIT, Client::connect(opts)).await.unwrap().unwrap();
    assert_eq!(client.max_payload(), 1024);
    assert_eq!(events.recv().await.unwrap(), Event::Connected);
    assert_eq!(tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap(), Event::Disconnected);
    let (connect, pings) = tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(pings, 2, "declared dead after two unanswered PINGs");
    assert_eq!(connect["name"], "gateway");
    assert_eq!(connect["echo"], false);
    assert_eq!(connect["headers"], true);
    assert_eq!(connect["no_responders"], true);
    assert_eq!(connect["verbose"], false);
}
