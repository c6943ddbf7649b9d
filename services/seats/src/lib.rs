//! The seats service: each departure's layout, its live seat map and availability, and seat
//! holds (`hold`, `release`) with expiry. Resources and methods are documented in `docs/API.md`.
//!
//! Holds live in Redis, sold seats in PostgreSQL; all transitions go through
//! [`booking_core::seatmap::SeatStore`], which keeps events in order across instances.

use booking_core::auth::{caller, require_caller};
use booking_core::config::{CommonConfig, HoldConfig};
use booking_core::metrics::BookingMetrics;
use booking_core::runtime::{Deps, StartError};
use booking_core::seatmap::SeatStore;
use prometheus_client::registry::Registry;
use res_service::{CallResponse, Handler, ResError, Resource, Service};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// Configuration of the seats binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "seats", about = "Seat maps and seat holds (RES service)")]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    #[command(flatten)]
    pub holds: HoldConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HoldParams {
    seats: Vec<String>,
    /// Makes a retry return the hold made the first time (1 to 128 characters).
    #[serde(default)]
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReleaseParams {
    hold_id: String,
}

/// Public read access; calls only with a valid token (handlers check again).
fn access(req: &res_service::Request, methods: &str) -> res_service::Access {
    res_service::access(true, if caller(req).is_some() { methods } else { "" })
}

/// Read access for the user `sub` themself or an operator.
fn own_or_operator(req: &res_service::Request, sub: &str) -> res_service::Access {
    res_service::access(caller(req).is_some_and(|c| c.sub == sub || c.is_operator()), "")
}

fn operator_only(req: &res_service::Request) -> res_service::Access {
    res_service::access(caller(req).is_some_and(|c| c.is_operator()), "")
}

fn holds_model(holds: &[booking_core::seatmap::Hold]) -> serde_json::Value {
    serde_json::json!({ "holds": res_service::data(holds) })
}

/// Once a get's reply is routed, runs `check` (a `SeatStore::reset_*_if_changed`: a change that
/// overtook the reply is followed by a reset); a failure is logged, the reply stands.
fn recheck<F>(req: &res_service::Request, check: F)
where
    F: std::future::Future<Output = Result<bool, booking_core::error::BookingError>> + Send + 'static,
{
    let rid = req.rid().to_owned();
    req.after_reply(async move {
        if let Err(e) = check.await {
            tracing::warn!(rid, error = %e, "checking a resource after its get failed");
        }
    });
}

/// [`recheck`] of the departure's map, counts and holds.
fn recheck_departure(req: &res_service::Request, store: &SeatStore, dep: i64, seen: i64) {
    let store = store.clone();
    recheck(req, async move { store.reset_departure_if_changed(dep, seen).await });
}

/// Builds the RES service over a seat store.
pub fn service(store: SeatStore) -> Service {
    let (s1, s2, s3, s4, s5) = (store.clone(), store.clone(), store.clone(), store.clone(), store.clone());
    let (s6, s7) = (store.clone(), store);
    Service::new("seats")
        .handle(
            "seats.departure.$id",
            Handler::new()
                .access(|req| async move { Ok::<_, ResError>(access(&req, "hold,release")) })
                .get(move |req| {
                    let store = s1.clone();
                    async move {
                        let dep: i64 = req.path_as("id")?;
                        let seen = store.departure_version(dep).await?;
                        let map = store.snapshot(dep).await?;
                        recheck_departure(&req, &store, dep, seen);
                        Resource::model(map.states)
                    }
                })
                .call("hold", move |req| {
                    let store = s2.clone();
                    async move {
                        let who = require_caller(&req)?;
                        let dep: i64 = req.path_as("id")?;
                        let p: HoldParams = req.params()?;
                        if p.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 128) {
                            return Err(ResError::new(
                                res_service::code::INVALID_PARAMS,
                                "idempotencyKey must have 1 to 128 characters",
                            ));
                        }
                        let key = p.idempotency_key.as_deref();
                        let hold = store.hold(dep, &who.sub, p.seats, key, req.deadline()).await?;
                        CallResponse::result(hold)
                    }
                })
                .call("release", move |req| {
                    let store = s3.clone();
                    async move {
                        let who = require_caller(&req)?;
                        let dep: i64 = req.path_as("id")?;
                        let p: ReleaseParams = req.params()?;
                        let owner = if who.is_operator() { None } else { Some(who.sub.as_str()) };
                        let seats = store.release(dep, &p.hold_id, owner, req.deadline()).await?;
                        CallResponse::result(serde_json::json!({ "holdId": p.hold_id, "seats": seats }))
                    }
                }),
        )
        .handle(
            "seats.departure.$id.layout",
            Handler::new().access(|req| async move { Ok::<_, ResError>(access(&req, "")) }).get(move |req| {
                let store = s4.clone();
                async move {
                    let dep: i64 = req.path_as("id")?;
                    let info = store.departure(dep).await?;
                    Resource::model(serde_json::json!({
                        "departureId": dep,
                        "seats": res_service::data(&info.seats),
                    }))
                }
            }),
        )
        .handle(
            "seats.departure.$id.availability",
            Handler::new().access(|req| async move { Ok::<_, ResError>(access(&req, "")) }).get(move |req| {
                let store = s5.clone();
                async move {
                    let dep: i64 = req.path_as("id")?;
                    let seen = store.departure_version(dep).await?;
                    let counts = store.snapshot(dep).await?.counts();
                    recheck_departure(&req, &store, dep, seen);
                    Resource::model(counts)
                }
            }),
        )
        .handle(
            "seats.departure.$id.holds",
            Handler::new().access(|req| async move { Ok::<_, ResError>(operator_only(&req)) }).get(move |req| {
                let store = s6.clone();
                async move {
                    let dep: i64 = req.path_as("id")?;
                    store.departure(dep).await?;
                    let seen = store.departure_version(dep).await?;
                    let holds = store.departure_holds(dep).await?;
                    recheck_departure(&req, &store, dep, seen);
                    Resource::model(holds_model(&holds))
                }
            }),
        )
        .handle(
            "seats.user.$sub.holds",
            Handler::new().access(|req| async move { Ok::<_, ResError>(own_or_operator(&req, req.path("sub"))) }).get(
                move |req| {
                    let store = s7.clone();
                    async move {
                        let owner = req.path("sub").to_owned();
                        let seen = store.user_holds_version(&owner).await?;
                        let holds = store.user_holds(&owner).await?;
                        recheck(&req, async move { store.reset_user_holds_if_changed(&owner, seen).await });
                        Resource::model(holds_model(&holds))
                    }
                },
            ),
        )
}

