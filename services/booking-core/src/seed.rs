//! Deterministic seed data: German long-distance and regional lines, their seat layouts, and one
//! departure per scheduled run and day. The same start date always gives the same rows and IDs;
//! seeding again only adds missing days, so every start can top the window up.

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone, Utc};
use deadpool_postgres::Pool;

/// (id, name, lat, lon)
pub const STATIONS: &[(&str, &str, f64, f64)] = &[
    ("AH", "Hamburg Hbf", 53.5530, 10.0069),
    ("HB", "Bremen Hbf", 53.0832, 8.8135),
    ("HH", "Hannover Hbf", 52.3767, 9.7410),
    ("BL", "Berlin Hbf", 52.5251, 13.3694),
    ("WOB", "Wolfsburg Hbf", 52.4295, 10.7880),
    ("BI", "Bielefeld Hbf", 52.0292, 8.5329),
    ("OS", "Osnabrück Hbf", 52.2726, 8.0615),
    ("MS", "Münster (Westf) Hbf", 51.9567, 7.6350),
    ("DO", "Dortmund Hbf", 51.5178, 7.4593),
    ("EE", "Essen Hbf", 51.4514, 7.0142),
    ("DD", "Düsseldorf Hbf", 51.2200, 6.7942),
    ("KK", "Köln Hbf", 50.9430, 6.9589),
    ("MTA", "Montabaur", 50.4447, 7.8260),
    ("FF", "Frankfurt (Main) Hbf", 50.1071, 8.6638),
    ("FD", "Fulda", 50.5547, 9.6839),
    ("KS", "Kassel-Wilhelmshöhe", 51.3131, 9.4467),
    ("RM", "Mannheim Hbf", 49.4795, 8.4695),
    ("HD", "Heidelberg Hbf", 49.4036, 8.6752),
    ("RK", "Karlsruhe Hbf", 48.9937, 8.4020),
    ("RF", "Freiburg (Breisgau) Hbf", 47.9975, 7.8413),
    ("RB", "Basel Bad Bf", 47.5673, 7.6076),
    ("TS", "Stuttgart Hbf", 48.7843, 9.1829),
    ("TA", "Aalen", 48.8406, 10.0985),
    ("TU", "Ulm Hbf", 48.3994, 9.9826),
    ("MA", "Augsburg Hbf", 48.3654, 10.8856),
    ("MH", "München Hbf", 48.1402, 11.5586),
    ("NN", "Nürnberg Hbf", 49.4456, 11.0827),
    ("NWH", "Würzburg Hbf", 49.8018, 9.9358),
    ("LE", "Erfurt Hbf", 50.9726, 11.0380),
    ("LH", "Halle (Saale) Hbf", 51.4777, 11.9870),
    ("LL", "Leipzig Hbf", 51.3455, 12.3821),
    ("DR", "Riesa", 51.3090, 13.2933),
    ("DH", "Dresden Hbf", 51.0405, 13.7320),
];

/// (line, kind, stops, departure times at the first stop). Each line also runs reversed.
const LINES: &[(u32, &str, &[&str], &[&str])] = &[
    (1, "ICE", &["AH", "HH", "KS", "FF", "RM", "TS", "TU", "MA", "MH"], &["06:10", "14:10"]),
    (2, "ICE", &["BL", "LH", "LE", "NN", "MH"], &["07:00", "12:00", "17:00"]),
    (3, "ICE", &["KK", "DD", "DO", "BI", "HH", "WOB", "BL"], &["08:30", "16:30"]),
    (4, "ICE", &["FF", "MTA", "KK", "DD", "EE", "DO"], &["09:15"]),
    (5, "IC", &["AH", "HB", "OS", "MS", "DO", "EE", "DD", "KK"], &["07:40"]),
    (6, "ICE", &["BL", "AH"], &["06:30", "18:30"]),
    (7, "IC", &["DH", "LL", "LE", "FD", "FF"], &["10:00"]),
    (8, "ICE", &["FF", "RM", "RK", "RF", "RB"], &["11:20"]),
    (9, "RE", &["LL", "DR", "DH"], &["06:15", "17:15"]),
    (10, "IC", &["TS", "TA", "NN", "NWH"], &["13:00"]),
];

