//! What a handler gets: the resource, its path parameters, the caller and the parameters.

use crate::deadline::Deadline;
use crate::events::Events;
use crate::router::PathParams;
use futures_util::future::BoxFuture;
use res_protocol::ResError;
use res_protocol::service::{HttpContext, IncomingRequest};
use serde::de::DeserializeOwned;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// The kind of a service request (also the `kind` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Get,
    Call,
    Auth,
    Access,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Get => "get",
            Kind::Call => "call",
            Kind::Auth => "auth",
            Kind::Access => "access",
        }
    }
}

/// One request to a handler.
#[derive(Debug, Clone)]
pub struct Request {
    pub(crate) kind: Kind,
    pub(crate) rid: String,
    pub(crate) method: Option<String>,
    pub(crate) path: PathParams,
    pub(crate) inner: IncomingRequest,
    pub(crate) events: Events,
    pub(crate) deadline: Deadline,
    pub(crate) after_reply: AfterReply,
}

/// Work a handler leaves for after its reply (see [`Request::after_reply`]); shared by the
/// request's clones and the dispatcher.
#[derive(Clone, Default)]
pub(crate) struct AfterReply(Arc<Mutex<Option<BoxFuture<'static, ()>>>>);

impl AfterReply {
    pub(crate) fn take(&self) -> Option<BoxFuture<'static, ()>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for AfterReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterReply")
    }
}

impl Request {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The resource name (without query).
    pub fn rid(&self) -> &str {
        &self.rid
    }

    /// The method of a call or auth request.
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }

    /// A path parameter bound by the pattern (`$id` → `"id"`, a `>` tail → `">"`).
    pub fn path(&self, name: &str) -> &str {
        self.path.get(name).map_or("", String::as_str)
    }

    /// A path parameter parsed; a resource ID that does not parse names no resource, so the
    /// error is `system.notFound`.
    pub fn path_as<T: FromStr>(&self, name: &str) -> Result<T, ResError> {
        self.path(name).parse().map_err(|_| ResError::not_found())
    }

    /// The query of a get or access request on a query resource.
    pub fn query(&self) -> Option<&str> {
        self.inner.query.as_deref().filter(|q| !q.is_empty())
    }

    /// The connection ID (empty for get requests, which are not tied to a connection).
    pub fn cid(&self) -> &str {
        &self.inner.cid
    }

    pub fn is_http(&self) -> bool {
        self.inner.is_http
    }

    /// The HTTP context of an auth request.
    pub fn http(&self) -> &HttpContext {
        &self.inner.http
    }

    /// The raw connection token, if set.
    pub fn raw_token(&self) -> Option<&str> {
        self.inner.token().map(|t| t.get())
    }

    /// The connection token, typed. `Ok(None)` without a token; a token of another shape is
    /// treated as no valid identity: `system.accessDenied`.
    pub fn token<T: DeserializeOwned>(&self) -> Result<Option<T>, ResError> {
        match self.inner.token() {
            None => Ok(None),
            Some(raw) => serde_json::from_str(raw.get()).map(Some).map_err(|_| ResError::access_denied()),
        }
    }

    /// The connection token, required: `system.accessDenied` without one.
    pub fn require_token<T: DeserializeOwned>(&self) -> Result<T, ResError> {
        self.token()?.ok_or_else(ResError::access_denied)
    }

    /// The call parameters, typed; missing or ill-shaped parameters are `system.invalidParams`
    /// with the decoder's reason as message.
    pub fn params<T: DeserializeOwned>(&self) -> Result<T, ResError> {
        let raw = self.inner.params.as_deref().map_or("null", |p| p.get());
        serde_json::from_str(raw)
            .map_err(|e| ResError::new(res_protocol::code::INVALID_PARAMS, format!("invalid parameters: {e}")))
    }

    /// When the caller stops waiting for the reply; see [`Deadline`].
    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// The publisher, to send events caused by this request (before replying).
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Runs `work` once the reply has been routed by the NATS server (a round trip after
    /// publishing it), so whatever `work` publishes reaches a gateway after the reply, whichever
    /// connection it leaves by. For a get: check whether the state it was read from changed
    /// while the reply was on its way, and reset the resource if so (a reply read before an
    /// event but delivered after it would otherwise undo that event in the gateway's cache).
    /// A later call replaces an earlier one; nothing runs if the handler fails.
    pub fn after_reply(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        *self.after_reply.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(work));
    }
}
