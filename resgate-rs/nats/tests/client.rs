//! The client against a real nats-server.

use bytes::Bytes;
use parking_lot::Mutex;
use res_nats::{Client, Error, Event, Headers, Message, Options};
use res_testkit::NatsServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Generous: the CI machine has two cores and runs test binaries in parallel.
const WAIT: Duration = Duration::from_secs(20);

async fn connect(url: &str) -> (Client, broadcast::Receiver<Event>) {
    let (client, mut events) = tokio::time::timeout(WAIT, Client::connect(Options::new(url)))
        .await
        .expect("connect in time")
        .expect("connect");
    assert_eq!(events.recv().await.unwrap(), Event::Connected);
    (client, events)
}

/// A subscription whose messages arrive on a channel.
fn channel_sub(client: &Client, subject: &str) -> (res_nats::Subscription, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sub = client.subscribe(subject, Arc::new(move |m| drop(tx.send(m)))).unwrap();
    (sub, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("a message in time").expect("channel open")
}

async fn next_event(events: &mut broadcast::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv()).await.expect("an event in time").expect("event channel open")
}

fn publish(client: &Client, subject: &str, payload: &str) {
    client.publish(subject, None, None, Bytes::copy_from_slice(payload.as_bytes())).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_and_receives_with_wildcards() {
    let server = NatsServer::start();
    let (client, _events) = connect(&server.url()).await;
    let (_one, mut one) = channel_sub(&client, "foo.*");
    let (_all, mut all) = channel_sub(&client, "foo.>");
    let (_end, mut end) = channel_sub(&client, "end");
    client.flush().await.unwrap();
    publish(&client, "foo.bar", "1");
    publish(&client, "foo.bar.baz", "2");
    publish(&client, "other", "3");
    publish(&client, "end", "");
    next(&mut end).await;
    // Wire order: once `end` arrived, everything published before it was delivered.
    let got = |rx: &mut mpsc::UnboundedReceiver<Message>| {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| format!("{}={}", m.subject, String::from_utf8_lossy(&m.payload)))
            .collect::<Vec<_>>()
    };
    assert_eq!(got(&mut one), ["foo.bar=1"]);
    assert_eq!(got(&mut all), ["foo.bar=1", "foo.bar.baz=2"]);
    assert!(client.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_messages_of_all_subscriptions_in_wire_order() {
    const N: usize = 100_000;
    let server = NatsServer::start();
    let (subscriber, _e1) = connect(&server.url()).await;
    let (publisher, _e2) = connect(&server.url()).await;
    let seen = Arc::new(Mutex::new(Vec::with_capacity(N)));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let record = |tag: char| {
        let seen = seen.clone();
        let done_tx = done_tx.clone();
        Arc::new(move |m: Message| {
            let mut seen = seen.lock();
            seen.push((tag, String::from_utf8_lossy(&m.payload).into_owned()));
            if seen.len() == N {
                let _ = done_tx.send(());
            }
        })
    };
    let _events = subscriber.subscribe("event.a.*", record('e')).unwrap();
    let _replies = subscriber.subscribe("_INBOX.x.*", record('r')).unwrap();
    subscriber.flush().await.unwrap();

    // An irregular interleaving (runs of either subject of varying length), as services produce.
    let mut expected = Vec::with_capacity(N);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..N {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let (tag, subject) = if state.is_multiple_of(3) { ('e', "event.a.change") } else { ('r', "_INBOX.x.1") };
        publish(&publisher, subject, &i.to_string());
        expected.push((tag, i.to_string()));
        if i.is_multiple_of(10_000) {
            // Keep the publisher's buffer bounded, like real traffic.
            publisher.flush().await.unwrap();
        }
    }
    publisher.flush().await.unwrap();
    tokio::time::timeout(WAIT, done.recv()).await.expect("all messages in time");
    let seen = seen.lock();
    assert_eq!(seen.len(), N);
    if let Some(i) = (0..N).find(|&i| seen[i] != expected[i]) {
        panic!(
            "order differs at {i}: got {:?}, published {:?}",
            &seen[i..(i + 5).min(N)],
            &expected[i..(i + 5).min(N)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_responders_gets_a_503_status() {
    let server = NatsServer::start();
    let (client, _events) = connect(&server.url()).await;
    let inbox = client.new_inbox();
    let (_sub, mut replies) = channel_sub(&client, &format!("{inbox}.*"));
    client.flush().await.unwrap();
    client.publish("get.nobody.listens", Some(&format!("{inbox}.7")), None, Bytes::from_static(b"{}")).unwrap();
    let reply = next(&mut replies).await;
    assert_eq!(&*reply.subject, format!("{inbox}.7"));
    assert_eq!(reply.status, Some(503));
    assert!(reply.payload.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_reply_subjects_round_trip() {
    let server = NatsServer::start();
    let (client, _events) = connect(&server.url()).await;
    let (_sub, mut rx) = channel_sub(&client, "with.headers");
    client.flush().await.unwrap();
    let mut headers = Headers::new();
    headers.insert("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    headers.append("Multi", "one");
    headers.append("Multi", "two");
    client.publish("with.headers", Some("reply.here"), Some(&headers), Bytes::from_static(b"body")).unwrap();
    let m = next(&mut rx).await;
    assert_eq!(m.headers.as_ref(), Some(&headers));
    assert_eq!(m.reply.as_deref(), Some("reply.here"));
    assert_eq!((m.status, &m.payload[..]), (None, &b"body"[..]));

    let mut bad = Headers::new();
    bad.insert("X", "line\r\nbreak");
    assert!(matches!(client.publish("with.headers", None, Some(&bad), Bytes::new()), Err(Error::InvalidHeader(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_loses_its_message_only() {
    let server = NatsServer::start();
    let (client, _events) = connect(&server.url()).await;
    let _bad = client.subscribe("boom", Arc::new(|_| panic!("handler bug"))).unwrap();
    let (_good, mut good) = channel_sub(&client, "fine");
    publish(&client, "boom", "");
    publish(&client, "fine", "after");
    assert_eq!(&next(&mut good).await.payload[..], b"after");
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_subscription_unsubscribes() {
    let server = NatsServer::start();
    let (client, _events) = connect(&server.url()).await;
    let (sub, mut rx) = channel_sub(&client, "drop.me");
    let (_end, mut end) = channel_sub(&client, "end");
    client.flush().await.unwrap();
    publish(&client, "drop.me", "before");
    assert_eq!(&next(&mut rx).await.payload[..], b"before");
    drop(sub);
    publish(&client, "drop.me", "after");
    publish(&client, "end", "");
    next(&mut end).await;
    // The handler (and with it the sender) is gone, and nothing arrived after the drop.
    assert!(matches!(rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_restores_subscriptions_and_sends_what_was_buffered() {
    let mut server = NatsServer::start();
    let (client, mut events) = connect(&server.url()).await;
    let (_old, mut old) = channel_sub(&client, "old.sub");
    client.flush().await.unwrap();

    tokio::task::block_in_place(|| server.stop());
    assert_eq!(next_event(&mut events).await, Event::Disconnected);
    assert!(!client.is_connected());
    assert!(matches!(client.flush().await, Err(Error::Disconnected)));
    // Subscribed and published while disconnected: the SUB must go out before the PUB.
    let (_new, mut new) = channel_sub(&client, "new.sub");
    publish(&client, "new.sub", "buffered");

    tokio::task::block_in_place(|| server.restart());
    assert_eq!(next_event(&mut events).await, Event::Reconnected);
    assert!(client.is_connected());
    assert_eq!(&next(&mut new).await.payload[..], b"buffered");
    publish(&client, "old.sub", "1");
    publish(&client, "new.sub", "2");
    assert_eq!(&next(&mut old).await.payload[..], b"1");
    assert_eq!(&next(&mut new).await.payload[..], b"2");
    client.flush().await.unwrap();
    // Exactly once each: no subscription was registered twice.
    publish(&client, "old.sub", "end");
    assert_eq!(&next(&mut old).await.payload[..], b"end");
    assert!(old.try_recv().is_err() && new.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_past_the_reconnect_buffer_fails() {
    let mut server = NatsServer::start();
    let mut opts = Options::new(server.url());
    opts.reconnect_buffer = 10_000;
    let (client, mut events) = tokio::time::timeout(WAIT, Client::connect(opts)).await.unwrap().unwrap();
    assert_eq!(next_event(&mut events).await, Event::Connected);
    tokio::task::block_in_place(|| server.stop());
    assert_eq!(next_event(&mut events).await, Event::Disconnected);
    let payload = Bytes::from(vec![b'x'; 1000]);
    let accepted = (0..20).take_while(|_| client.publish("s", None, None, payload.clone()).is_ok()).count();
    assert!((5..10).contains(&accepted), "{accepted} accepted");
    assert!(matches!(client.publish("s", None, None, payload), Err(Error::BufferFull { limit: 10_000 })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_payloads_over_max_payload_and_invalid_subjects() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(&conf, "max_payload: 1000\n").unwrap();
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    let (client, _events) = connect(&server.url()).await;
    assert_eq!(client.max_payload(), 1000);
    client.publish("s", None, None, Bytes::from(vec![0; 1000])).unwrap();
    let err = client.publish("s", None, None, Bytes::from(vec![0; 1001])).unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { size: 1001, max: 1000 }), "{err}");
    for subject in ["", "a b", "a.*", "a..b", "a\r\nPUB x 1"] {
        assert!(
            matches!(client.publish(subject, None, None, Bytes::new()), Err(Error::InvalidSubject(_))),
            "{subject:?}"
        );
    }
    assert!(matches!(client.publish("s", Some("bad reply"), None, Bytes::new()), Err(Error::InvalidSubject(_))));
    assert!(matches!(client.subscribe("a..b", Arc::new(|_| {})), Err(Error::InvalidSubject(_))));
    // The server would close the connection over a control line this long.
    let long = "x".repeat(4096);
    assert!(matches!(client.publish(&long, None, None, Bytes::new()), Err(Error::SubjectTooLong { .. })));
    assert!(matches!(client.publish("s", Some(&long), None, Bytes::new()), Err(Error::SubjectTooLong { .. })));
    assert!(matches!(client.subscribe(&long, Arc::new(|_| {})), Err(Error::SubjectTooLong { .. })));
    // Still connected: nothing invalid reached the server.
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_user_and_password_from_the_url() {
    let server = NatsServer::start_with(&["--user", "gw", "--pass", "p@ss"]);
    let url = format!("nats://gw:p%40ss@127.0.0.1:{}", server.port());
    let (client, _events) = connect(&url).await;
    let (_sub, mut rx) = channel_sub(&client, "authed");
    publish(&client, "authed", "yes");
    assert_eq!(&next(&mut rx).await.payload[..], b"yes");

    // A wrong password is retried (the server may be reconfigured), never a connected client.
    let wrong = format!("nats://gw:nope@127.0.0.1:{}", server.port());
    assert!(tokio::time::timeout(Duration::from_millis(500), Client::connect(Options::new(wrong))).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticates_with_a_token_from_the_url() {
    let server = NatsServer::start_with(&["--auth", "s3cret"]);
    let (client, _events) = connect(&format!("nats://s3cret@127.0.0.1:{}", server.port())).await;
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissions_violation_is_reported_and_keeps_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nats.conf");
    std::fs::write(
        &conf,
        "authorization { users = [ { user: gw, password: pw, permissions: { publish: { deny: [\"secret.>\"] } } } ] }\n",
    )
    .unwrap();
    let server = NatsServer::start_with(&["-c", conf.to_str().unwrap()]);
    let (client, mut events) = connect(&format!("nats://gw:pw@127.0.0.1:{}", server.port())).await;
    let (_sub, mut rx) = channel_sub(&client, "open");
    publish(&client, "secret.x", "no");
    match next_event(&mut events).await {
        Event::ServerError(e) => assert!(e.contains("Permissions Violation"), "{e}"),
        other => panic!("{other:?}"),
    }
    publish(&client, "open", "still works");
    assert_eq!(&next(&mut rx).await.payload[..], b"still works");
    assert!(events.try_recv().is_err(), "no disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_server_that_starts_later() {
    let port = res_testkit::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let connecting = tokio::spawn(async move { Client::connect(Options::new(url)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!connecting.is_finished());
    let server = tokio::task::block_in_place(|| NatsServer::start_with(&["-p", &port.to_string()]));
    let (client, _events) = tokio::time::timeout(WAIT, connecting).await.unwrap().unwrap().unwrap();
    client.flush().await.unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_sends_what_was_published() {
    let server = NatsServer::start();
    let (watcher, _e) = connect(&server.url()).await;
    let (_sub, mut rx) = channel_sub(&watcher, "last.words");
    watcher.flush().await.unwrap();
    let (client, _events) = connect(&server.url()).await;
    publish(&client, "last.words", "bye");
    drop(client);
    assert_eq!(&next(&mut rx).await.payload[..], b"bye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_to_a_cluster_server_learnt_from_info() {
    let (route_a, route_b) = (res_testkit::free_port(), res_testkit::free_port());
    let cluster_a = format!("nats://127.0.0.1:{route_a}");
    let mut a = NatsServer::start_with(&["--cluster", &cluster_a]);
    let b = NatsServer::start_with(&["--cluster", &format!("nats://127.0.0.1:{route_b}"), "--routes", &cluster_a]);
    // Only A is configured; B must come from A's INFO connect_urls.
    let (client, mut events) = connect(&a.url()).await;
    let (on_b, _e) = connect(&b.url()).await;
    let (_probe, mut probe) = channel_sub(&client, "probe");
    client.flush().await.unwrap();
    // Once B's messages reach us through A, the route is up and A has sent us its new INFO.
    let route_up = async {
        loop {
            publish(&on_b, "probe", "");
            on_b.flush().await.unwrap();
            if tokio::time::timeout(Duration::from_millis(100), probe.recv()).await.is_ok() {
                break;
            }
        }
    };
    tokio::time::timeout(WAIT, route_up).await.expect("the cluster route forms");
    tokio::task::block_in_place(|| a.stop());
    assert_eq!(next_event(&mut events).await, Event::Disconnected);
    assert_eq!(next_event(&mut events).await, Event::Reconnected);
    let (_sub, mut rx) = channel_sub(&client, "via.b");
    client.flush().await.unwrap();
    publish(&on_b, "via.b", "hello");
    assert_eq!(&next(&mut rx).await.payload[..], b"hello");
}
