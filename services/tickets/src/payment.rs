//! The payment step behind a provider trait, and the built-in test provider.
//!
//! The test provider behaves like common payment sandboxes: the card number decides the outcome.
//!
//! | card number        | outcome                               |
//! |--------------------|---------------------------------------|
//! | 4242424242424242   | approved                              |
//! | 5555555555554444   | approved                              |
//! | 4000000000000002   | declined: `card_declined`             |
//! | 4000000000009995   | declined: `insufficient_funds`        |
//! | 4000000000000069   | declined: `expired_card`              |
//! | 4000000000000119   | provider error (`processing_error`)   |
//! | other valid (Luhn) | approved                              |
//! | invalid            | invalid card number                   |
//!
//! Charges and refunds are idempotent by key: the same key returns the first outcome without
//! charging or refunding again (as real providers do with an idempotency key), so a refund can be
//! retried after a crash.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone)]
pub struct Charge {
    pub amount_cents: i64,
    pub currency: String,
    pub card_number: String,
    /// The provider charges at most once per key.
    pub idempotency_key: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub reference: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    #[error("{0}")]
    Declined(String),
    #[error("invalid card number")]
    InvalidCard,
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
}

pub trait PaymentProvider: Send + Sync {
    fn charge(&self, charge: Charge) -> BoxFuture<'_, Result<Payment, PaymentError>>;
    /// Refunds `amount_cents` of a charge, at most once per `idempotency_key`.
    fn refund<'a>(
        &'a self,
        reference: &'a str,
        amount_cents: i64,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>>;
}

/// The built-in sandbox provider (see the module docs for its card numbers).
#[derive(Debug, Default)]
pub struct TestProvider {
    charges: parking_lot::Mutex<HashMap<String, Result<Payment, PaymentError>>>,
    refunds: parking_lot::Mutex<HashMap<String, i64>>,
    refund_keys: parking_lot::Mutex<std::collections::HashSet<String>>,
}

impl TestProvider {
    /// Approved charges so far (each idempotency key charged once).
    pub fn approved_charges(&self) -> usize {
        self.charges.lock().values().filter(|c| c.is_ok()).count()
    }

    pub fn refunded(&self, reference: &str) -> Option<i64> {
        self.refunds.lock().get(reference).copied()
    }
}

fn luhn_valid(number: &str) -> bool {
    if !(12..=19).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = number
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 { dd - 9 } else { dd }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn decide(card: &str) -> Result<(), PaymentError> {
    if !luhn_valid(card) {
        return Err(PaymentError::InvalidCard);
    }
    match card {
        "4000000000000002" => Err(PaymentError::Declined("card_declined".into())),
        "4000000000009995" => Err(PaymentError::Declined("insufficient_funds".into())),
        "4000000000000069" => Err(PaymentError::Declined("expired_card".into())),
        "4000000000000119" => Err(PaymentError::Unavailable("processing_error".into())),
        _ => Ok(()),
    }
}

impl PaymentProvider for TestProvider {
    fn charge(&self, charge: Charge) -> BoxFuture<'_, Result<Payment, PaymentError>> {
        Box::pin(async move {
            let card: String = charge.card_number.chars().filter(|c| !c.is_whitespace()).collect();
            let mut charges = self.charges.lock();
            if let Some(prev) = charges.get(&charge.idempotency_key) {
                return prev.clone();
            }
            let outcome =
                decide(&card).map(|()| Payment { reference: format!("test_ch_{:020x}", rand::random::<u128>() >> 48) });
            // Provider errors are not final: a retry with the same key may succeed.
            if !matches!(outcome, Err(PaymentError::Unavailable(_))) {
                charges.insert(charge.idempotency_key.clone(), outcome.clone());
            }
            outcome
        })
    }

    fn refund<'a>(
        &'a self,
        reference: &'a str,
        amount_cents: i64,
        idempotency_key: &'a str,
    ) -> BoxFuture<'a, Result<(), PaymentError>> {
        Box::pin(async move {
            if self.refund_keys.lock().insert(idempotency_key.to_owned()) {
                *self.refunds.lock().entry(reference.to_owned()).or_default() += amount_cents;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(card: &str, key: &str) -> Charge {
        Charge {
            amount_cents: 100,
            currency: "EUR".into(),
            card_number: card.into(),
            idempotency_key: key.into(),
            description: String::new(),
        }
    }

    #[tokio::test]
    async fn card_numbers_decide_and_keys_are_idempotent() {
        let p = TestProvider::default();
        let ok = p.charge(charge("4242 4242 4242 4242", "k1")).await.unwrap();
        assert_eq!(p.charge(charge("4242424242424242", "k1")).await.unwrap(), ok, "same key, same charge");
        assert_ne!(p.charge(charge("4242424242424242", "k2")).await.unwrap(), ok);
        assert_eq!(
            p.charge(charge("4000000000000002", "k3")).await,
            Err(PaymentError::Declined("card_declined".into()))
        );
        assert_eq!(
            p.charge(charge("4000000000009995", "k4")).await,
            Err(PaymentError::Declined("insufficient_funds".into()))
        );
        assert_eq!(p.charge(charge("4242424242424241", "k5")).await, Err(PaymentError::InvalidCard));
        assert_eq!(p.charge(charge("abc", "k6")).await, Err(PaymentError::InvalidCard));
        assert!(matches!(p.charge(charge("4000000000000119", "k7")).await, Err(PaymentError::Unavailable(_))));
        p.refund(&ok.reference, 100, "r1").await.unwrap();
        p.refund(&ok.reference, 100, "r1").await.unwrap();
        assert_eq!(p.refunded(&ok.reference), Some(100), "same key, one refund");
    }
}
