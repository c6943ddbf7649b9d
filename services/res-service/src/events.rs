//! Publishing RES events: resource events on `event.<rid>.<name>`, `system.reset`, connection tokens,
//! and query events with their inbox round trip.
//!
//! Ordering: NATS keeps the order of messages from one connection, so an event published here
//! before the reply to the call that caused it reaches the gateway first. Ordering across
//! instances is the service's job (see [`Events::flush`]).

use futures_util::StreamExt;
use res_protocol::ResError;
use res_protocol::service::SystemReset;
use res_protocol::value::{Model, ResourceData, Value};
use serde::Serialize;
use std::time::Duration;

/// Why an event could not be published.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("invalid resource id {0:?}")]
    InvalidRid(String),
    #[error("invalid event name {0:?}")]
    InvalidEvent(String),
    #[error("encode event: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("publish: {0}")]
    Publish(#[from] async_nats::PublishError),
    #[error("subscribe: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("the NATS server did not confirm within {0:?}")]
    Barrier(Duration),
}

impl From<EventError> for ResError {
    fn from(e: EventError) -> ResError {
        ResError::internal(e)
    }
}

/// Event names the protocol reserves; custom events may not use them.
const RESERVED: [&str; 6] = ["change", "add", "remove", "delete", "create", "reaccess"];

/// Publishes events for a service. Cheap to clone (wraps the NATS client).
#[derive(Clone, Debug)]
pub struct Events {
    client: async_nats::Client,
}

/// One event of a query event response (`{"event": "add", "data": {...}}`).
#[derive(Debug, Clone, Serialize)]
pub struct QueryEventItem {
    pub event: String,
    pub data: serde_json::Value,
}

/// What a query request handler answers: the events that bring the query's result up to date,
/// or the whole new resource.
#[derive(Debug, Clone)]
pub enum QueryReply {
    Events(Vec<QueryEventItem>),
    Resource(ResourceData),
}

impl Events {
    pub fn new(client: async_nats::Client) -> Events {
        Events { client }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), EventError> {
        self.client.publish(subject, payload.into()).await?;
        Ok(())
    }

    fn check_rid(rid: &str) -> Result<(), EventError> {
        if res_protocol::rid::is_valid_rid_no_query(rid) { Ok(()) } else { Err(EventError::InvalidRid(rid.to_owned())) }
    }

    /// A model change event: `{"values": {...}}`. Use [`Value::Delete`] to delete a property.
    pub async fn change(&self, rid: &str, values: &Model) -> Result<(), EventError> {
        Self::check_rid(rid)?;
        let mut out = b"{\"values\":".to_vec();
        res_protocol::value::write_model(&mut out, values.iter(), false);
        out.push(b'}');
        self.publish(format!("event.{rid}.change"), out).await
    }

    /// A change event from any value serializing to a JSON object of new property values.
    pub async fn change_json(&self, rid: &str, values: impl Serialize) -> Result<(), EventError> {
        let model = crate::resource::model(values).map_err(|e| EventError::InvalidEvent(e.message.into_owned()))?;
        self.change(rid, &model).await
    }

    /// A collection add event.
    pub async fn add(&self, rid: &str, idx: usize, value: &Value) -> Result<(), EventError> {
        Self::check_rid(rid)?;
        let mut out = b"{\"value\":".to_vec();
        value.write_client(&mut out, false);
        out.extend_from_slice(format!(",\"idx\":{idx}}}").as_bytes());
        self.publish(format!("event.{rid}.add"), out).await
    }

    /// A collection remove event.
    pub async fn remove(&self, rid: &str, idx: usize) -> Result<(), EventError> {
        Self::check_rid(rid)?;
        self.publish(format!("event.{rid}.remove"), format!("{{\"idx\":{idx}}}").into_bytes()).await
    }

    /// A custom event, any JSON payload.
    pub async fn custom(&self, rid: &str, event: &str, payload: impl Serialize) -> Result<(), EventError> {
        Self::check_rid(rid)?;
        if !res_protocol::is_valid_rid_part(event) || RESERVED.contains(&event) {
            return Err(EventError::InvalidEvent(event.to_owned()));
        }
        self.publish(format!("event.{rid}.{event}"), serde_json::to_vec(&payload)?).await
    }

