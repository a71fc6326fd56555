-- Berth scheduler schema, version 1.

CREATE TABLE apps (
    name             text        PRIMARY KEY,
    spec             jsonb       NOT NULL,
    generation       bigint      NOT NULL,
    desired_replicas integer     NOT NULL,
    status           text        NOT NULL DEFAULT 'active',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);

-- Every spec an app has had, for rollback to the previous generation.
CREATE TABLE app_history (
    app        text        NOT NULL REFERENCES apps (name) ON DELETE CASCADE,
    generation bigint      NOT NULL,
    spec       jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, generation)
);

CREATE TABLE instances (
    id           text        PRIMARY KEY,
    app          text        NOT NULL,
    generation   bigint      NOT NULL,
    container_id text        NOT NULL DEFAULT '',
    address      text        NOT NULL DEFAULT '',
    state        text        NOT NULL,
    health       text        NOT NULL DEFAULT 'unknown',
    restarts     integer     NOT NULL DEFAULT 0,
    term         bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_app ON instances (app);

CREATE TABLE events (
    id       bigserial   PRIMARY KEY,
    app      text        NOT NULL,
    instance text        NOT NULL DEFAULT '',
    kind     text        NOT NULL,
    message  text        NOT NULL,
    details  jsonb       NOT NULL DEFAULT '{}',
    term     bigint      NOT NULL DEFAULT 0,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_app_at ON events (app, at);

-- One row per lease; term increments on every takeover.
CREATE TABLE leases (
    name       text        PRIMARY KEY,
    holder     text        NOT NULL,
    term       bigint      NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE TABLE scaling_decisions (
    id       bigserial   PRIMARY KEY,
    app      text        NOT NULL,
    current  integer     NOT NULL,
    desired  integer     NOT NULL,
    reasons  jsonb       NOT NULL DEFAULT '[]',
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX scaling_decisions_app_at ON scaling_decisions (app, at);

---- create above / drop below ----

DROP TABLE scaling_decisions;
DROP TABLE leases;
DROP TABLE events;
DROP TABLE instances;
DROP TABLE app_history;
DROP TABLE apps;
