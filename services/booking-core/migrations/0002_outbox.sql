-- Transactional outbox: every committed order and seat transition writes its domain event here in
-- the same transaction; the relay publishes unpublished rows to JetStream (stream BOOKING_EVENTS)
-- with Nats-Msg-Id = event_id and then sets published_at.
CREATE TABLE outbox (
    seq           BIGSERIAL   PRIMARY KEY,
    event_id      TEXT        NOT NULL UNIQUE,
    subject       TEXT        NOT NULL,
    departure_id  BIGINT      NOT NULL,
    -- 1, 2, 3, ... per departure in commit order (the head row below is locked until commit).
    departure_seq BIGINT      NOT NULL,
    payload       JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    UNIQUE (departure_id, departure_seq)
);

CREATE INDEX outbox_unpublished ON outbox (seq) WHERE published_at IS NULL;

-- One row per departure with events: the last departure_seq handed out. Writing it locks the row
-- until commit, so the events of one departure commit, and are numbered, one after the other.
CREATE TABLE outbox_departures (
    departure_id BIGINT PRIMARY KEY,
    last_seq     BIGINT NOT NULL
);

-- What must follow an order's commit (end the hold and show the seats sold; after a cancel: show
-- the seats free and refund) is pending while settled_at is NULL; the commit itself clears it.
ALTER TABLE orders ADD COLUMN settled_at TIMESTAMPTZ;
UPDATE orders SET settled_at = now();
CREATE INDEX orders_unsettled ON orders (list_seq) WHERE settled_at IS NULL;

-- The reports service's read model, fed by its JetStream consumer. An event's effect and its ID
-- commit together, so a redelivered event changes nothing.
CREATE TABLE report_events (
    event_id     TEXT        PRIMARY KEY,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE report_departures (
    departure_id    BIGINT PRIMARY KEY,
    orders_placed   BIGINT NOT NULL DEFAULT 0,
    seats_sold      BIGINT NOT NULL DEFAULT 0,
    revenue_cents   BIGINT NOT NULL DEFAULT 0,
    cancellations   BIGINT NOT NULL DEFAULT 0,
    seats_cancelled BIGINT NOT NULL DEFAULT 0,
    refunds_cents   BIGINT NOT NULL DEFAULT 0
);

-- Per UTC day of the sale or cancellation.
CREATE TABLE report_days (
    day             DATE   PRIMARY KEY,
    orders_placed   BIGINT NOT NULL DEFAULT 0,
    seats_sold      BIGINT NOT NULL DEFAULT 0,
    revenue_cents   BIGINT NOT NULL DEFAULT 0,
    cancellations   BIGINT NOT NULL DEFAULT 0,
    seats_cancelled BIGINT NOT NULL DEFAULT 0,
    refunds_cents   BIGINT NOT NULL DEFAULT 0
);
