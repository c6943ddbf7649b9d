//! Per-connection token expiry: a delay queue keyed by connection ID.
//!
//! The gateway keeps a connection token until someone replaces it, so a token set at login would
//! outlive the access token it came from. Each login schedules a clear at `exp` (plus the
//! validator's leeway); a newer login on the same connection replaces the entry, a logout removes
//! it. Memory is one entry per connection with a live token, capped by `capacity`.
//!
//! RES tells services nothing when a connection closes, so an entry stays until its deadline
//! even for a closed connection. To keep one user from filling the table (and locking everyone
//! else out), each user (token subject) has at most `per_user` entries: a login beyond that
//! evicts the user's entry with the earliest deadline, whose token the caller then clears (a no-op
//! for a closed connection; a live one signs in again).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The schedule is full: the connection's token could not be given an expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

type Key = (Instant, u64);

#[derive(Default)]
struct State {
    /// Deadline key and user of each connection.
    by_cid: HashMap<String, (Key, String)>,
    /// Ordered by deadline; `seq` makes keys unique when two deadlines are equal.
    queue: BTreeMap<Key, String>,
    /// Each user's entries, by deadline.
    by_user: HashMap<String, BTreeMap<Key, String>>,
    seq: u64,
}

impl State {
    fn remove(&mut self, cid: &str) -> bool {
        match self.by_cid.remove(cid) {
            Some((key, user)) => {
                self.queue.remove(&key);
                if let Some(entries) = self.by_user.get_mut(&user) {
                    entries.remove(&key);
                    if entries.is_empty() {
                        self.by_user.remove(&user);
                    }
                }
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
    per_user: usize,
}

impl std::fmt::Debug for ExpirySchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpirySchedule")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("per_user", &self.per_user)
            .finish()
    }
}

impl ExpirySchedule {
    pub fn new(capacity: usize, per_user: usize) -> ExpirySchedule {
        ExpirySchedule {
            state: Mutex::default(),
            wake: Notify::new(),
            capacity: capacity.max(1),
            per_user: per_user.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets (or replaces) the deadline of `cid`, a connection of `user`. Returns the connection
    /// evicted to keep the user within `per_user` entries, if any (its token must be cleared).
    /// Fails only when a new connection would exceed the capacity; replacing an existing entry
    /// always succeeds.
    pub fn schedule(&self, cid: &str, user: &str, at: Instant) -> Result<Option<String>, Full> {
        let mut s = self.lock();
        let replaced = s.remove(cid);
        let evicted = match s.by_user.get(user) {
            Some(entries) if entries.len() >= self.per_user => entries.first_key_value().map(|(_, c)| c.clone()),
            _ => None,
        };
        if let Some(old) = &evicted {
            s.remove(old);
        }
        if !replaced && evicted.is_none() && s.by_cid.len() >= self.capacity {
            return Err(Full);
        }
        s.seq += 1;
        let key = (at, s.seq);
        s.by_cid.insert(cid.to_owned(), (key, user.to_owned()));
        s.queue.insert(key, cid.to_owned());
        s.by_user.entry(user.to_owned()).or_default().insert(key, cid.to_owned());
        drop(s);
        self.wake.notify_one();
        Ok(evicted)
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
        self.lock().by_cid.get(cid).map(|((at, _), _)| *at)
    }

    /// Removes and returns every connection due at `now`, earliest first.
    pub fn pop_due(&self, now: Instant) -> Vec<String> {
        let mut s = self.lock();
        let mut due = Vec::new();
        while let Some(((at, _), cid)) = s.queue.first_key_value().map(|(k, c)| (*k, c.clone())) {
            if at > now {
                break;
            }
            s.remove(&cid);
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
        let s = ExpirySchedule::new(2, 10);
        let t0 = Instant::now();
        s.schedule("a", "u1", t0 + Duration::from_secs(10)).unwrap();
        s.schedule("b", "u2", t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(s.schedule("c", "u3", t0), Err(Full), "a third connection exceeds the capacity");
        // Replacing an existing connection's deadline is always allowed.
        s.schedule("a", "u1", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.pop_due(t0 + Duration::from_secs(2)), vec!["a".to_owned()]);
        assert!(s.cancel("b"));
        assert!(!s.cancel("b"));
        assert!(s.is_empty());
        assert!(s.pop_due(t0 + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn equal_deadlines_are_kept_apart_and_popped_in_order() {
        let s = ExpirySchedule::new(10, 10);
        let t = Instant::now();
        s.schedule("x", "u", t).unwrap();
        s.schedule("y", "u", t).unwrap();
        s.schedule("z", "u", t - Duration::from_millis(1)).unwrap();
        assert_eq!(s.pop_due(t), vec!["z".to_owned(), "x".to_owned(), "y".to_owned()]);
    }

    #[test]
    fn one_user_cannot_lock_others_out() {
        let s = ExpirySchedule::new(5, 3);
        let t0 = Instant::now();
        // One user opening (and closing) connection after connection: the table never holds more
        // than three of theirs; each new one evicts their earliest.
        for i in 0..50u64 {
            let evicted = s.schedule(&format!("m{i}"), "mallory", t0 + Duration::from_secs(100 + i)).unwrap();
            assert_eq!(evicted, (i >= 3).then(|| format!("m{}", i - 3)));
        }
        assert_eq!(s.len(), 3);
        // Everyone else still signs in.
        s.schedule("a", "alice", t0 + Duration::from_secs(10)).unwrap();
        s.schedule("b", "bob", t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(s.schedule("c", "carol", t0), Err(Full), "the global cap still holds");
        assert!(s.cancel("m49"));
        assert_eq!(s.len(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn runner_fires_at_the_deadline_and_wakes_for_earlier_ones() {
        let s = Arc::new(ExpirySchedule::new(10, 10));
        let fired = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
        let stop = CancellationToken::new();
        let start = Instant::now();
        s.schedule("late", "u", start + Duration::from_secs(60)).unwrap();
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
        s.schedule("early", "u", start + Duration::from_secs(5)).unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        {
            let f = fired.lock().unwrap();
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].0, "early");
            assert!(f[0].1 - start >= Duration::from_secs(5) && f[0].1 - start < Duration::from_secs(6));
        }
        // A replaced deadline fires only at its new time.
        s.schedule("late", "u", start + Duration::from_secs(30)).unwrap();
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(fired.lock().unwrap().len(), 2);
        assert!(s.is_empty());
        stop.cancel();
        runner.await.unwrap();
    }
}
