//! Gateway configuration: Resgate's JSON keys and command-line flags, with Resgate's defaults,
//! plus resgate-rs extensions. Precedence: defaults < config file < `RESGATE_*` environment <
//! flags.

use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// How the HTTP API renders resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiEncoding {
    /// References inlined as `{"href": ..., "model": ...}`.
    #[default]
    Json,
    /// References inlined directly.
    JsonFlat,
}

impl std::str::FromStr for ApiEncoding {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(ApiEncoding::Json),
            "jsonflat" => Ok(ApiEncoding::JsonFlat),
            _ => Err(ConfigError::Invalid(format!(
                "invalid apiEncoding setting ({s}) - must be either 'json' or 'jsonflat'"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("error reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("error parsing config file {path}: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// The gateway configuration. JSON keys are Resgate's (camelCase); the extensions are marked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Config {
    pub nats_url: String,
    pub nats_creds: Option<PathBuf>,
    pub nats_cert: Option<PathBuf>,
    pub nats_key: Option<PathBuf>,
    #[serde(rename = "natsRootCAs")]
    pub nats_root_cas: Vec<PathBuf>,
    /// NATS request timeout in milliseconds.
    pub request_timeout: u64,
    /// Capacity of each NATS subscription's message buffer.
    pub buffer_size: usize,
    pub addr: String,
    /// HTTP/WebSocket port; 0 picks a free port (for tests; config files and flags map 0 to
    /// Resgate's default 8080).
    pub port: u16,
    /// OpenMetrics port; `None` is off. `Some(0)` picks a free port (tests).
    #[serde(deserialize_with = "metrics_port", serialize_with = "ser_metrics_port")]
    pub metrics_port: Option<u16>,
    pub ws_path: String,
    pub api_path: String,
    pub api_encoding: ApiEncoding,
    pub header_auth: Option<String>,
    pub ws_header_auth: Option<String>,
    /// `["*"]` or a list of origins (`scheme://host[:port]`).
    #[serde(deserialize_with = "origins")]
    pub allow_origin: Vec<String>,
    pub put_method: Option<String>,
    pub delete_method: Option<String>,
    pub patch_method: Option<String>,
    pub ws_compression: bool,
    pub reset_throttle: usize,
    pub reference_throttle: usize,
    pub tls: bool,
    /// Resgate's JSON key for the certificate is `certFile` (its README says `tlsCert`).
    #[serde(rename = "certFile", alias = "tlsCert")]
    pub tls_cert: Option<PathBuf>,
    #[serde(rename = "keyFile", alias = "tlsKey")]
    pub tls_key: Option<PathBuf>,
    pub debug: bool,
    pub trace: bool,

    // resgate-rs extensions.
    /// Bytes queued for one client before it is disconnected as too slow.
    pub max_outbound_bytes: usize,
    /// Largest WebSocket message accepted from a client.
    pub max_inbound_frame: usize,
    /// WebSocket ping interval in milliseconds (0 = off).
    pub ping_interval: u64,
    /// A client that sends nothing (not even a pong) for this many milliseconds is closed; only
    /// complete WebSocket frames count. Also the most an HTTP request body may take to arrive.
    pub idle_timeout: u64,
    /// How long an unsubscribed resource stays cached, in milliseconds.
    pub unsubscribe_delay: u64,
    /// How long SIGTERM waits for clients to close, in milliseconds.
    pub drain_timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_creds: None,
            nats_cert: None,
            nats_key: None,
            nats_root_cas: Vec::new(),
            request_timeout: 3000,
            buffer_size: 8192,
            addr: "0.0.0.0".into(),
            port: 8080,
            metrics_port: None,
            ws_path: "/".into(),
            api_path: "/api/".into(),
            api_encoding: ApiEncoding::Json,
            header_auth: None,
            ws_header_auth: None,
            allow_origin: vec!["*".into()],
            put_method: None,
            delete_method: None,
            patch_method: None,
            ws_compression: false,
            reset_throttle: 0,
            reference_throttle: 0,
            tls: false,
            tls_cert: None,
            tls_key: None,
            debug: false,
            trace: false,
            max_outbound_bytes: 1 << 20,
            max_inbound_frame: 1 << 20,
            ping_interval: 30_000,
            idle_timeout: 90_000,
            unsubscribe_delay: 5_000,
            drain_timeout: 10_000,
        }
    }
}

fn metrics_port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let p = Option::<u16>::deserialize(d)?;
    Ok(p.filter(|&p| p != 0))
}

fn ser_metrics_port<S: serde::Serializer>(p: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(p.unwrap_or(0))
}

/// `allowOrigin` is a string in Resgate's JSON: `"*"` or origins separated by `;`.
fn origins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Origins {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Origins>::deserialize(d)? {
        None => vec!["*".into()],
        Some(Origins::One(s)) => split_origins(&s),
        Some(Origins::Many(v)) => v.iter().flat_map(|s| split_origins(s)).collect(),
    })
}

