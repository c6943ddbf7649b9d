//! Write RES services in Rust, on async-nats: the Rust counterpart of go-res.
//!
//! - [`Service`] owns a service name and resource patterns (`seats.departure.$id`, `a.>`); it
//!   subscribes to `get.<name>.>`, `call.<name>.>`, `access.<name>.>` and `auth.<name>.>` in a
//!   queue group named after the service, so several instances share the load.
//! - [`Handler`]: async get (model or collection), access, call and auth handlers. They run
//!   concurrently (bounded by [`Service::max_concurrency`]); every outcome becomes a reply: an
//!   error becomes a RES error, a panic `system.internalError`, an unknown resource
//!   `system.notFound`, an unknown method `system.methodNotFound`, bad params
//!   `system.invalidParams` (through [`Request::params`]).
//! - [`Events`] publishes change/add/remove/custom events, `system.reset`, connection tokens and
//!   query events. Publish the events a call causes before returning from its handler: the reply
//!   goes out after them on the same connection.
//! - Each [`Request`] has a [`Deadline`]: when its caller (the gateway, `requestTimeout`) stops
//!   waiting. Work that may outlast it is extended with a pre-response first or not started.
//! - On start and after every NATS reconnect the service publishes `system.reset` for
//!   `<name>.>` (as go-res does), so gateways never keep what a crashed instance left unsaid.
//! - Trace context from NATS headers becomes the parent of each handler's span; metrics go to a
//!   prometheus-client registry ([`Service::with_metrics`]).
//!
//! ```no_run
//! use res_service::{Handler, Resource, Service};
//! # async fn run(client: async_nats::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let svc = Service::new("example").handle(
//!     "example.model.$id",
//!     Handler::new().get(|req| async move {
//!         Resource::model(serde_json::json!({ "id": req.path("id") }))
//!     }),
//! );
//! let running = svc.start(client).await?;
//! running.shutdown().await;
//! # Ok(()) }
//! ```

mod deadline;
mod events;
mod request;
mod resource;
mod router;
mod service;

pub use deadline::Deadline;
pub use events::{EventError, Events, QueryEventItem, QueryReply};
pub use request::{Kind, Request};
pub use res_protocol::service::Access;
pub use res_protocol::{ResError, Value, code};
pub use resource::{CallResponse, Resource, collection, data, model, reference, to_value};
pub use router::{PathParams, Pattern, PatternError};
pub use service::{DEFAULT_REQUEST_TIMEOUT, Handler, Running, Service, StartError};

/// Access granting get and the listed methods (`"*"` for all).
pub fn access(get: bool, call: &str) -> Access {
    Access { get, call: call.to_owned() }
}
