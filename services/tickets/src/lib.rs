//! The tickets service: purchase from a hold through a payment provider, orders and tickets in
//! PostgreSQL, "my tickets" as a live collection only its owner (or an operator) may read,
//! cancellation with refund, and the order domain events (outbox rows relayed to JetStream). See
//! `docs/API.md`.

pub mod orders;
pub mod payment;

use booking_core::auth::{Claims, caller, require_caller};
use booking_core::config::{CommonConfig, HoldConfig};
use booking_core::lock::Locks;
use booking_core::metrics::BookingMetrics;
use booking_core::runtime::{Deps, StartError};
use booking_core::seatmap::SeatStore;
use orders::{Orders, PurchaseParams};
use payment::PaymentProvider;
use prometheus_client::registry::Registry;
use res_service::{Access, CallResponse, Handler, ResError, Resource, Service};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Configuration of the tickets binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tickets", about = "Orders and tickets (RES service)")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub holds: HoldConfig,
    /// Payment provider; `test` is the built-in sandbox (card numbers decide the outcome).
    #[arg(long, env = "BOOKING_PAYMENT_PROVIDER", default_value = "test", value_parser = ["test"])]
    pub payment_provider: String,
    /// Tests only: abort the process right after a purchase or cancel commits.
    #[arg(long, env = "BOOKING_TEST_ABORT_AFTER_COMMIT", hide = true)]
    pub test_abort_after_commit: Option<orders::AbortAfter>,
}

fn denied() -> Access {
    res_service::access(false, "")
}

/// Whether `who` may see orders of `owner`.
fn may_see(who: Option<&Claims>, owner: &str) -> bool {
    who.is_some_and(|c| c.sub == owner || c.is_operator())
}

/// Once a list get's reply is routed, resets the list if a listing overlapped its read
/// ([`Orders::reset_list_if_moved`]); a failure is logged, the reply stands.
fn recheck_list(req: &res_service::Request, orders: &Orders, seen: i64) {
    let (orders, rid) = (orders.clone(), req.rid().to_owned());
    req.after_reply(async move {
        if let Err(e) = orders.reset_list_if_moved(&rid, seen).await {
            tracing::warn!(rid, error = %e, "checking a list after its get failed");
        }
    });
}

pub fn service(orders: Orders) -> Service {
    let (o1, o2, o3, o4, o5, o6) =
        (orders.clone(), orders.clone(), orders.clone(), orders.clone(), orders.clone(), orders);
    Service::new("tickets")
        .handle(
            "tickets.orders",
            Handler::new()
                .access(|req| async move {
                    Ok::<_, ResError>(match caller(&req) {
                        Some(c) => res_service::access(c.is_operator(), "purchase"),
                        None => denied(),
                    })
                })
                .get(move |req| {
                    let orders = o1.clone();
                    async move {
                        let seen = orders.listing_version().await?;
                        let ids = orders.list(None).await?;
                        recheck_list(&req, &orders, seen);
                        Resource::collection(
                            ids.iter().map(|id| res_service::reference(&orders::order_rid(id))).collect::<Vec<_>>(),
                        )
                    }
                })
                .call("purchase", move |req| {
                    let orders = o2.clone();
                    async move {
                        let who = require_caller(&req)?;
                        let p: PurchaseParams = req.params()?;
                        let order = orders.purchase(&who, p, req.deadline()).await?;
                        CallResponse::result(order.summary())
                    }
                }),
        )
        .handle(
            "tickets.order.$id",
            Handler::new()
                .access(move |req| {
                    let orders = o3.clone();
                    async move {
                        let who = caller(&req);
                        let Some(order) = orders.load(req.path("id")).await? else {
                            return Ok::<_, ResError>(denied());
                        };
                        Ok(if may_see(who.as_ref(), &order.user_id) {
                            res_service::access(true, "cancel")
                        } else {
                            denied()
                        })
                    }
                })
                .get(move |req| {
                    let orders = o4.clone();
                    async move {
                        let order = orders.load(req.path("id")).await?.ok_or_else(ResError::not_found)?;
                        Resource::model(order.model())
                    }
                })
                .call("cancel", move |req| {
                    let orders = o5.clone();
                    async move {
                        let who = require_caller(&req)?;
                        let order = orders.cancel(&who, req.path("id"), req.deadline()).await?;
                        CallResponse::result(order.summary())
                    }
                }),
        )
        .handle(
            "tickets.user.$sub",
            Handler::new()
                .access(|req| async move {
                    let who = caller(&req);
                    Ok::<_, ResError>(res_service::access(may_see(who.as_ref(), req.path("sub")), ""))
                })
                .get(move |req| {
                    let orders = o6.clone();
                    async move {
                        let seen = orders.listing_version().await?;
                        let ids = orders.list(Some(req.path("sub"))).await?;
                        recheck_list(&req, &orders, seen);
                        Resource::collection(
                            ids.iter().map(|id| res_service::reference(&orders::order_rid(id))).collect::<Vec<_>>(),
                        )
                    }
                }),
        )
}

/// A running tickets service: RES handlers, the settler and the outbox relay.
pub struct Running {
    service: res_service::Running,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.service.shutdown().await;
    }
}

/// Starts the service on `deps` with a payment provider; registers its metrics in `registry`.
pub async fn start(
    deps: Deps,
    holds: HoldConfig,
    payments: Arc<dyn PaymentProvider>,
    max_concurrency: usize,
    abort_after: Option<orders::AbortAfter>,
    registry: &mut Registry,
) -> Result<Running, StartError> {
    let metrics = BookingMetrics::default();
    metrics.register_sales(registry);
    let timeout = holds.request_timeout();
    let events = res_service::Events::new(deps.nats.clone());
    let store = SeatStore::new(deps.db.clone(), deps.redis.clone(), events, holds, metrics.clone());
    let locks = Locks::new(deps.redis.clone(), orders::ORDERS_LEASE, Duration::from_secs(8));
    let cancel = CancellationToken::new();
    let relay = booking_core::outbox::start_relay(&deps, store.outbox(), registry, cancel.clone()).await?;
    let orders = Orders { store, payments, locks, metrics, abort_after, redis: deps.redis.clone() };
    let settler = tokio::spawn(orders.clone().run_settler(cancel.clone()));
    let tasks = vec![relay, settler];
    let started = service(orders)
        .max_concurrency(max_concurrency)
        .request_timeout(timeout)
        .with_metrics(registry)
        .start(deps.nats)
        .await;
    match started {
        Ok(service) => Ok(Running { service, cancel, tasks }),
        Err(e) => {
            cancel.cancel();
            Err(e.into())
        }
    }
}

/// The binary's life: telemetry, connections, serve until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let _telemetry = res_telemetry::init("tickets", "info")?;
    let deps = Deps::connect(&cfg.common).await?;
    // `test` is the only provider built in (the value parser rejects others).
    let payments = Arc::new(payment::TestProvider::default());
    let mut registry = Registry::default();
    let running = start(
        deps,
        cfg.holds.clone(),
        payments,
        cfg.common.max_concurrency,
        cfg.test_abort_after_commit,
        &mut registry,
    )
    .await?;
    tracing::info!(provider = %cfg.payment_provider, "tickets service running");
    booking_core::runtime::serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
