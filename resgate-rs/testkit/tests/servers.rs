//! The test servers start, accept connections and stop.

use res_testkit::{NatsServer, PostgresServer, RedisServer, wait_for_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

#[test]
fn nats_server_starts_restarts_and_stops() {
    let mut nats = NatsServer::start();
    let mut s = TcpStream::connect(("127.0.0.1", nats.port())).unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"INFO");
    nats.restart();
    assert!(wait_for_port(nats.port(), Duration::from_secs(5)));
    nats.stop();
    assert!(TcpStream::connect(("127.0.0.1", nats.port())).is_err());
}

#[test]
fn redis_server_answers_ping() {
    let redis = RedisServer::start();
    let mut s = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
}

#[test]
fn postgres_creates_databases() {
    let pg = PostgresServer::start();
    let a = pg.create_database();
    let b = pg.create_database();
    assert_ne!(a, b);
    assert!(a.starts_with("postgres://postgres@127.0.0.1:"));
}
