-- Catalog: stations, seat layouts, trains, departures (a train run on a date) and their stops.
CREATE TABLE stations (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    lat  DOUBLE PRECISION NOT NULL,
    lon  DOUBLE PRECISION NOT NULL
);

CREATE TABLE layouts (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE layout_seats (
    layout_id TEXT NOT NULL REFERENCES layouts (id),
    seat_id   TEXT NOT NULL,
    car       INT  NOT NULL,
    seat_row  INT  NOT NULL,
    letter    TEXT NOT NULL,
    class     INT  NOT NULL CHECK (class IN (1, 2)),
    PRIMARY KEY (layout_id, seat_id)
);

CREATE TABLE trains (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    layout_id TEXT NOT NULL REFERENCES layouts (id)
);

CREATE TABLE departures (
    id             BIGINT PRIMARY KEY,
    train_id       TEXT        NOT NULL REFERENCES trains (id),
    service_date   DATE        NOT NULL,
    origin_id      TEXT        NOT NULL REFERENCES stations (id),
    destination_id TEXT        NOT NULL REFERENCES stations (id),
    departs_at     TIMESTAMPTZ NOT NULL,
    arrives_at     TIMESTAMPTZ NOT NULL,
    distance_km    INT         NOT NULL
);

CREATE INDEX departures_by_date ON departures (service_date);

CREATE TABLE departure_stops (
    departure_id BIGINT      NOT NULL REFERENCES departures (id),
    seq          INT         NOT NULL,
    station_id   TEXT        NOT NULL REFERENCES stations (id),
    arrives_at   TIMESTAMPTZ,
    departs_at   TIMESTAMPTZ,
    km           INT         NOT NULL,
    PRIMARY KEY (departure_id, seq)
);

CREATE INDEX departure_stops_by_station ON departure_stops (station_id, departs_at);

-- Sales. PostgreSQL is the truth for sold seats: the partial unique index makes a double sale
-- impossible whatever the services do.
CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    user_id         TEXT        NOT NULL,
    departure_id    BIGINT      NOT NULL REFERENCES departures (id),
    hold_id         TEXT        NOT NULL UNIQUE,
    status          TEXT        NOT NULL CHECK (status IN ('placed', 'cancelled')),
    total_cents     BIGINT      NOT NULL,
    currency        TEXT        NOT NULL,
    payment_ref     TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    list_seq        BIGSERIAL   NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    cancelled_at    TIMESTAMPTZ,
    UNIQUE (user_id, idempotency_key)
);

CREATE INDEX orders_by_user ON orders (user_id, list_seq DESC);

CREATE TABLE tickets (
    id           TEXT PRIMARY KEY,
    order_id     TEXT   NOT NULL REFERENCES orders (id),
    departure_id BIGINT NOT NULL REFERENCES departures (id),
    seat_id      TEXT   NOT NULL,
    class        INT    NOT NULL,
    price_cents  BIGINT NOT NULL,
    status       TEXT   NOT NULL CHECK (status IN ('active', 'cancelled'))
);

CREATE UNIQUE INDEX tickets_one_active_sale ON tickets (departure_id, seat_id) WHERE status = 'active';
CREATE INDEX tickets_by_order ON tickets (order_id);