    /// `system.reset`: the gateway re-fetches the matching cached resources and re-checks access.
    pub async fn reset(&self, resources: &[&str], access: &[&str]) -> Result<(), EventError> {
        let reset = SystemReset {
            resources: resources.iter().map(|s| s.to_string()).collect(),
            access: access.iter().map(|s| s.to_string()).collect(),
        };
        self.publish("system.reset".to_owned(), serde_json::to_vec(&reset)?).await
    }

    /// Sets (or with `None` clears) the token of connection `cid`: `conn.<cid>.token`.
    pub async fn set_token(&self, cid: &str, token: Option<impl Serialize>) -> Result<(), EventError> {
        #[derive(Serialize)]
        struct T<V> {
            token: Option<V>,
        }
        self.publish(format!("conn.{cid}.token"), serde_json::to_vec(&T { token })?).await
    }

    /// Waits until the NATS server has processed everything this connection sent so far
    /// (publishes and subscriptions). A service that serializes events per resource across
    /// instances (a lock) calls this before releasing the lock, so the next holder's events reach
    /// the server after these.
    ///
    /// `async_nats::Client::flush` is not enough: it only empties the socket buffer and does not
    /// wait for the server. This sends a message to a fresh subject of our own and waits for it to
    /// come back: the server handles a connection's messages in order, so when it is delivered,
    /// everything sent before it has been routed.
    pub async fn flush(&self) -> Result<(), EventError> {
        server_barrier(&self.client).await
    }

    /// Publishes a query event for `rid` and answers the gateway's query requests on a fresh
    /// inbox for `window` (Resgate sends one request per cached query of the resource).
    /// `answer` gets each query and returns the events to apply, or the new resource.
    /// Returns how many query requests were answered.
    pub async fn query_event<F>(&self, rid: &str, window: Duration, answer: F) -> Result<usize, EventError>
    where
        F: Fn(&str) -> Result<QueryReply, ResError>,
    {
        Self::check_rid(rid)?;
        let inbox = self.client.new_inbox();
        // The gateway sends to the inbox only after receiving the event, which this connection
        // publishes after subscribing: the server registers the subscription first.
        let mut sub = self.client.subscribe(inbox.clone()).await?;
        self.publish(format!("event.{rid}.query"), serde_json::to_vec(&serde_json::json!({ "subject": inbox }))?)
            .await?;
        let mut answered = 0;
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = tokio::time::sleep_until(deadline) => break,
            };
            let Some(reply) = msg.reply else { continue };
            #[derive(serde::Deserialize)]
            struct Q {
                #[serde(default)]
                query: String,
            }
            let body = match serde_json::from_slice::<Q>(&msg.payload) {
                Ok(q) => match answer(&q.query) {
                    Ok(r) => encode_query_reply(&r),
                    Err(e) => res_protocol::service::reply::error(&e),
                },
                Err(_) => res_protocol::service::reply::error(&ResError::invalid_request()),
            };
            self.client.publish(reply, body.into()).await?;
            answered += 1;
        }
        let _ = sub.unsubscribe().await;
        Ok(answered)
    }
}

const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// See [`Events::flush`].
pub(crate) async fn server_barrier(client: &async_nats::Client) -> Result<(), EventError> {
    let subject = format!("{}.barrier", client.new_inbox());
    let mut sub = client.subscribe(subject.clone()).await?;
    client.publish(subject, bytes::Bytes::new()).await?;
    let got = tokio::time::timeout(BARRIER_TIMEOUT, sub.next()).await;
    let _ = sub.unsubscribe().await;
    match got {
        Ok(Some(_)) => Ok(()),
        _ => Err(EventError::Barrier(BARRIER_TIMEOUT)),
    }
}

fn encode_query_reply(r: &QueryReply) -> Vec<u8> {
    match r {
        QueryReply::Events(events) => {
            let body = serde_json::to_vec(&serde_json::json!({ "events": events })).expect("events serialize");
            res_protocol::service::reply::result(&body)
        }
        QueryReply::Resource(data) => {
            // Same shape as a get result: {"result":{"model":...}} or {"collection":...}.
            res_protocol::service::reply::get(data, None)
        }
    }
}
