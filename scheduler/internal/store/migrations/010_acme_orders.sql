-- Every ACME order as it starts, for the global order rate
-- (--acme-orders-per-hour): the leader counts the orders of the last hour
-- from here, so a new leader counts those of the old one, and an app
-- deleted or renamed leaves its orders counted. Rows older than a week
-- (Let's Encrypt's window for certificates per domain) are pruned as
-- orders are added.
CREATE TABLE acme_orders (
    id         bigserial   PRIMARY KEY,
    app        text        NOT NULL,
    names      text[]      NOT NULL,
    reason     text        NOT NULL,
    started_at timestamptz NOT NULL
);

CREATE INDEX acme_orders_started_at ON acme_orders (started_at);

---- create above / drop below ----

DROP TABLE acme_orders;