fn split_origins(s: &str) -> Vec<String> {
    s.split(';').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect()
}

impl Config {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout)
    }

    /// Normalises and validates, as Resgate does at start.
    pub fn prepare(&mut self) -> Result<(), ConfigError> {
        if self.request_timeout <= 10 {
            // Resgate's deprecated seconds form.
            tracing::warn!(
                value = self.request_timeout,
                "requestTimeout <= 10 is read as seconds (deprecated); use milliseconds"
            );
            self.request_timeout *= 1000;
        }
        if !self.ws_path.starts_with('/') {
            self.ws_path.insert(0, '/');
        }
        if !self.api_path.starts_with('/') {
            self.api_path.insert(0, '/');
        }
        if !self.api_path.ends_with('/') {
            self.api_path.push('/');
        }
        if self.allow_origin.is_empty() {
            self.allow_origin = vec!["*".into()];
        }
        for o in &self.allow_origin {
            if o != "*" && !valid_origin(o) {
                return Err(ConfigError::Invalid(format!("invalid allowOrigin setting ({o})")));
            }
        }
        if self.allow_origin.len() > 1 && self.allow_origin.iter().any(|o| o == "*") {
            return Err(ConfigError::Invalid(
                "invalid allowOrigin setting: '*' cannot be combined with origins".into(),
            ));
        }
        if self.tls && (self.tls_cert.is_none() || self.tls_key.is_none()) {
            return Err(ConfigError::Invalid("missing TLS certificate or key file (--tlscert, --tlskey)".into()));
        }
        if self.nats_cert.is_some() != self.nats_key.is_some() {
            return Err(ConfigError::Invalid("natsCert and natsKey must be set together".into()));
        }
        if self.metrics_port.is_some_and(|m| m != 0 && m == self.port) {
            return Err(ConfigError::Invalid(format!("metricsPort must not be the same as port ({})", self.port)));
        }
        if self.addr.parse::<std::net::IpAddr>().is_err() && !self.addr.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "invalid addr setting ({}) - must be a valid IPv4 or IPv6 address",
                self.addr
            )));
        }
        for (name, m) in [
            ("putMethod", &self.put_method),
            ("deleteMethod", &self.delete_method),
            ("patchMethod", &self.patch_method),
        ] {
            if let Some(m) = m
                && !res_protocol::is_valid_rid_part(m)
            {
                return Err(ConfigError::Invalid(format!("invalid {name} setting ({m})")));
            }
        }
        for (name, a) in [("headerAuth", &self.header_auth), ("wsHeaderAuth", &self.ws_header_auth)] {
            if let Some(a) = a
                && (a
                    .rsplit_once('.')
                    .is_none_or(|(rid, m)| !res_protocol::is_valid_rid(rid) || !res_protocol::is_valid_rid_part(m)))
            {
                return Err(ConfigError::Invalid(format!("invalid {name} setting ({a})")));
            }
        }
        if self.max_outbound_bytes == 0 || self.max_inbound_frame == 0 {
            return Err(ConfigError::Invalid("maxOutboundBytes and maxInboundFrame must be positive".into()));
        }
        Ok(())
    }
}

fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else { return false };
    !scheme.is_empty() && !rest.is_empty() && !rest.contains('/') && o.is_ascii()
}

/// Command-line flags, named as Resgate's. Each also reads a `RESGATE_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "resgate-rs",
    about = "A RES gateway: WebSocket and HTTP clients, NATS services",
    disable_version_flag = true
)]
pub struct Cli {
    /// NATS Server URL
    #[arg(short = 'n', long = "nats", env = "RESGATE_NATS_URL", value_name = "URL")]
    pub nats: Option<String>,
    /// Bind to HOST address
    #[arg(short = 'i', long = "addr", env = "RESGATE_ADDR", value_name = "HOST")]
    pub addr: Option<String>,
    /// HTTP port for client connections
    #[arg(short = 'p', long = "port", env = "RESGATE_PORT")]
    pub port: Option<u16>,
    /// WebSocket path for clients
    #[arg(short = 'w', long = "wspath", env = "RESGATE_WSPATH", value_name = "PATH")]
    pub ws_path: Option<String>,
    /// Web resource path for clients
    #[arg(short = 'a', long = "apipath", env = "RESGATE_APIPATH", value_name = "PATH")]
    pub api_path: Option<String>,
    /// Timeout in milliseconds for NATS requests
    #[arg(short = 'r', long = "reqtimeout", env = "RESGATE_REQUEST_TIMEOUT", value_name = "MS")]
    pub request_timeout: Option<u64>,
    /// HTTP port for OpenMetrics connections (0 = disabled)
    #[arg(short = 'm', long = "metricsport", env = "RESGATE_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Resource method for header authentication
    #[arg(short = 'u', long = "headauth", env = "RESGATE_HEADAUTH", value_name = "METHOD")]
    pub header_auth: Option<String>,
    /// Resource method for WebSocket header authentication
    #[arg(short = 't', long = "wsheadauth", env = "RESGATE_WSHEADAUTH", value_name = "METHOD")]
    pub ws_header_auth: Option<String>,
    /// Allowed origin(s): '*' or a ';'-separated list (repeatable)
    #[arg(long = "alloworigin", env = "RESGATE_ALLOW_ORIGIN", value_name = "ORIGIN")]
    pub allow_origin: Vec<String>,
    /// Call method name mapped to HTTP PUT requests
    #[arg(long = "putmethod", env = "RESGATE_PUT_METHOD", value_name = "METHOD")]
    pub put_method: Option<String>,
    /// Call method name mapped to HTTP DELETE requests
    #[arg(long = "deletemethod", env = "RESGATE_DELETE_METHOD", value_name = "METHOD")]
    pub delete_method: Option<String>,
    /// Call method name mapped to HTTP PATCH requests
    #[arg(long = "patchmethod", env = "RESGATE_PATCH_METHOD", value_name = "METHOD")]
    pub patch_method: Option<String>,
    /// Encoding for web resources: json, jsonflat
    #[arg(long = "apiencoding", env = "RESGATE_API_ENCODING", value_name = "TYPE")]
    pub api_encoding: Option<String>,
    /// Enable WebSocket per message compression
    #[arg(long = "wscompression", env = "RESGATE_WS_COMPRESSION")]
    pub ws_compression: bool,
    /// Limit on parallel requests sent in response to a system reset
    #[arg(long = "resetthrottle", env = "RESGATE_RESET_THROTTLE")]
    pub reset_throttle: Option<usize>,
    /// Limit on parallel requests sent when following resource references
    #[arg(long = "referencethrottle", env = "RESGATE_REFERENCE_THROTTLE")]
    pub reference_throttle: Option<usize>,
    /// Enable TLS for HTTP
    #[arg(long = "tls", env = "RESGATE_TLS")]
    pub tls: bool,
    /// HTTP server certificate file
    #[arg(long = "tlscert", env = "RESGATE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key for HTTP server certificate
    #[arg(long = "tlskey", env = "RESGATE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// NATS User Credentials file
    #[arg(long = "creds", env = "RESGATE_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// NATS Client certificate file
    #[arg(long = "natscert", env = "RESGATE_NATS_CERT", value_name = "FILE")]
    pub nats_cert: Option<PathBuf>,
    /// NATS Client certificate key file
    #[arg(long = "natskey", env = "RESGATE_NATS_KEY", value_name = "FILE")]
    pub nats_key: Option<PathBuf>,
    /// NATS Root CA file(s) (repeatable)
    #[arg(long = "natsrootca", env = "RESGATE_NATS_ROOT_CA", value_name = "FILE")]
    pub nats_root_ca: Vec<PathBuf>,
    /// Configuration file (JSON); created with defaults when missing, as Resgate does
    #[arg(short = 'c', long = "config", env = "RESGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Enable debugging output
    #[arg(short = 'D', long = "debug", env = "RESGATE_DEBUG")]
    pub debug: bool,
    /// Enable trace logging
    #[arg(short = 'V', long = "trace", env = "RESGATE_TRACE")]
    pub trace: bool,
    /// Print version information
    #[arg(short = 'v', long = "version")]
    pub version: bool,
    /// Bytes queued for one client before it is disconnected as slow (resgate-rs)
    #[arg(long = "maxoutbound", env = "RESGATE_MAX_OUTBOUND_BYTES", value_name = "BYTES")]
    pub max_outbound_bytes: Option<usize>,
    /// Largest WebSocket message accepted from a client (resgate-rs)
    #[arg(long = "maxframe", env = "RESGATE_MAX_INBOUND_FRAME", value_name = "BYTES")]
    pub max_inbound_frame: Option<usize>,
    /// WebSocket ping interval in milliseconds, 0 = off (resgate-rs)
    #[arg(long = "pinginterval", env = "RESGATE_PING_INTERVAL", value_name = "MS")]
    pub ping_interval: Option<u64>,
    /// Close clients silent for this many milliseconds (resgate-rs)
    #[arg(long = "idletimeout", env = "RESGATE_IDLE_TIMEOUT", value_name = "MS")]
    pub idle_timeout: Option<u64>,
}

