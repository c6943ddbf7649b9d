//! Configuration shared by every booking service: `BOOKING_*` environment variables and the
//! matching CLI flags.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("set BOOKING_DATABASE_URL or BOOKING_DATABASE_URL_FILE")]
    NoDatabaseUrl,
    #[error("read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
}

/// Connections and the admin endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// NATS server URL.
    #[arg(long, env = "BOOKING_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// PostgreSQL URL (or use the _FILE variant for a secret file).
    #[arg(long, env = "BOOKING_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the PostgreSQL URL (Docker/Swarm secrets).
    #[arg(long, env = "BOOKING_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// Redis (or KeyDB) URL.
    #[arg(long, env = "BOOKING_REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// Address of the admin endpoint (/metrics, /healthz).
    #[arg(long, env = "BOOKING_ADMIN_ADDR", default_value = "0.0.0.0:9100")]
    pub admin_addr: SocketAddr,
    /// RES requests handled at once by one instance.
    #[arg(long, env = "BOOKING_MAX_CONCURRENCY", default_value_t = 256)]
    pub max_concurrency: usize,
    /// PostgreSQL connections per instance.
    #[arg(long, env = "BOOKING_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    #[command(flatten)]
    pub events: EventsConfig,
}

/// The durable domain events: the `BOOKING_EVENTS` JetStream stream and the outbox relay.
#[derive(Debug, Clone, clap::Args)]
pub struct EventsConfig {
    /// Seconds the stream keeps an event (0: forever).
    #[arg(long, env = "BOOKING_EVENTS_MAX_AGE_SECS", default_value_t = 30 * 24 * 3600)]
    pub events_max_age_secs: u64,
    /// Seconds in which the stream drops a re-published event ID (covers a relay crash between
    /// the publish and marking the row sent).
    #[arg(long, env = "BOOKING_EVENTS_DUPLICATE_WINDOW_SECS", default_value_t = 600)]
    pub events_duplicate_window_secs: u64,
    /// Stream replicas (3 on the 3-node cluster).
    #[arg(long, env = "BOOKING_EVENTS_REPLICAS", default_value_t = 1)]
    pub events_replicas: usize,
    /// How often the idle relay looks for rows other instances wrote (its own wake it at once), in
    /// ms: the lag of their events. Standbys try to take over once a second.
    #[arg(long, env = "BOOKING_OUTBOX_POLL_MS", default_value_t = 25)]
    pub outbox_poll_ms: u64,
    /// Hours a published row stays in the outbox table before the relay deletes it.
    #[arg(long, env = "BOOKING_OUTBOX_KEEP_HOURS", default_value_t = 24)]
    pub outbox_keep_hours: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            events_max_age_secs: 30 * 24 * 3600,
            events_duplicate_window_secs: 600,
            events_replicas: 1,
            outbox_poll_ms: 25,
            outbox_keep_hours: 24,
        }
    }
}

impl CommonConfig {
    /// The database URL, from the variable or the file (trailing whitespace trimmed).
    pub fn database_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.database_url {
            return Ok(url.clone());
        }
        let path = self.database_url_file.as_ref().ok_or(ConfigError::NoDatabaseUrl)?;
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|source| ConfigError::ReadFile { path: path.clone(), source })
    }
}

/// Rules for holds, shared by seats (which creates them) and tickets (which consumes them).
#[derive(Debug, Clone, clap::Args)]
pub struct HoldConfig {
    /// Seconds a hold lasts before its seats are freed.
    #[arg(long, env = "BOOKING_HOLD_TTL_SECS", default_value_t = 600)]
    pub hold_ttl_secs: u64,
    /// Most seats one hold may take.
    #[arg(long, env = "BOOKING_MAX_SEATS_PER_HOLD", default_value_t = 8)]
    pub max_seats_per_hold: usize,
    /// Most seats one user may hold at once, over all their holds (any departure, tab or device).
    #[arg(long, env = "BOOKING_MAX_HELD_SEATS_PER_USER", default_value_t = 8)]
    pub max_held_seats_per_user: usize,
    /// Seconds a purchase may take before the sweeper settles its hold (after a crash).
    #[arg(long, env = "BOOKING_PURCHASE_TIMEOUT_SECS", default_value_t = 120)]
    pub purchase_timeout_secs: u64,
    /// How often the sweeper looks for expired holds, in milliseconds.
    #[arg(long, env = "BOOKING_SWEEP_INTERVAL_MS", default_value_t = 500)]
    pub sweep_interval_ms: u64,
    /// How long callers wait for a reply, in milliseconds: the gateway's `requestTimeout`
    /// (at most; a larger value lets holds be made for callers that have given up).
    #[arg(long, env = "BOOKING_REQUEST_TIMEOUT_MS", default_value_t = 3000)]
    pub request_timeout_ms: u64,
    /// Every this many seconds one instance resets every seat map (a safety net; 0 = never).
    #[arg(long, env = "BOOKING_RESYNC_SECS", default_value_t = 300)]
    pub resync_secs: u64,
}

impl HoldConfig {
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

impl Default for HoldConfig {
    fn default() -> Self {
        HoldConfig {
            hold_ttl_secs: 600,
            max_seats_per_hold: 8,
            max_held_seats_per_user: 8,
            purchase_timeout_secs: 120,
            sweep_interval_ms: 500,
            request_timeout_ms: 3000,
            resync_secs: 300,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonConfig,
        #[command(flatten)]
        hold: HoldConfig,
    }

    #[test]
    fn flags_and_database_url_file() {
        let dir = tempfile_dir();
        let file = dir.join("db-url");
        std::fs::write(&file, "postgres://x@h/db\n").unwrap();
        let cli =
            Cli::try_parse_from(["x", "--database-url-file", file.to_str().unwrap(), "--hold-ttl-secs", "5"]).unwrap();
        assert_eq!(cli.common.database_url().unwrap(), "postgres://x@h/db");
        assert_eq!(cli.hold.hold_ttl_secs, 5);
        assert_eq!(cli.common.admin_addr.port(), 9100);
        let none = Cli::try_parse_from(["x"]).unwrap();
        if std::env::var_os("BOOKING_DATABASE_URL").is_none() && std::env::var_os("BOOKING_DATABASE_URL_FILE").is_none()
        {
            assert!(matches!(none.common.database_url(), Err(ConfigError::NoDatabaseUrl)));
        }
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("booking-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
