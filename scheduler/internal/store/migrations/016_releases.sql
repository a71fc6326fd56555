-- Release tasks (issue 27): one row per release of an app, keyed by the
-- generation it ran for, with the hash of the container spec it released
-- (without a restart's generation: a restart releases nothing new). The
-- leader writes it under its lease: a row is inserted as running before
-- its container is created, so a new leader adopts a running release and
-- never starts a second one for the same generation.
CREATE TABLE releases (
    app          text        NOT NULL,
    generation   bigint      NOT NULL,
    spec_hash    text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('running', 'succeeded', 'failed')),
    host         text        NOT NULL DEFAULT '',
    container_id text        NOT NULL DEFAULT '',
    exit_code    integer,
    reason       text        NOT NULL DEFAULT '',
    term         bigint      NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    ended_at     timestamptz,
    PRIMARY KEY (app, generation)
);
CREATE INDEX releases_app_spec_hash ON releases (app, spec_hash);

---- create above / drop below ----

DROP TABLE releases;
