//! The RES service the tool plays on NATS, so that only the gateway is measured: it grants
//! access (get and call `*`), answers `get` with a small model, answers every `call` with a small
//! result, and publishes the change events of the fanout scenarios.

use anyhow::{Context, Result};
use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use res_protocol::service::{Access, reply};
use res_protocol::value::{Model, ResourceData};
use res_protocol::{ResError, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::task::JoinHandle;

/// Resource `i` of a run: `<service>.item.<i>`.
pub fn rid(service: &str, i: usize) -> String {
    format!("{service}.item.{i}")
}

/// The HTTP API path of a resource (`/api/<rid with / for .>`).
pub fn api_path(api_prefix: &str, rid: &str) -> String {
    format!("{}/{}", api_prefix.trim_end_matches('/'), rid.replace('.', "/"))
}

/// Requests answered, by kind.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    pub access: AtomicU64,
    pub get: AtomicU64,
    pub call: AtomicU64,
    pub unknown: AtomicU64,
}

pub struct Service {
    pub requests: Client,
    pub events: Client,
    pub counters: Arc<ServiceCounters>,
    tasks: Vec<JoinHandle<()>>,
}

async fn connect(url: &str, name: &str) -> Result<Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .subscription_capacity(1 << 17)
        .client_capacity(1 << 14)
        .connect(url)
        .await
        .with_context(|| format!("connect to NATS at {url}"))
}

/// The initial model of resource `i`.
pub fn initial_model(i: usize) -> Vec<u8> {
    let mut m = Model::new();
    m.insert("name".into(), Value::primitive(&format!("\"item {i}\"")));
    m.insert("t".into(), Value::primitive("0"));
    m.insert("seq".into(), Value::primitive("0"));
    reply::get(&ResourceData::Model(m), None)
}

impl Service {
    /// Subscribes to `access.<service>.>`, `get.<service>.>` and `call.<service>.>` and answers
    /// until dropped. Resources `0..resources` exist; others answer `system.notFound`.
    pub async fn start(url: &str, service: &str, resources: usize) -> Result<Service> {
        let requests = connect(url, "resbench-service").await?;
        let events = connect(url, "resbench-events").await?;
        let counters = Arc::new(ServiceCounters::default());
        let models: Arc<HashMap<String, Bytes>> = Arc::new(
            (0..resources).map(|i| (format!("get.{}", rid(service, i)), Bytes::from(initial_model(i)))).collect(),
        );
        let access = Bytes::from(reply::access(&Access { get: true, call: "*".into() }));
        let call = Bytes::from(reply::result(br#"{"ok":true}"#));
        let not_found = Bytes::from(reply::error(&ResError::not_found()));

        let mut tasks = Vec::new();
        for kind in ["access", "get", "call"] {
            let mut sub = requests.subscribe(format!("{kind}.{service}.>")).await.context("subscribe")?;
            let client = requests.clone();
            let (models, access, call, not_found, counters) =
                (models.clone(), access.clone(), call.clone(), not_found.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let Some(reply_to) = msg.reply else { continue };
                    let payload = match kind {
                        "access" => {
                            counters.access.fetch_add(1, Ordering::Relaxed);
                            access.clone()
                        }
                        "call" => {
                            counters.call.fetch_add(1, Ordering::Relaxed);
                            call.clone()
                        }
                        _ => match models.get(msg.subject.as_str()) {
                            Some(m) => {
                                counters.get.fetch_add(1, Ordering::Relaxed);
                                m.clone()
                            }
                            None => {
                                counters.unknown.fetch_add(1, Ordering::Relaxed);
                                not_found.clone()
                            }
                        },
                    };
                    if client.publish(reply_to, payload).await.is_err() {
                        break;
                    }
                }
            }));
        }
        requests.flush().await.context("flush NATS subscriptions")?;
        Ok(Service { requests, events, counters, tasks })
    }

    /// Subjects of the change events of resources `0..n`.
    pub fn event_subjects(service: &str, n: usize) -> Vec<Subject> {
        (0..n).map(|i| Subject::from(format!("event.{}.change", rid(service, i)))).collect()
    }

    /// Flushes both connections and stops answering.
    pub async fn shutdown(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            let _ = self.events.flush().await;
            let _ = self.requests.flush().await;
        })
        .await;
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.events.drain().await;
        let _ = self.requests.drain().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(rid("bench", 3), "bench.item.3");
        assert_eq!(api_path("/api/", "bench.item.3"), "/api/bench/item/3");
        assert_eq!(api_path("/api", "bench.item.3"), "/api/bench/item/3");
    }

    #[test]
    fn model_is_a_valid_get_response() {
        let got = res_protocol::service::decode_get(&initial_model(7)).unwrap();
        let ResourceData::Model(m) = got.data else { panic!("model expected") };
        assert_eq!(m["name"].to_string(), "\"item 7\"");
        assert_eq!(m.len(), 3);
    }
}