/// Days seeded from the start date.
pub const DAYS: i64 = 30;

struct Layout {
    id: &'static str,
    name: &'static str,
    /// (car, class, rows, letters)
    cars: &'static [(i32, i32, i32, &'static str)],
}

const LAYOUTS: &[Layout] = &[
    Layout {
        id: "ice",
        name: "ICE, 5 cars",
        cars: &[(1, 1, 10, "ABC"), (2, 2, 14, "ABCD"), (3, 2, 14, "ABCD"), (4, 2, 14, "ABCD"), (5, 2, 14, "ABCD")],
    },
    Layout {
        id: "ic",
        name: "IC, 4 cars",
        cars: &[(1, 1, 8, "ABC"), (2, 2, 12, "ABCD"), (3, 2, 12, "ABCD"), (4, 2, 12, "ABCD")],
    },
    Layout {
        id: "re",
        name: "RE double deck, 3 cars",
        cars: &[(1, 2, 16, "ABCD"), (2, 2, 16, "ABCD"), (3, 1, 6, "ABC")],
    },
];

/// A seat ID: car, two-digit row, letter (`2-07C`).
pub fn seat_id(car: i32, row: i32, letter: char) -> String {
    format!("{car}-{row:02}{letter}")
}

fn station(id: &str) -> &'static (&'static str, &'static str, f64, f64) {
    STATIONS.iter().find(|s| s.0 == id).expect("line stops are known stations")
}

/// Track distance between neighbouring stops: great-circle distance plus 20 % for curves.
fn segment_km(a: &str, b: &str) -> i64 {
    let (_, _, lat1, lon1) = *station(a);
    let (_, _, lat2, lon2) = *station(b);
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let (dp, dl) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    (6371.0 * 2.0 * h.sqrt().asin() * 1.2).round() as i64
}

fn kmh(kind: &str) -> f64 {
    match kind {
        "ICE" => 150.0,
        "IC" => 115.0,
        _ => 80.0,
    }
}

fn layout_for(kind: &str) -> &'static str {
    match kind {
        "ICE" => "ice",
        "IC" => "ic",
        _ => "re",
    }
}

/// A scheduled run: the train and its stops, times as offsets from the service date's midnight.
struct Run {
    train_id: String,
    train_name: String,
    kind: &'static str,
    start: NaiveTime,
    stops: Vec<&'static str>,
    /// Index of the run within a day, part of the departure ID.
    index: i64,
}

fn runs() -> Vec<Run> {
    let mut out = Vec::new();
    for (line, kind, stops, times) in LINES {
        for (dir, reversed) in [(0u32, false), (1, true)] {
            let mut s: Vec<&'static str> = stops.to_vec();
            if reversed {
                s.reverse();
            }
            for (i, t) in times.iter().enumerate() {
                let number = line * 100 + (i as u32) * 2 + dir + 1;
                out.push(Run {
                    train_id: format!("{kind}-{number}"),
                    train_name: format!("{kind} {number}"),
                    kind,
                    start: NaiveTime::parse_from_str(t, "%H:%M").expect("valid time"),
                    stops: s.clone(),
                    index: out.len() as i64,
                });
            }
        }
    }
    out
}

/// Departure ID: days since 2020-01-01 × 1000 + the run's index, stable for a date and run.
pub fn departure_id(date: NaiveDate, run_index: i64) -> i64 {
    let epoch = NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid date");
    (date - epoch).num_days() * 1000 + run_index
}

