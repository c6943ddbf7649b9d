//! Booking errors. Each variant maps to exactly one RES error code, which is what clients see.

use res_protocol::ResError;

/// Codes of the booking domain (`system.*` codes come from res-protocol).
pub mod code {
    pub const SEAT_TAKEN: &str = "booking.seatTaken";
    pub const UNKNOWN_SEAT: &str = "booking.unknownSeat";
    pub const TOO_MANY_SEATS: &str = "booking.tooManySeats";
    pub const HOLD_EXPIRED: &str = "booking.holdExpired";
    pub const NOT_YOUR_HOLD: &str = "booking.notYourHold";
    pub const PURCHASE_IN_PROGRESS: &str = "booking.purchaseInProgress";
    pub const PAYMENT_DECLINED: &str = "booking.paymentDeclined";
    pub const ALREADY_CANCELLED: &str = "booking.alreadyCancelled";
    pub const DEPARTED: &str = "booking.departed";
    pub const BUSY: &str = "booking.busy";
}

#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("seats already taken: {}", .0.join(", "))]
    SeatTaken(Vec<String>),
    #[error("no such seat on this departure: {0}")]
    UnknownSeat(String),
    #[error("at most {0} seats per hold")]
    TooManySeats(usize),
    #[error("at most {cap} held seats per user; you hold {held}")]
    TooManyHeld { cap: usize, held: usize },
    #[error("the hold has expired or does not exist")]
    HoldExpired,
    #[error("the hold belongs to another user")]
    NotYourHold,
    #[error("a purchase of this hold is in progress")]
    PurchaseInProgress,
    #[error("payment declined: {0}")]
    PaymentDeclined(String),
    #[error("the order is already cancelled")]
    AlreadyCancelled,
    #[error("the departure has already left")]
    Departed,
    #[error("the departure is busy, try again")]
    Busy,
    #[error("not found")]
    NotFound,
    #[error("access denied")]
    AccessDenied,
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("events: {0}")]
    Events(#[from] res_service::EventError),
    #[error("payment provider: {0}")]
    Payment(String),
}

impl BookingError {
    /// A fault of the infrastructure (database, Redis, NATS, payment provider): the operation
    /// may have been carried out in part, unlike a refusal, which changes nothing.
    pub fn is_fault(&self) -> bool {
        matches!(
            self,
            BookingError::Db(_)
                | BookingError::Pool(_)
                | BookingError::Redis(_)
                | BookingError::Events(_)
                | BookingError::Payment(_)
        )
    }

    pub fn code(&self) -> &'static str {
        use res_protocol::code as sys;
        match self {
            BookingError::SeatTaken(_) => code::SEAT_TAKEN,
            BookingError::UnknownSeat(_) => code::UNKNOWN_SEAT,
            BookingError::TooManySeats(_) | BookingError::TooManyHeld { .. } => code::TOO_MANY_SEATS,
            BookingError::HoldExpired => code::HOLD_EXPIRED,
            BookingError::NotYourHold => code::NOT_YOUR_HOLD,
            BookingError::PurchaseInProgress => code::PURCHASE_IN_PROGRESS,
            BookingError::PaymentDeclined(_) => code::PAYMENT_DECLINED,
            BookingError::AlreadyCancelled => code::ALREADY_CANCELLED,
            BookingError::Departed => code::DEPARTED,
            BookingError::Busy => code::BUSY,
            BookingError::NotFound => sys::NOT_FOUND,
            BookingError::AccessDenied => sys::ACCESS_DENIED,
            BookingError::InvalidParams(_) => sys::INVALID_PARAMS,
            BookingError::Db(_)
            | BookingError::Pool(_)
            | BookingError::Redis(_)
            | BookingError::Events(_)
            | BookingError::Payment(_) => sys::INTERNAL_ERROR,
        }
    }
}

impl From<BookingError> for ResError {
    fn from(e: BookingError) -> ResError {
        match &e {
            // Infrastructure details stay in the logs, not in client messages.
            BookingError::Db(_)
            | BookingError::Pool(_)
            | BookingError::Redis(_)
            | BookingError::Events(_)
            | BookingError::Payment(_) => {
                tracing::error!(error = %e, "booking request failed");
                ResError::internal_error()
            }
            BookingError::SeatTaken(seats) => {
                ResError::new(e.code(), e.to_string()).with_data(serde_json::json!({ "seats": seats }))
            }
            BookingError::TooManyHeld { cap, held } => {
                ResError::new(e.code(), e.to_string()).with_data(serde_json::json!({ "cap": cap, "held": held }))
            }
            _ => ResError::new(e.code(), e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_res_codes() {
        let e: ResError = BookingError::SeatTaken(vec!["1-01A".into()]).into();
        assert_eq!(e.code, "booking.seatTaken");
        assert_eq!(e.data.unwrap()["seats"][0], "1-01A");
        let e: ResError = BookingError::InvalidParams("x".into()).into();
        assert_eq!(e.code, "system.invalidParams");
        let e: ResError = BookingError::Payment("boom".into()).into();
        assert_eq!((e.code.as_ref(), e.message.as_ref()), ("system.internalError", "Internal error"));
    }
}
