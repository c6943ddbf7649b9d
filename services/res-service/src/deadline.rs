//! How long the caller waits for a request's reply, and how to ask it to wait longer.
//!
//! The gateway gives up on a request after its request timeout (Resgate: 3 s) unless the service
//! sends a pre-response `timeout:"<ms>"`. Work finished after that is answered to nobody: a hold
//! made then belongs to a client that was told the request timed out. So every request carries a
//! [`Deadline`]: the moment (less a margin for the reply's trip) after which its reply would
//! reach nobody. A handler either finishes its work before it, extends it with
//! [`Deadline::extend`] before starting work that may outlast it, or does not start (and undoes
//! what it cannot finish in time).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The caller's deadline of one request.
#[derive(Clone, Debug)]
pub struct Deadline {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    at: Mutex<Instant>,
    /// Where the reply goes; `None` for requests nobody waits for (and for work outside requests).
    reply: Option<(async_nats::Client, async_nats::Subject)>,
}

/// Part of a timeout kept for the reply's trip back to the caller.
fn margin(timeout: Duration) -> Duration {
    (timeout / 10).max(Duration::from_millis(50))
}

impl Deadline {
    /// The caller waits `timeout` from `received` (when the request reached the service).
    pub(crate) fn new(
        received: Instant,
        timeout: Duration,
        reply: Option<(async_nats::Client, async_nats::Subject)>,
    ) -> Deadline {
        Deadline { inner: Arc::new(Inner { at: Mutex::new(received + timeout - margin(timeout)), reply }) }
    }

    /// A deadline `d` from now that nobody can extend, for work outside a request (sweepers).
    pub fn after(d: Duration) -> Deadline {
        Deadline { inner: Arc::new(Inner { at: Mutex::new(Instant::now() + d), reply: None }) }
    }

    /// When the reply must be sent at the latest.
    pub fn at(&self) -> Instant {
        *self.inner.at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time left until the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at().saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        self.remaining().is_zero()
    }

    /// Asks the caller to wait `by` from now (a RES pre-response `timeout:"<ms>"`) and moves the
    /// deadline accordingly. Only ever lengthens it; without a reply subject (nobody waits, or the
    /// deadline was passed) it changes nothing and returns false.
    pub async fn extend(&self, by: Duration) -> bool {
        let Some((client, reply)) = &self.inner.reply else { return false };
        if self.passed() {
            // The caller has given up: a pre-response now would not revive the request.
            return false;
        }
        let at = Instant::now() + by - margin(by);
        if at <= self.at() {
            return true;
        }
        let payload = format!("timeout:\"{}\"", by.as_millis());
        if let Err(e) = client.publish(reply.clone(), payload.into()).await {
            tracing::warn!(error = %e, "publishing a timeout pre-response failed");
            return false;
        }
        *self.inner.at.lock().unwrap_or_else(PoisonError::into_inner) = at;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_deadline_keeps_a_margin_and_only_reply_subjects_extend() {
        let now = Instant::now();
        let d = Deadline::new(now, Duration::from_secs(3), None);
        assert_eq!(d.at(), now + Duration::from_millis(2700));
        assert!(!d.extend(Duration::from_secs(10)).await, "nobody to tell");
        assert_eq!(d.at(), now + Duration::from_millis(2700));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(d.passed());
        let free = Deadline::after(Duration::from_secs(1));
        assert_eq!(free.remaining(), Duration::from_secs(1));
    }
}