/// A running seats service: RES handlers, the hold sweeper and the outbox relay.
pub struct Running {
    service: res_service::Running,
    cancel: CancellationToken,
    sweeper: tokio::task::JoinHandle<()>,
    relay: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.sweeper.await;
        let _ = self.relay.await;
        self.service.shutdown().await;
    }
}

/// Starts the service on `deps`; registers its metrics in `registry`.
pub async fn start(
    deps: Deps,
    holds: HoldConfig,
    max_concurrency: usize,
    registry: &mut Registry,
) -> Result<Running, StartError> {
    let metrics = BookingMetrics::default();
    metrics.register_holds(registry);
    let timeout = holds.request_timeout();
    let store = SeatStore::new(
        deps.db.clone(),
        deps.redis.clone(),
        res_service::Events::new(deps.nats.clone()),
        holds,
        metrics,
    );
    let cancel = CancellationToken::new();
    let relay = booking_core::outbox::start_relay(&deps, store.outbox(), registry, cancel.clone()).await?;
    let sweeper = tokio::spawn(store.clone().run_sweeper(cancel.clone()));
    let started = service(store)
        .max_concurrency(max_concurrency)
        .request_timeout(timeout)
        .with_metrics(registry)
        .start(deps.nats)
        .await;
    match started {
        Ok(service) => Ok(Running { service, cancel, sweeper, relay }),
        Err(e) => {
            cancel.cancel();
            Err(e.into())
        }
    }
}

/// The binary's life: telemetry, connections, serve until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let _telemetry = res_telemetry::init("seats", "info")?;
    let deps = Deps::connect(&cfg.common).await?;
    let mut registry = Registry::default();
    let running = start(deps, cfg.holds.clone(), cfg.common.max_concurrency, &mut registry).await?;
    tracing::info!("seats service running");
    booking_core::runtime::serve_until_signal(cfg.common.admin_addr, registry, || running.shutdown()).await
}
