-- Several Docker hosts: the registry an operator keeps with `scheduler
-- hosts`, and which host each instance runs on. With no host registered
-- the local engine is the one host, and its instances have host ''.
CREATE TABLE hosts (
    name       text             PRIMARY KEY,
    docker_url text             NOT NULL,
    tls_ca     text             NOT NULL DEFAULT '',
    tls_cert   text             NOT NULL DEFAULT '',
    tls_key    text             NOT NULL DEFAULT '',
    address    text             NOT NULL,
    labels     jsonb            NOT NULL DEFAULT '{}',
    cpu        double precision NOT NULL DEFAULT 0,
    memory     bigint           NOT NULL DEFAULT 0,
    drain      boolean          NOT NULL DEFAULT false,
    -- What the leader last saw of the engine: up, down or unknown, since.
    state      text             NOT NULL DEFAULT 'unknown',
    state_at   timestamptz,
    last_seen  timestamptz,
    created_at timestamptz      NOT NULL DEFAULT now(),
    updated_at timestamptz      NOT NULL DEFAULT now()
);

ALTER TABLE instances ADD COLUMN host text NOT NULL DEFAULT '';

---- create above / drop below ----

ALTER TABLE instances DROP COLUMN host;
DROP TABLE hosts;
