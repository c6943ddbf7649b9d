//! Locks that serialize work per key across instances: an in-process FIFO mutex (so that one
//! instance's requests queue fairly instead of spinning on Redis) in front of a Redis lease
//! (`SET NX PX` with a random token, released by compare-and-delete).
//!
//! The Redis lease is what serializes instances. It expires after `ttl` so a crashed holder
//! cannot block a departure forever; the holder learns on release whether it still owned it.
//!
//! Doubt: beside the lease, a holder leaves a marker (`<key>:pending`, no expiry) that only a
//! clean release removes. A holder that crashed, lost Redis or failed half-way leaves it behind,
//! and the next holder is told ([`LockGuard::in_doubt`]): what the previous one changed may not
//! have been published, so it resets the resources the lock protects before going on.

use crate::error::BookingError;
use crate::redis_retry::retry_once;
use redis::aio::ConnectionManager;
use res_service::Deadline;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// KEYS: lease, marker. ARGV: token, ttl ms. Returns {acquired, previous marker or ''}.
/// Taking a lease this token already holds succeeds again, so a retry after a lost reply is safe.
const ACQUIRE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return {1, ''} end
if cur then return {0, ''} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local prev = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[2], ARGV[1])
return {1, prev or ''}";

/// KEYS: lease, marker. ARGV: token, clean ('1': the work finished, drop the marker too).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] == '1' and redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
  return 1
end
return 0";

#[derive(Clone)]
pub struct Locks {
    redis: ConnectionManager,
    local: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    acquire: Arc<redis::Script>,
    release: Arc<redis::Script>,
    ttl: Duration,
    wait: Duration,
}

/// A held lock; release it with [`LockGuard::release`]. Dropping it releases in the background
/// and leaves the marker: the work it guarded may be half done.
pub struct LockGuard {
    key: String,
    token: String,
    locks: Locks,
    in_doubt: bool,
    _local: tokio::sync::OwnedMutexGuard<()>,
    released: bool,
}

/// How long work outside a request (sweepers, settling a committed purchase) waits for a lock.
const UNATTENDED_WAIT: Duration = Duration::from_secs(8);

/// The deadline of work nobody waits for: it may wait for a lock as long as any.
pub fn unattended() -> Deadline {
    Deadline::after(UNATTENDED_WAIT)
}

fn marker(key: &str) -> String {
    format!("{key}:pending")
}

impl Locks {
    /// `ttl`: lease length; `wait`: how long to wait for the lock before `booking.busy`.
    pub fn new(redis: ConnectionManager, ttl: Duration, wait: Duration) -> Locks {
        Locks {
            redis,
            local: Arc::default(),
            acquire: Arc::new(redis::Script::new(ACQUIRE)),
            release: Arc::new(redis::Script::new(RELEASE)),
            ttl,
            wait,
        }
    }

    /// Waits for the lock, at most until `deadline` (and never longer than the configured wait):
    /// past it the caller has given up, so the work must not start (`booking.busy`).
    pub async fn acquire(&self, key: &str, deadline: &Deadline) -> Result<LockGuard, BookingError> {
        let started = Instant::now();
        let wait = self.wait.min(deadline.remaining());
        let local = self.local.lock().expect("lock map").entry(key.to_owned()).or_default().clone();
        let local = tokio::time::timeout(wait, local.lock_owned()).await.map_err(|_| BookingError::Busy)?;
        let token = format!("{:032x}", rand::random::<u128>());
        let mut backoff = Duration::from_millis(1);
        loop {
            let (ok, prev): (i64, String) = retry_once(&self.redis, |mut conn| {
                let (script, key, token) = (self.acquire.clone(), key.to_owned(), token.clone());
                let ttl = self.ttl.as_millis() as u64;
                async move { script.key(&key).key(marker(&key)).arg(&token).arg(ttl).invoke_async(&mut conn).await }
            })
            .await?;
            if ok == 1 {
                if !prev.is_empty() {
                    tracing::warn!(key, "the previous holder did not finish; its changes may be unpublished");
                }
                return Ok(LockGuard {
                    key: key.to_owned(),
                    token,
                    locks: self.clone(),
                    in_doubt: !prev.is_empty(),
                    _local: local,
                    released: false,
                });
            }
            if started.elapsed() > wait {
                return Err(BookingError::Busy);
            }
            // Only the other instances' holders compete here (one waiter per instance), so a
            // short capped backoff is enough.
            let jitter = Duration::from_micros(rand::random::<u64>() % 1000);
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(Duration::from_millis(20));
        }
    }

    async fn release_lease(&self, key: &str, token: &str, clean: bool) -> Result<bool, BookingError> {
        let n: i64 = retry_once(&self.redis, |mut conn| {
            let (script, key, token) = (self.release.clone(), key.to_owned(), token.to_owned());
            async move {
                script
                    .key(&key)
                    .key(marker(&key))
                    .arg(&token)
                    .arg(if clean { "1" } else { "0" })
                    .invoke_async(&mut conn)
                    .await
            }
        })
        .await?;
        Ok(n == 1)
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
    /// The previous holder did not release cleanly (crash, lost connection, error half-way):
    /// changes it made may never have been published.
    pub fn in_doubt(&self) -> bool {
        self.in_doubt
    }

    /// Releases the lease after finished work. `Ok(false)`: it had expired and another holder
    /// may have run meanwhile, so what this holder published may be out of order (the caller
    /// resets).
    pub async fn release(mut self) -> Result<bool, BookingError> {
        self.released = true;
        self.locks.release_lease(&self.key, &self.token, true).await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            // An error path: free the lease now rather than after its TTL, but keep the marker.
            let (locks, key, token) = (self.locks.clone(), self.key.clone(), self.token.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = locks.release_lease(&key, &token, false).await;
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
