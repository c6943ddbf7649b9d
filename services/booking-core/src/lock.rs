//! Locks that serialize work per key across instances: an in-process FIFO mutex (so that one
//! instance's requests queue fairly instead of spinning on Redis) in front of a Redis lease
//! (`SET NX PX` with a random token, released by compare-and-delete).
//!
//! The Redis lease is what serializes instances. It expires after `ttl` so a crashed holder
//! cannot block a departure forever; the holder learns on release whether it still owned it.

use crate::error::BookingError;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

#[derive(Clone)]
pub struct Locks {
    redis: ConnectionManager,
    local: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    release: Arc<redis::Script>,
    ttl: Duration,
    wait: Duration,
}

/// A held lock; release it with [`LockGuard::release`]. Dropping it releases in the background.
pub struct LockGuard {
    key: String,
    token: String,
    locks: Locks,
    _local: tokio::sync::OwnedMutexGuard<()>,
    released: bool,
}

impl Locks {
    /// `ttl`: lease length; `wait`: how long to wait for the lock before `booking.busy`.
    pub fn new(redis: ConnectionManager, ttl: Duration, wait: Duration) -> Locks {
        Locks { redis, local: Arc::default(), release: Arc::new(redis::Script::new(RELEASE)), ttl, wait }
    }

    pub async fn acquire(&self, key: &str) -> Result<LockGuard, BookingError> {
        let started = Instant::now();
        let local = self.local.lock().expect("lock map").entry(key.to_owned()).or_default().clone();
        let local = tokio::time::timeout(self.wait, local.lock_owned()).await.map_err(|_| BookingError::Busy)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut conn = self.redis.clone();
        let mut backoff = Duration::from_millis(1);
        loop {
            let ok: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl.as_millis() as u64)
                .query_async(&mut conn)
                .await?;
            if ok.is_some() {
                return Ok(LockGuard {
                    key: key.to_owned(),
                    token,
                    locks: self.clone(),
                    _local: local,
                    released: false,
                });
            }
            if started.elapsed() > self.wait {
                return Err(BookingError::Busy);
            }
            // Only the other instances' holders compete here (one waiter per instance), so a
            // short capped backoff is enough.
            let jitter = Duration::from_micros(rand::random::<u64>() % 1000);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    fn forget_local(&self, key: &str) {
        let mut map = self.local.lock().expect("lock map");
        // Only the map holds it: nobody waits for this key.
        if map.get(key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(key);
        }
    }
}

impl LockGuard {
    /// Releases the lease. `Ok(false)`: it had expired and another holder may have run
    /// meanwhile, so what this holder published may be out of order (the caller resets).
    pub async fn release(mut self) -> Result<bool, BookingError> {
        self.released = true;
        let mut conn = self.locks.redis.clone();
        let n: i64 = self.locks.release.key(&self.key).arg(&self.token).invoke_async(&mut conn).await?;
        Ok(n == 1)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            // An error path: free the lease now rather than after its TTL.
            let (locks, key, token) = (self.locks.clone(), self.key.clone(), self.token.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let mut conn = locks.redis.clone();
                    let _: Result<i64, _> = locks.release.key(&key).arg(&token).invoke_async(&mut conn).await;
                });
            }
        }
        // The local mutex guard is dropped after this; forget the entry once nobody uses it.
        let (locks, key) = (self.locks.clone(), self.key.clone());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { locks.forget_local(&key) });
        }
    }
}
