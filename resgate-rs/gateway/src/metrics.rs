//! Gateway metrics, with Resgate's metric names plus latency histograms and resilience counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~6.5 s: covers cached replies through request timeouts.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 18))
}

pub struct Metrics {
    pub ws_current_connections: Gauge,
    pub ws_connections: Counter,
    pub ws_requests: Family<MethodLabel, Counter>,
    pub http_requests: Family<MethodLabel, Counter>,
    pub cache_resources: Gauge,
    pub cache_subscriptions: Gauge,
    pub client_request_duration: HistogramFamily<MethodLabel>,
    pub nats_request_duration: HistogramFamily<KindLabel>,
    pub events_received: Counter,
    pub event_deliveries: Counter,
    pub slow_client_disconnects: Counter,
    pub nats_slow_consumer: Counter,
    pub nats_reconnects: Counter,
    /// Re-fetches of cached resources that no service answered (tried again with backoff).
    pub cache_refetch_retries: Counter,
    /// Events written to a socket by the fan-out itself (direct delivery), and those of them
    /// that the socket did not take whole (the connection task wrote the rest).
    pub direct_deliveries: Counter,
    pub direct_partial_writes: Counter,
    pub nats_connected: Gauge,
    /// The series of the client request methods, resolved once: a family lookup hashes the
    /// label set and takes a lock, on every request.
    ws_request_series: Vec<(&'static str, Counter)>,
    duration_series: Vec<(&'static str, Histogram)>,
}

/// Methods counted by `ws_requests` and timed by `client_request_duration`.
const WS_METHODS: [&str; 5] = ["subscribe", "unsubscribe", "get", "call", "auth"];

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let mut m = Metrics {
            ws_current_connections: Gauge::default(),
            ws_connections: Counter::default(),
            ws_requests: Family::default(),
            http_requests: Family::default(),
            cache_resources: Gauge::default(),
            cache_subscriptions: Gauge::default(),
            client_request_duration: Family::new_with_constructor(latency_histogram),
            nats_request_duration: Family::new_with_constructor(latency_histogram),
            events_received: Counter::default(),
            event_deliveries: Counter::default(),
            slow_client_disconnects: Counter::default(),
            nats_slow_consumer: Counter::default(),
            nats_reconnects: Counter::default(),
            cache_refetch_retries: Counter::default(),
            direct_deliveries: Counter::default(),
            direct_partial_writes: Counter::default(),
            nats_connected: Gauge::default(),
            ws_request_series: Vec::new(),
            duration_series: Vec::new(),
        };
        for method in WS_METHODS {
            m.ws_request_series.push((method, m.ws_requests.get_or_create(&MethodLabel { method }).clone()));
            m.duration_series.push((method, m.client_request_duration.get_or_create(&MethodLabel { method }).clone()));
        }
        registry.register(
            "resgate",
            "resgate-rs version and RES protocol version",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_owned()),
                ("protocol", res_protocol::ProtocolVersion::CURRENT.to_string()),
            ]),
        );
        registry.register(
            "resgate_ws_current_connections",
            "Current established WebSocket connections",
            m.ws_current_connections.clone(),
        );
        registry.register(
            "resgate_ws_connections",
            "Total established WebSocket connections",
            m.ws_connections.clone(),
        );
        registry.register("resgate_ws_requests", "Total WebSocket client requests", m.ws_requests.clone());
        registry.register("resgate_http_requests", "Total HTTP client requests", m.http_requests.clone());
        registry.register(
            "resgate_cache_resources",
            "Current number of resources stored in the cache",
            m.cache_resources.clone(),
        );
        registry.register(
            "resgate_cache_subscriptions",
            "Current number of subscriptions on cached resources",
            m.cache_subscriptions.clone(),
        );
        registry.register(
            "resgate_client_request_duration_seconds",
            "Client request latency",
            m.client_request_duration.clone(),
        );
        registry.register(
            "resgate_nats_request_duration_seconds",
            "NATS request latency",
            m.nats_request_duration.clone(),
        );
        registry.register("resgate_events_received", "Resource events received from NATS", m.events_received.clone());
        registry.register("resgate_event_deliveries", "Event frames queued to clients", m.event_deliveries.clone());
        registry.register(
            "resgate_slow_client_disconnects",
            "Clients disconnected for exceeding their outbound queue",
            m.slow_client_disconnects.clone(),
        );
        registry.register("resgate_nats_slow_consumer", "NATS slow-consumer conditions", m.nats_slow_consumer.clone());
        registry.register("resgate_nats_reconnects", "NATS reconnections", m.nats_reconnects.clone());
        registry.register(
            "resgate_direct_deliveries",
            "Events written to a client's socket by the fan-out itself",
            m.direct_deliveries.clone(),
        );
        registry.register(
            "resgate_direct_partial_writes",
            "Direct deliveries the socket did not take whole (the connection wrote the rest)",
            m.direct_partial_writes.clone(),
        );
        registry.register(
            "resgate_cache_refetch_retries",
            "Re-fetches of cached resources that no service answered, tried again",
            m.cache_refetch_retries.clone(),
        );
        registry.register("resgate_nats_connected", "1 while connected to NATS", m.nats_connected.clone());
        m
    }
}

impl Metrics {
    /// Counts a WebSocket client request.
    pub fn count_ws_request(&self, method: &'static str) {
        match self.ws_request_series.iter().find(|(m, _)| *m == method) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                self.ws_requests.get_or_create(&MethodLabel { method }).inc();
            }
        }
    }

    /// Records a client request's duration.
    pub fn observe_request(&self, method: &'static str, seconds: f64) {
        match self.duration_series.iter().find(|(m, _)| *m == method) {
            Some((_, h)) => h.observe(seconds),
            None => self.client_request_duration.get_or_create(&MethodLabel { method }).observe(seconds),
        }
    }
}
