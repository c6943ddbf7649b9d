//! The catalog service: stations and departures (a train run on a date with its stops), and the
//! departure search as a query resource. Live seat counts come in by reference: each departure
//! model references `seats.departure.<id>.availability` and `pricing.departure.<id>`, which their
//! services keep current, so the search result itself never needs to change.

use booking_core::BookingError;
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Pool;
use prometheus_client::registry::Registry;
use res_service::{Handler, ResError, Resource, Service};
use serde::Serialize;

/// Configuration of the catalog binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "catalog", about = "Stations and departures (RES service)")]
pub struct Config {
    #[command(flatten)]
    pub common: booking_core::config::CommonConfig,
    /// Seed stations, trains and 30 days of departures on start (idempotent).
    #[arg(long, env = "BOOKING_SEED", default_value_t = true, action = clap::ArgAction::Set)]
    pub seed: bool,
    /// First day of seeded departures (YYYY-MM-DD); default today (UTC).
    #[arg(long, env = "BOOKING_SEED_START_DATE")]
    pub seed_start_date: Option<NaiveDate>,
}

/// A parsed, valid search query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub from: String,
    pub to: String,
    pub date: NaiveDate,
}

impl Search {
    /// Parses `from=..&to=..&date=YYYY-MM-DD` (any order, percent-encoded values).
    pub fn parse(query: &str) -> Result<Search, ResError> {
        let bad = |m: &str| ResError::new(res_protocol::code::INVALID_QUERY, format!("invalid query: {m}"));
        let (mut from, mut to, mut date) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| bad("expected key=value pairs"))?;
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| bad("invalid encoding"))?
                .into_owned();
            let slot = match k {
                "from" => &mut from,
                "to" => &mut to,
                "date" => &mut date,
                _ => return Err(bad(&format!("unknown parameter {k:?}"))),
            };
            if slot.replace(v).is_some() {
                return Err(bad(&format!("{k} given twice")));
            }
        }
        let from = from.filter(|s| !s.is_empty()).ok_or_else(|| bad("from is required"))?;
        let to = to.filter(|s| !s.is_empty()).ok_or_else(|| bad("to is required"))?;
        let date = date.ok_or_else(|| bad("date is required"))?;
        let date = NaiveDate::parse_from_str(&date, "%Y-%m-%d").map_err(|_| bad("date must be YYYY-MM-DD"))?;
        Ok(Search { from, to, date })
    }

    /// The normalized query the gateway caches results by.
    pub fn normalized(&self) -> String {
        let enc = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        format!("date={}&from={}&to={}", self.date.format("%Y-%m-%d"), enc(&self.from), enc(&self.to))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Stop {
    seq: i32,
    station_id: String,
    station: String,
    arrives_at: Option<String>,
    departs_at: Option<String>,
    km: i32,
}

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn departure_model(db: &Pool, id: i64) -> Result<serde_json::Value, BookingError> {
    let client = db.get().await?;
    let d = client
        .query_opt(
            "SELECT d.id, t.name, t.kind, d.service_date, d.origin_id, o.name, d.destination_id, s.name,
                    d.departs_at, d.arrives_at, d.distance_km
             FROM departures d JOIN trains t ON t.id = d.train_id
             JOIN stations o ON o.id = d.origin_id JOIN stations s ON s.id = d.destination_id
             WHERE d.id = $1",
            &[&id],
        )
        .await?
        .ok_or(BookingError::NotFound)?;
    let stops: Vec<Stop> = client
        .query(
            "SELECT ds.seq, ds.station_id, st.name, ds.arrives_at, ds.departs_at, ds.km
             FROM departure_stops ds JOIN stations st ON st.id = ds.station_id
             WHERE ds.departure_id = $1 ORDER BY ds.seq",
            &[&id],
        )
        .await?
        .iter()
        .map(|r| Stop {
            seq: r.get(0),
            station_id: r.get(1),
            station: r.get(2),
            arrives_at: r.get::<_, Option<DateTime<Utc>>>(3).map(ts),
            departs_at: r.get::<_, Option<DateTime<Utc>>>(4).map(ts),
            km: r.get(5),
        })
        .collect();
    Ok(serde_json::json!({
        "id": d.get::<_, i64>(0),
        "train": d.get::<_, String>(1),
        "trainKind": d.get::<_, String>(2),
        "date": d.get::<_, NaiveDate>(3).format("%Y-%m-%d").to_string(),
        "originId": d.get::<_, String>(4),
        "origin": d.get::<_, String>(5),
        "destinationId": d.get::<_, String>(6),
        "destination": d.get::<_, String>(7),
        "departsAt": ts(d.get(8)),
        "arrivesAt": ts(d.get(9)),
        "distanceKm": d.get::<_, i32>(10),
        "stops": res_service::data(stops),
        "availability": res_service::reference(&format!("seats.departure.{id}.availability")),
        "price": res_service::reference(&format!("pricing.departure.{id}")),
        // Soft: the seat map is large; clients subscribe to it when a departure is opened.
        "seatMap": { "rid": format!("seats.departure.{id}"), "soft": true },
    }))
}

/// Departure IDs calling at `from` and later at `to`, leaving `from` on `date`, by time.
pub async fn search(db: &Pool, s: &Search) -> Result<Vec<i64>, BookingError> {
    let client = db.get().await?;
    let rows = client
        .query(
            "SELECT a.departure_id FROM departure_stops a
             JOIN departure_stops b ON b.departure_id = a.departure_id AND b.seq > a.seq
             WHERE a.station_id = $1 AND b.station_id = $2
               AND (a.departs_at AT TIME ZONE 'UTC')::date = $3
             ORDER BY a.departs_at, a.departure_id",
            &[&s.from, &s.to, &s.date],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub fn service(db: Pool) -> Service {
    let public = || async { Ok::<_, ResError>(res_service::access(true, "")) };
    let (d1, d2, d3, d4) = (db.clone(), db.clone(), db.clone(), db);
    Service::new("catalog")
        .handle(
            "catalog.stations",
            Handler::new().access(move |_| public()).get(move |_req| {
                let db = d1.clone();
                async move {
                    let client = db.get().await.map_err(BookingError::from)?;
                    let rows =
                        client.query("SELECT id FROM stations ORDER BY name", &[]).await.map_err(BookingError::from)?;
                    let refs: Vec<_> = rows
                        .iter()
                        .map(|r| res_service::reference(&format!("catalog.station.{}", r.get::<_, String>(0))))
                        .collect();
                    Resource::collection(refs)
                }
            }),
        )
        .handle(
            "catalog.station.$id",
            Handler::new().access(move |_| public()).get(move |req| {
                let db = d2.clone();
                async move {
                    let client = db.get().await.map_err(BookingError::from)?;
                    let r = client
                        .query_opt("SELECT id, name, lat, lon FROM stations WHERE id = $1", &[&req.path("id")])
                        .await
                        .map_err(BookingError::from)?
                        .ok_or_else(ResError::not_found)?;
                    Resource::model(serde_json::json!({
                        "id": r.get::<_, String>(0), "name": r.get::<_, String>(1),
                        "lat": r.get::<_, f64>(2), "lon": r.get::<_, f64>(3),
                    }))
                }
            }),
        )
        .handle(
            "catalog.departures",
            Handler::new().access(move |_| public()).get(move |req| {
                let db = d3.clone();
                async move {
                    let s = Search::parse(req.query().unwrap_or(""))?;
                    let ids = search(&db, &s).await?;
                    let refs: Vec<_> =
                        ids.iter().map(|id| res_service::reference(&format!("catalog.departure.{id}"))).collect();
                    Ok::<_, ResError>(Resource::collection(refs)?.with_query(s.normalized()))
                }
            }),
        )
        .handle(
            "catalog.departure.$id",
            Handler::new().access(move |_| public()).get(move |req| {
                let db = d4.clone();
                async move {
                    let id: i64 = req.path_as("id")?;
                    Resource::model(departure_model(&db, id).await?)
                }
            }),
        )
}

/// Migrates, seeds (when asked) and starts the service.
pub async fn start(
    nats: async_nats::Client,
    db: Pool,
    seed_from: Option<NaiveDate>,
    max_concurrency: usize,
    registry: &mut Registry,
) -> Result<res_service::Running, StartError> {
    booking_core::db::migrate(&db).await?;
    if let Some(start) = seed_from {
        let added = booking_core::seed::seed(&db, start).await?;
        tracing::info!(%start, added, "seeded departures");
    }
    Ok(service(db).max_concurrency(max_concurrency).with_metrics(registry).start(nats).await?)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] booking_core::db::DbError),
    #[error(transparent)]
    Start(#[from] res_service::StartError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_query_is_validated_and_normalized() {
        let s = Search::parse("to=MH&date=2026-12-01&from=AH").unwrap();
        assert_eq!(s.normalized(), "date=2026-12-01&from=AH&to=MH");
        assert_eq!(Search::parse(&s.normalized()).unwrap(), s);
        for bad in [
            "",
            "from=AH&to=MH",
            "from=AH&to=MH&date=1.12.2026",
            "from=AH&to=MH&date=2026-12-01&x=1",
            "from=A&from=B&to=C&date=2026-12-01",
            "junk",
        ] {
            assert_eq!(Search::parse(bad).unwrap_err().code, "system.invalidQuery", "{bad}");
        }
    }
}
