//! Telemetry shared by every binary of the platform.
//!
//! - [`init`]: `tracing` with JSON (or human) logs on stdout, filtered by `RUST_LOG`, and OTLP
//!   traces over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (standard OpenTelemetry names, so
//!   operators configure it the way they configure everything else).
//! - [`trace_context`]: W3C trace context carried in NATS message headers, from the gateway's
//!   request spans into the services' handler spans.
//! - [`admin`]: the `/metrics` (OpenMetrics) and `/healthz` endpoint.

pub mod admin;
pub mod trace_context;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static TRACES_EXPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether spans are exported (OTLP configured). Hot paths open per-request spans only then:
/// without an exporter they would cost every request and show nowhere.
pub fn traces_exported() -> bool {
    TRACES_EXPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Log output format, from `LOG_FORMAT` (`json`, the default, or `pretty`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl LogFormat {
    fn from_env() -> LogFormat {
        match std::env::var("LOG_FORMAT").as_deref() {
            Ok("pretty" | "text" | "plain") => LogFormat::Pretty,
            _ => LogFormat::Json,
        }
    }
}

/// Keeps the trace exporter alive; flushes pending spans on drop.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Initialises logging and tracing for a binary. `default_filter` applies when `RUST_LOG` is not
/// set (e.g. `"info"`, or `"debug"` for a `-D` flag).
pub fn init(service_name: &str, default_filter: &str) -> anyhow::Result<TelemetryGuard> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty());
    init_with(service_name, default_filter, endpoint.as_deref())
}

/// [`init`] with the OTLP endpoint given (`None`: no trace export) instead of read from the
/// environment; the other `OTEL_*` settings still come from there.
pub fn init_with(
    service_name: &str,
    default_filter: &str,
    otlp_endpoint: Option<&str>,
) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt_layer = match LogFormat::from_env() {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer().compact().boxed(),
    };

    let provider = otlp_endpoint.map(|e| otlp_provider(service_name, e)).transpose()?;
    // Spans have a filter of their own (`OTEL_TRACES_FILTER`, default info): quieter logs must
    // not cut traces short.
    let otel_layer = provider.as_ref().map(|p| {
        let filter = EnvFilter::try_from_env("OTEL_TRACES_FILTER").unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.to_owned())).with_filter(filter)
    });
    if provider.is_some() {
        TRACES_EXPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }

    tracing_subscriber::registry()
        .with(fmt_layer.with_filter(filter))
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("tracing already initialised: {e}"))?;
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(service_name: &str, endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    // The standard variable names a base URL; the HTTP exporter wants the traces path.
    let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(endpoint).build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
