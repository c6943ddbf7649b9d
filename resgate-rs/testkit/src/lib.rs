//! Real servers for tests, on 127.0.0.1 and ports picked at start.
//!
//! Each server runs as a child process in its own temporary directory and is killed when its
//! handle drops. A missing binary is a test failure with a message naming the fix (`./setup.sh`),
//! never a silent skip.

mod nats;
mod postgres;
mod process;
mod redis;

pub use nats::NatsServer;
pub use postgres::PostgresServer;
pub use process::{free_port, wait_for_port};
pub use redis::RedisServer;
