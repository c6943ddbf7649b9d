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

    let provider = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => Some(otlp_provider(service_name)?),
        _ => None,
    };
    let otel_layer =
        provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service_name.to_owned())));
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    }

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|e| anyhow::anyhow!("tracing already initialised: {e}"))?;
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    // The exporter reads OTEL_EXPORTER_OTLP_ENDPOINT and friends itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}
