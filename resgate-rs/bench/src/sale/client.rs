//! A user's RES session over one WebSocket: one request at a time (as a person clicks), the
//! events that arrive meanwhile applied to its copies of the seat maps it has open.

use crate::frames;
use crate::ws::Ws;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// Error code the tool records when the gateway did not answer within the tool's own limit.
pub const NO_ANSWER: &str = "tool.noAnswer";
/// Error code the tool records when the connection closed under a request.
pub const CLOSED: &str = "tool.closed";

/// A seat's state as the seat map shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeatState {
    Free,
    Held,
    Sold,
}

impl SeatState {
    pub fn parse(s: &str) -> Option<SeatState> {
        match s {
            "free" => Some(SeatState::Free),
            "held" => Some(SeatState::Held),
            "sold" => Some(SeatState::Sold),
            _ => None,
        }
    }
}

/// A seat map: seat ID → state.
pub type SeatMap = HashMap<String, SeatState>;

/// Seat changes carried by a `seats.departure.<id>.change` event frame: the departure and the
/// new states. `None` for anything else.
pub fn seat_changes(frame: &[u8]) -> Option<(i64, Vec<(String, SeatState)>)> {
    #[derive(Deserialize)]
    struct Event {
        event: Option<String>,
        data: Option<Data>,
    }
    #[derive(Deserialize)]
    struct Data {
        values: Option<HashMap<String, Value>>,
    }
    // Responses carry an id and no `event`; skip them without parsing.
    frames_event_name(frame)?;
    let ev: Event = serde_json::from_slice(frame).ok()?;
    let dep = departure_of_change(ev.event.as_deref()?)?;
    let values = ev.data?.values?;
    let changes = values.into_iter().filter_map(|(k, v)| Some((k, SeatState::parse(v.as_str()?)?))).collect();
    Some((dep, changes))
}

/// The departure of `seats.departure.<id>.change`.
pub fn departure_of_change(event: &str) -> Option<i64> {
    event.strip_prefix("seats.departure.")?.strip_suffix(".change")?.parse().ok()
}

/// A cheap look for `"event":` so responses are not parsed twice.
fn frames_event_name(frame: &[u8]) -> Option<()> {
    frame.windows(8).any(|w| w == b"\"event\":").then_some(())
}

/// The RID of a seat map.
pub fn seat_map_rid(dep: i64) -> String {
    format!("seats.departure.{dep}")
}

/// A seat map from a model's JSON object.
pub fn seat_map_of(model: &Value) -> SeatMap {
    model
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), SeatState::parse(v.as_str()?)?)))
        .collect()
}

/// A failed request: the RES error code, or one of the tool's own (`tool.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
}

pub struct Session {
    ws: Ws,
    next_id: u64,
    timeout: Duration,
    /// Seat maps this session is subscribed to, kept current from their events.
    pub maps: HashMap<i64, SeatMap>,
    closed: bool,
}

impl Session {
    pub async fn open(mut ws: Ws, timeout: Duration) -> Result<Session, Failure> {
        let frame = frames::version_request(1);
        ws.send(Message::text(frame)).await.map_err(|_| Failure { code: CLOSED.into() })?;
        let mut s = Session { ws, next_id: 2, timeout, maps: HashMap::new(), closed: false };
        s.answer(1).await?;
        Ok(s)
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sends one request and waits for its answer, applying events meanwhile. Calls and auth
    /// answer with their payload, get/subscribe with the resources.
    pub async fn request(&mut self, method: &str, params: Option<&Value>) -> Result<Value, Failure> {
        if self.closed {
            return Err(Failure { code: CLOSED.into() });
        }
        let id = self.next_id;
        self.next_id += 1;
        let params = params.map(Value::to_string);
        let frame = frames::request(id, method, params.as_deref());
        if self.ws.send(Message::text(frame)).await.is_err() {
            self.closed = true;
            return Err(Failure { code: CLOSED.into() });
        }
        let v = self.answer(id).await?;
        if method.starts_with("call.") || method.starts_with("auth.") {
            return Ok(v["payload"].clone());
        }
        Ok(v)
    }

    async fn answer(&mut self, id: u64) -> Result<Value, Failure> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(Failure { code: NO_ANSWER.into() }),
                Ok(Some(Ok(m))) => m,
                Ok(_) => {
                    self.closed = true;
                    return Err(Failure { code: CLOSED.into() });
                }
            };
            let Message::Text(t) = msg else { continue };
            if let Some((dep, changes)) = seat_changes(t.as_bytes()) {
                if let Some(map) = self.maps.get_mut(&dep) {
                    map.extend(changes);
                }
                continue;
            }
            let Ok(mut v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
            if v["id"].as_u64() != Some(id) {
                continue;
            }
            if let Some(code) = v["error"]["code"].as_str() {
                return Err(Failure { code: code.to_owned() });
            }
            return Ok(v["result"].take());
        }
    }

    /// Subscribes to a departure's seat map and keeps it current.
    pub async fn open_map(&mut self, dep: i64) -> Result<(), Failure> {
        let rid = seat_map_rid(dep);
        let r = self.request(&format!("subscribe.{rid}"), None).await?;
        self.maps.insert(dep, seat_map_of(&r["models"][&rid]));
        Ok(())
    }

    pub async fn close_map(&mut self, dep: i64) -> Result<(), Failure> {
        self.maps.remove(&dep);
        self.request(&format!("unsubscribe.{}", seat_map_rid(dep)), None).await.map(drop)
    }

    /// Waits up to `wait` for frames (applying seat events) without sending anything.
    pub async fn idle(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.closed {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    if let Some((dep, changes)) = seat_changes(t.as_bytes())
                        && let Some(map) = self.maps.get_mut(&dep)
                    {
                        map.extend(changes);
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => self.closed = true,
            }
        }
    }

    pub async fn close(self) {
        crate::ws::close(self.ws).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_events_are_read() {
        let f = br#"{"event":"seats.departure.42.change","data":{"values":{"1-01A":"held","1-01B":"free"}}}"#;
        let (dep, mut ch) = seat_changes(f).unwrap();
        ch.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(dep, 42);
        assert_eq!(ch, vec![("1-01A".into(), SeatState::Held), ("1-01B".into(), SeatState::Free)]);
        assert!(seat_changes(br#"{"id":3,"result":{}}"#).is_none());
        assert!(
            seat_changes(br#"{"event":"seats.departure.42.availability.change","data":{"values":{"free":3}}}"#)
                .is_none()
        );
        assert_eq!(departure_of_change("seats.departure.7.change"), Some(7));
        let m = seat_map_of(&serde_json::json!({"1-01A": "sold", "x": 3}));
        assert_eq!(m.len(), 1);
        assert_eq!(m["1-01A"], SeatState::Sold);
    }
}
