//! The fare rule, shared by the pricing service (which shows prices live) and the tickets service
//! (which charges them). All amounts are euro cents.
//!
//! 1. Base fare, second class: 4.90 € + 0.16 € per km of the whole run. First class: base × 1.6.
//! 2. Demand: occupancy (held + sold seats over all seats) in 10 % steps; up to 50 % no surcharge,
//!    then +16 % per step above 50 %, so a full train costs 1.8 × base.
//! 3. Time to departure: 14 days or more 0.80, 7–14 days 0.90, 1–7 days 1.00, under 24 hours 1.15.
//! 4. The result is rounded to 10 cents.
//!
//! The steps keep prices stable while occupancy moves a little: the live price changes only when
//! occupancy crosses a 10 % boundary or the departure moves into another time band.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quote {
    pub first_cents: i64,
    pub second_cents: i64,
    /// Occupancy in percent, rounded down to the 10 % step the demand factor uses.
    pub occupancy_step_pct: i64,
    pub demand_pct: i64,
    pub time_pct: i64,
}

/// Quotes the fares of a departure.
pub fn quote(distance_km: i64, occupied: i64, total: i64, seconds_to_departure: i64) -> Quote {
    let base_second = 490 + 16 * distance_km.max(0);
    let step = if total > 0 { (occupied.clamp(0, total) * 10 / total) * 10 } else { 0 };
    let demand_pct = 100 + (step - 50).max(0) * 16 / 10;
    let days = seconds_to_departure / 86_400;
    let time_pct = match days {
        14.. => 80,
        7..=13 => 90,
        _ if seconds_to_departure >= 86_400 => 100,
        _ => 115,
    };
    let price = |base: i64| round10(base * demand_pct * time_pct / 10_000);
    Quote {
        first_cents: price(base_second * 16 / 10),
        second_cents: price(base_second),
        occupancy_step_pct: step,
        demand_pct,
        time_pct,
    }
}

fn round10(cents: i64) -> i64 {
    (cents + 5) / 10 * 10
}

impl Quote {
    pub fn for_class(&self, class: i32) -> i64 {
        if class == 1 { self.first_cents } else { self.second_cents }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_fare_by_distance_and_class() {
        // 300 km, empty, 3 days out: 4.90 + 48.00 = 52.90; first 84.64 → 84.60.
        let q = quote(300, 0, 100, 3 * 86_400);
        assert_eq!((q.second_cents, q.first_cents), (5290, 8460));
        assert_eq!((q.demand_pct, q.time_pct), (100, 100));
    }

    #[test]
    fn demand_steps_with_occupancy() {
        let at = |occ| quote(300, occ, 100, 3 * 86_400);
        assert_eq!(at(59).second_cents, at(0).second_cents);
        assert_eq!(at(60).demand_pct, 116);
        assert_eq!(at(100).demand_pct, 180);
        assert_eq!(at(100).second_cents, 9520);
        assert!(at(70).second_cents > at(60).second_cents);
    }

    #[test]
    fn time_bands() {
        assert_eq!(quote(100, 0, 10, 20 * 86_400).time_pct, 80);
        assert_eq!(quote(100, 0, 10, 8 * 86_400).time_pct, 90);
        assert_eq!(quote(100, 0, 10, 86_400).time_pct, 100);
        assert_eq!(quote(100, 0, 10, 3600).time_pct, 115);
        assert_eq!(quote(100, 0, 10, -3600).time_pct, 115);
    }
}
