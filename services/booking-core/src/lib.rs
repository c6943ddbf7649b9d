//! What the booking services share: configuration, the caller's claims, the schema and seed data,
//! the seat-map store with its per-departure ordering, the fare rule, metrics and error codes.
//!
//! # Layout
//! - [`config`]: `BOOKING_*` variables and flags.
//! - [`auth`]: the connection token of the identity service.
//! - [`db`], [`seed`]: PostgreSQL pool, embedded migrations, deterministic seed data.
//! - [`lock`]: per-key locks across instances (Redis lease + local FIFO), with doubt markers.
//! - [`redis_retry`]: one retry of a Redis command whose connection broke (Redis restarts).
//! - [`seatmap`]: holds, sales and the live seat map; the ordering argument lives there.
//! - [`outbox`]: durable domain events (transactional outbox, relay to JetStream).
//! - [`pricing`]: the fare rule.
//! - [`error`], [`metrics`], [`runtime`].

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod lock;
pub mod metrics;
pub mod outbox;
pub mod pricing;
pub mod redis_retry;
pub mod runtime;
pub mod seatmap;
pub mod seed;

pub use error::BookingError;

#[cfg(feature = "testing")]
pub mod testing;