/// Seeds stations, layouts, trains and `DAYS` days of departures from `start`. Idempotent.
pub async fn seed(pool: &Pool, start: NaiveDate) -> Result<u64, crate::db::DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    for (id, name, lat, lon) in STATIONS {
        tx.execute(
            "INSERT INTO stations (id, name, lat, lon) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            &[id, name, lat, lon],
        )
        .await?;
    }
    for l in LAYOUTS {
        tx.execute("INSERT INTO layouts (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", &[&l.id, &l.name])
            .await?;
        let (mut ids, mut cars, mut rows, mut letters, mut classes) = (vec![], vec![], vec![], vec![], vec![]);
        for &(car, class, nrows, lets) in l.cars {
            for row in 1..=nrows {
                for letter in lets.chars() {
                    ids.push(seat_id(car, row, letter));
                    cars.push(car);
                    rows.push(row);
                    letters.push(letter.to_string());
                    classes.push(class);
                }
            }
        }
        tx.execute(
            "INSERT INTO layout_seats (layout_id, seat_id, car, seat_row, letter, class)
             SELECT $1, * FROM unnest($2::text[], $3::int[], $4::int[], $5::text[], $6::int[])
             ON CONFLICT DO NOTHING",
            &[&l.id, &ids, &cars, &rows, &letters, &classes],
        )
        .await?;
    }
    let runs = runs();
    for r in &runs {
        tx.execute(
            "INSERT INTO trains (id, name, kind, layout_id) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
            &[&r.train_id, &r.train_name, &r.kind, &layout_for(r.kind)],
        )
        .await?;
    }
    let mut added = 0;
    for day in 0..DAYS {
        let date = start + Duration::days(day);
        let (mut d_id, mut d_train, mut d_date, mut d_from, mut d_to, mut d_dep, mut d_arr, mut d_km) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        let (mut s_dep, mut s_seq, mut s_station, mut s_arr, mut s_departs, mut s_km) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for r in &runs {
            let id = departure_id(date, r.index);
            let mut t = Utc.from_utc_datetime(&date.and_time(r.start));
            let mut km = 0i64;
            let first = t;
            for (seq, stop) in r.stops.iter().enumerate() {
                let last = seq + 1 == r.stops.len();
                if seq > 0 {
                    let seg = segment_km(r.stops[seq - 1], stop);
                    km += seg;
                    t += Duration::minutes((seg as f64 / kmh(r.kind) * 60.0).round() as i64);
                }
                let arrives = (seq > 0).then_some(t);
                if seq > 0 && !last {
                    t += Duration::minutes(2);
                }
                let departs = (!last).then_some(t);
                s_dep.push(id);
                s_seq.push(seq as i32);
                s_station.push(stop.to_string());
                s_arr.push(arrives);
                s_departs.push(departs);
                s_km.push(km as i32);
            }
            d_id.push(id);
            d_train.push(r.train_id.clone());
            d_date.push(date);
            d_from.push(r.stops[0].to_string());
            d_to.push(r.stops[r.stops.len() - 1].to_string());
            d_dep.push(first);
            d_arr.push(t);
            d_km.push(km as i32);
        }
        let n = tx
            .execute(
                "INSERT INTO departures (id, train_id, service_date, origin_id, destination_id, departs_at, arrives_at, distance_km)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::date[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[], $8::int[])
                 ON CONFLICT (id) DO NOTHING",
                &[&d_id, &d_train, &d_date, &d_from, &d_to, &d_dep, &d_arr, &d_km],
            )
            .await?;
        if n > 0 {
            tx.execute(
                "INSERT INTO departure_stops (departure_id, seq, station_id, arrives_at, departs_at, km)
                 SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::int[])
                 ON CONFLICT DO NOTHING",
                &[&s_dep, &s_seq, &s_station, &s_arr, &s_departs, &s_km],
            )
            .await?;
        }
        added += n;
    }
    tx.commit().await?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_stable_and_plentiful() {
        let r = runs();
        assert_eq!(r.len(), 32);
        assert_eq!(r[0].train_name, "ICE 101");
        assert_eq!(r[1].train_name, "ICE 103");
        assert_eq!(r[2].stops[0], "MH", "reversed run starts at the other end");
        let mut names: Vec<_> = r.iter().map(|r| r.train_id.clone()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), r.len(), "train numbers are unique");
        assert!(r.len() as i64 * DAYS >= 900);
    }

    #[test]
    fn distances_are_plausible() {
        let hh_h = segment_km("AH", "HH");
        assert!((150..200).contains(&hh_h), "Hamburg–Hannover {hh_h} km");
        let d = departure_id(NaiveDate::from_ymd_opt(2020, 1, 2).unwrap(), 7);
        assert_eq!(d, 1007);
    }
}