impl Cli {
    /// Builds the configuration: defaults, then the file (created when missing), then flags.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice::<Config>(&bytes)
                    .map_err(|source| ConfigError::Parse { path: path.clone(), source })?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let cfg = Config::default();
                    let json = serde_json::to_vec_pretty(&cfg).expect("config serializes");
                    std::fs::write(path, json).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                    cfg
                }
                Err(source) => return Err(ConfigError::Read { path: path.clone(), source }),
            },
            None => Config::default(),
        };
        if cfg.port == 0 {
            cfg.port = 8080;
        }
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => { $(if let Some(v) = self.$flag { cfg.$field = v; })* };
        }
        set!(nats => nats_url, addr => addr, port => port, ws_path => ws_path, api_path => api_path,
             request_timeout => request_timeout, reset_throttle => reset_throttle,
             reference_throttle => reference_throttle, max_outbound_bytes => max_outbound_bytes,
             max_inbound_frame => max_inbound_frame, ping_interval => ping_interval, idle_timeout => idle_timeout);
        if let Some(p) = self.metrics_port {
            cfg.metrics_port = (p != 0).then_some(p);
        }
        macro_rules! set_opt {
            ($($flag:ident => $field:ident),*) => { $(if self.$flag.is_some() { cfg.$field = self.$flag; })* };
        }
        set_opt!(header_auth => header_auth, ws_header_auth => ws_header_auth, put_method => put_method,
                 delete_method => delete_method, patch_method => patch_method, tls_cert => tls_cert,
                 tls_key => tls_key, creds => nats_creds, nats_cert => nats_cert, nats_key => nats_key);
        if !self.allow_origin.is_empty() {
            cfg.allow_origin = self.allow_origin.iter().flat_map(|s| split_origins(s)).collect();
        }
        if !self.nats_root_ca.is_empty() {
            cfg.nats_root_cas = self.nats_root_ca;
        }
        if let Some(e) = self.api_encoding {
            cfg.api_encoding = e.parse()?;
        }
        cfg.ws_compression |= self.ws_compression;
        cfg.tls |= self.tls;
        cfg.debug |= self.debug;
        cfg.trace |= self.trace;
        cfg.prepare()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Result<Config, ConfigError> {
        let mut full = vec!["resgate-rs"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).expect("flags parse").into_config()
    }

    #[test]
    fn defaults_match_resgate() {
        let c = cli(&[]).unwrap();
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.port, 8080);
        assert_eq!(c.addr, "0.0.0.0");
        assert_eq!(c.ws_path, "/");
        assert_eq!(c.api_path, "/api/");
        assert_eq!(c.request_timeout, 3000);
        assert_eq!(c.metrics_port, None);
        assert_eq!(c.allow_origin, vec!["*"]);
        assert_eq!(c.api_encoding, ApiEncoding::Json);
    }

    #[test]
    fn flags_override() {
        let c = cli(&[
            "-n",
            "nats://x:1",
            "-p",
            "9000",
            "-w",
            "ws",
            "-a",
            "/rest",
            "-r",
            "5",
            "-m",
            "9100",
            "--alloworigin",
            "http://a.com;https://b.com",
            "--apiencoding",
            "JSONFLAT",
            "-D",
        ])
        .unwrap();
        assert_eq!(c.nats_url, "nats://x:1");
        assert_eq!(c.port, 9000);
        assert_eq!(c.ws_path, "/ws");
        assert_eq!(c.api_path, "/rest/");
        assert_eq!(c.request_timeout, 5000, "values <= 10 are seconds");
        assert_eq!(c.metrics_port, Some(9100));
        assert_eq!(c.allow_origin, vec!["http://a.com", "https://b.com"]);
        assert_eq!(c.api_encoding, ApiEncoding::JsonFlat);
        assert!(c.debug);
    }

    #[test]
    fn invalid_settings_are_errors() {
        assert!(cli(&["--apiencoding", "xml"]).is_err());
        assert!(cli(&["--alloworigin", "nope"]).is_err());
        assert!(cli(&["-p", "8080", "-m", "8080"]).is_err());
        assert!(cli(&["--tls"]).is_err());
        assert!(cli(&["--natscert", "a.pem"]).is_err());
        assert!(cli(&["-i", "not-an-ip"]).is_err());
        assert!(cli(&["-u", "bad"]).is_err());
    }

    #[test]
    fn config_file_created_then_read_with_flags_winning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg.json");
        let c = cli(&["-c", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.port, 8080);
        assert!(path.exists(), "missing config file is created with defaults");
        std::fs::write(
            &path,
            r#"{"port":7000,"natsUrl":"nats://f:2","allowOrigin":"http://x.org","certFile":"c.pem","metricsPort":0}"#,
        )
        .unwrap();
        let c = cli(&["-c", path.to_str().unwrap(), "-n", "nats://flag:3"]).unwrap();
        assert_eq!(c.port, 7000);
        assert_eq!(c.nats_url, "nats://flag:3");
        assert_eq!(c.allow_origin, vec!["http://x.org"]);
        assert_eq!(c.tls_cert.as_deref(), Some(std::path::Path::new("c.pem")));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(cli(&["-c", path.to_str().unwrap()]), Err(ConfigError::Parse { .. })));
    }
}
