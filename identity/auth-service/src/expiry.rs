//! Per-connection token expiry: a delay queue keyed by connection ID.
//!
//! The gateway keeps a connection token until someone replaces it, so a token set at login would
//! outlive the access token it came from. Each login schedules a clear at `exp` (plus the
//! validator's leeway); a newer login on the same connection replaces the entry, a logout removes
//! it. Memory is one entry per connection with a live token, capped by `capacity`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The schedule is full: the connection's token could not be given an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Default)]
struct State {
    by_cid: HashMap<String, (Instant, u64)>,
    /// Ordered by deadline; `seq` makes keys unique when two deadlines are equal.
    queue: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

impl State {
    fn remove(&mut self, cid: &str) -> bool {
        match self.by_cid.remove(cid) {
            Some(key) => {
                self.queue.remove(&key);
                true
            }
            None => false,
        }
    }
}

/// Deadlines by connection ID; [`ExpirySchedule::run`] fires them.
pub struct ExpirySchedule {
    state: Mutex<State>,
    /// Wakes the runner when an earlier deadline may have been added.
    wake: Notify,
    capacity: usize,
}

impl std::fmt::Debug for ExpirySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpirySchedule").field("len", &self.len()).field("capacity", &self.capacity).finish()
    }
}

impl ExpirySchedule {
    pub fn new(capacity: usize) -> ExpirySchedule {
        ExpirySchedule { state: Mutex::default(), wake: Notify::new(), capacity: capacity.max(1) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets (or replaces) the deadline of `cid`. Fails only when a new connection would exceed the
    /// capacity; replacing an existing entry always succeeds.
    pub fn schedule(&self, cid: &str, at: Instant) -> Result<(), Full> {
        let mut s = self.lock();
        let replaced = s.remove(cid);
        if !replaced && s.by_cid.len() >= self.capacity {
            return Err(Full);
        }
        s.seq += 1;
        let key = (at, s.seq);
        s.by_cid.insert(cid.to_owned(), key);
        s.queue.insert(key, cid.to_owned());
        drop(s);
        self.wake.notify_one();
        Ok(())
    }

    /// Removes the deadline of `cid`; true when there was one.
    pub fn cancel(&self, cid: &str) -> bool {
        self.lock().remove(cid)
    }

    pub fn len(&self) -> usize {
        self.lock().by_cid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The deadline of `cid`, if scheduled.
    pub fn deadline(&self, cid: &str) -> Option<Instant> {
        self.lock().by_cid.get(cid).map(|(at, _)| *at)
    }

    /// Removes and returns every connection due at `now`, earliest first.
    pub fn pop_due(&self, now: Instant) -> Vec<String> {
        let mut s = self.lock();
        let mut due = Vec::new();
        while let Some(entry) = s.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let cid = entry.remove();
            s.by_cid.remove(&cid);
            due.push(cid);
        }
        due
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.lock().queue.keys().next().map(|(at, _)| *at)
    }

    /// Calls `expire` for each connection whose deadline passes, until `stop` is cancelled.
    pub async fn run<F, Fut>(&self, stop: CancellationToken, expire: F)
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            for cid in self.pop_due(Instant::now()) {
                expire(cid).await;
            }
            // `notify_one` stores a permit when nobody waits, so a deadline added between
            // `next_deadline` and the `select!` still wakes us.
            let sleep = match self.next_deadline() {
                Some(at) => tokio::time::sleep_until(at),
                // Nothing scheduled: sleep until woken.
                None => tokio::time::sleep(std::time::Duration::from_secs(3600)),
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn replace_cancel_and_capacity() {
        let s = ExpirySchedule::new(2);
        let t0 = Instant::now();
        s.schedule("a", t0 + Duration::from_secs(10)).unwrap();
        s.schedule("b", t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(s.schedule("c", t0), Err(Full), "a third connection exceeds the capacity");
        // Replacing an existing connection's deadline is always allowed.
        s.schedule("a", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(2)), vec!["a".to_owned()]);
        assert!(s.cancel("b"));
        assert!(!s.cancel("b"));
        assert!(s.is_empty());
        assert!(s.pop_due(t0 + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn equal_deadlines_are_kept_apart_and_popped_in_order() {
        let s = ExpirySchedule::new(10);
        let t = Instant::now();
        s.schedule("x", t).unwrap();
        s.schedule("y", t).unwrap();
        s.schedule("z", t - Duration::from_millis(1)).unwrap();
        assert_eq!(s.pop_due(t), vec!["z".to_owned(), "x".to_owned(), "y".to_owned()]);
    }

    #[tokio::test(start_paused = true)]
    async fn runner_fires_at_the_deadline_and_wakes_for_earlier_ones() {
        let s = Arc::new(ExpirySchedule::new(10));
        let fired = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
        let stop = CancellationToken::new();
        let start = Instant::now();
        s.schedule("late", start + Duration::from_secs(60)).unwrap();
        let runner = {
            let (s, fired, stop) = (s.clone(), fired.clone(), stop.clone());
            tokio::spawn(async move {
                s.run(stop, |cid| {
                    let fired = fired.clone();
                    async move { fired.lock().unwrap().push((cid, Instant::now())) }
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Added while the runner sleeps towards the later deadline.
        s.schedule("early", start + Duration::from_secs(5)).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        {
            let f = fired.lock().unwrap();
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].0, "early");
            assert!(f[0].1 - start >= Duration::from_secs(5) && f[0].1 - start < Duration::from_secs(6));
        }
        // A replaced deadline fires only at its new time.
        s.schedule("late", start + Duration::from_secs(30)).unwrap();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(fired.lock().unwrap().len(), 2);
        assert!(s.is_empty());
        stop.cancel();
        runner.await.unwrap();
    }
}
