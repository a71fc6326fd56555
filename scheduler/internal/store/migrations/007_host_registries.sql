-- Hosts, tightened: the registries whose credentials (from
-- --registry-auth-file) a host's engine may receive with a pull, and why
-- the leader does not use a host (its registration breaks the operator's
-- policy: TLS files outside --host-tls-dir, a loopback or link-local
-- address; or its engine cannot be set up).
ALTER TABLE hosts ADD COLUMN registries   text[] NOT NULL DEFAULT '{}';
ALTER TABLE hosts ADD COLUMN state_reason text   NOT NULL DEFAULT '';

---- create above / drop below ----

ALTER TABLE hosts DROP COLUMN state_reason;
ALTER TABLE hosts DROP COLUMN registries;
