//! The reports service: a durable JetStream consumer keeps a sales and occupancy read model in
//! PostgreSQL ([`model`], [`consumer`]) and serves it to operators as live RES resources
//! `reports.departure.<id>` and `reports.day.<YYYY-MM-DD>` (see `docs/API.md`).

pub mod consumer;
pub mod model;

use booking_core::BookingError;
use booking_core::auth::caller;
use booking_core::config::CommonConfig;
use booking_core::runtime::StartError;
use model::ReadModel;
use prometheus_client::registry::Registry;
use res_service::{Handler, ResError, Resource, Service};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Configuration of the reports binary (`BOOKING_REDIS_URL` is not used).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "reports", about = "Sales and occupancy reports (RES service, JetStream consumer)")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    /// Seconds JetStream waits for an ack before redelivering an event to another instance.
    #[arg(long, env = "BOOKING_REPORTS_ACK_WAIT_SECS", default_value_t = 30)]
    pub reports_ack_wait_secs: u64,
}

/// Operators may read the reports; nobody may call anything.
fn operators_only(req: &res_service::Request) -> res_service::Access {
    res_service::access(caller(req).is_some_and(|c| c.is_operator()), "")
}

/// Builds the RES service over the read model.
pub fn service(model: ReadModel) -> Service {
    let (m1, m2) = (model.clone(), model);
    Service::new("reports")
        .handle(
            "reports.departure.$id",
            Handler::new().access(|req| async move { Ok::<_, ResError>(operators_only(&req)) }).get(move |req| {
                let model = m1.clone();
                async move {
                    let dep: i64 = req.path_as("id")?;
                    Resource::model(model.departure(dep).await?)
                }
            }),
        )
        .handle(
            "reports.day.$day",
            Handler::new().access(|req| async move { Ok::<_, ResError>(operators_only(&req)) }).get(move |req| {
                let model = m2.clone();
                async move {
                    let day = chrono::NaiveDate::parse_from_str(req.path("day"), "%Y-%m-%d")
                        .map_err(|_| ResError::from(BookingError::NotFound))?;
                    Resource::model(model.day(day).await?)
                }
            }),
        )
}

/// A running reports service: RES handlers and the consumer.
pub struct Running {
    service: res_service::Running,
    cancel: CancellationToken,
    consumer: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.consumer.await;
        self.service.shutdown().await;
    }
}

/// Starts consumer and service; registers their metrics in `registry`.
pub async fn start(
    db: deadpool_postgres::Pool,
    nats: async_nats::Client,
    cfg: &Config,
    registry: &mut Registry,
) -> Result<Running, StartError> {
    let js = async_nats::jetstream::new(nats.clone());
    booking_core::outbox::ensure_stream(&js, &cfg.common.events).await?;
    let metrics = consumer::ConsumerMetrics::default();
    metrics.register(registry);
    let model = ReadModel::new(db);
    let cancel = CancellationToken::new();
    let events = res_service::Events::new(nats.clone());
    let ack_wait = Duration::from_secs(cfg.reports_ack_wait_secs.max(1));
    let consumer = consumer::Consumer { model: model.clone(), js, events, ack_wait, metrics };
    let consumer = tokio::spawn(consumer.run(cancel.clone()));
    match service(model).max_concurrency(cfg.common.max_concurrency).with_metrics(registry).start(nats).await {
        Ok(service) => Ok(Running { service, cancel, consumer }),
        Err(e) => {
            cancel.cancel();
            Err(e.into())
        }
    }
}
