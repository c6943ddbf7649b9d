//! Redis commands that survive a Redis restart.
//!
//! `ConnectionManager` reconnects by itself, but only after a command has failed on the broken
//! connection: without a retry, the first command after a Redis restart fails (`broken pipe` →
//! `system.internalError` on a purchase). Every command here is retried once when the connection
//! broke under it. The scripts are written so that running one twice (the first run executed but
//! its reply was lost) has the effect of running it once.

use redis::aio::ConnectionManager;
use std::future::Future;
use std::time::Duration;

/// Runs `f` on a clone of `conn`; once more if the connection broke (not on a timeout: the
/// command may still be running).
pub async fn retry_once<T, F, Fut>(conn: &ConnectionManager, f: F) -> Result<T, redis::RedisError>
where
    F: Fn(ConnectionManager) -> Fut,
    Fut: Future<Output = Result<T, redis::RedisError>>,
{
    match f(conn.clone()).await {
        Err(e) if broken(&e) => {
            tracing::info!(error = %e, "Redis connection broke; retrying once on a new one");
            // The manager reconnects in the background; the retry waits for it.
            tokio::time::sleep(Duration::from_millis(20)).await;
            f(conn.clone()).await
        }
        r => r,
    }
}

fn broken(e: &redis::RedisError) -> bool {
    (e.is_connection_dropped() || e.is_connection_refusal()) && !e.is_timeout()
}
