//! The booking metrics. Names are fixed by the operations dashboards: do not rename.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrderLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug)]
pub struct BookingMetrics {
    pub holds_created: Counter,
    pub holds_released: Counter,
    pub holds_expired: Counter,
    pub active_holds: Gauge,
    pub seats_sold: Counter,
    pub orders: Family<OrderLabels, Counter>,
    pub payment_failures: Counter,
    /// Transitions of one departure published together (group commit), per batch.
    pub transition_batches: Histogram,
}

impl Default for BookingMetrics {
    fn default() -> BookingMetrics {
        BookingMetrics {
            holds_created: Counter::default(),
            holds_released: Counter::default(),
            holds_expired: Counter::default(),
            active_holds: Gauge::default(),
            seats_sold: Counter::default(),
            orders: Family::default(),
            payment_failures: Counter::default(),
            transition_batches: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0]),
        }
    }
}

impl BookingMetrics {
    /// The hold metrics, exported by the seats service.
    pub fn register_holds(&self, r: &mut Registry) {
        r.register("booking_holds_created", "Seat holds created", self.holds_created.clone());
        r.register("booking_holds_released", "Seat holds released by their owner", self.holds_released.clone());
        r.register("booking_holds_expired", "Seat holds freed by expiry", self.holds_expired.clone());
        r.register("booking_active_holds", "Holds alive now (all instances)", self.active_holds.clone());
        r.register(
            "booking_transition_batch_size",
            "Seat transitions of one departure published together (group commit)",
            self.transition_batches.clone(),
        );
    }

    /// The sales metrics, exported by the tickets service.
    pub fn register_sales(&self, r: &mut Registry) {
        r.register("booking_seats_sold", "Seats sold", self.seats_sold.clone());
        r.register("booking_orders", "Orders by outcome: placed, cancelled, declined", self.orders.clone());
        r.register("booking_payment_failures", "Payments declined or failed", self.payment_failures.clone());
    }

    pub fn order(&self, status: &'static str) {
        self.orders.get_or_create(&OrderLabels { status }).inc();
    }
}
