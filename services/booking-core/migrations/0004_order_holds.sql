-- One order may buy several holds of one departure (one checkout, one payment): the holds an
-- order bought. orders.hold_id stays the first of them.
CREATE TABLE order_holds (
    hold_id  TEXT PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders (id)
);

CREATE INDEX order_holds_by_order ON order_holds (order_id);

INSERT INTO order_holds (hold_id, order_id) SELECT hold_id, id FROM orders;
