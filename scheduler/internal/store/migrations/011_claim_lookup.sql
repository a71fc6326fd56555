-- What an apply needs of the other apps, without reading every spec: the
-- API checks an app against the apps that claim one of its hosts (the
-- route table decides each host by its claimants alone), found through
-- this index on host_claims' keys, and against the routes of every app
-- together (--max-routes), summed from routes. The index has no pending
-- list (fastupdate off), so a lookup never scans the entries of recent
-- applies. routes is Postgres's own count of spec's routing (common/spec
-- Routing.Routes: max(hosts, 1) × (paths + rules)), kept with every write
-- of spec by any scheduler, also one that predates this migration.
CREATE INDEX apps_host_claims ON apps USING gin (host_claims) WITH (fastupdate = off) WHERE deleted_at IS NULL;

ALTER TABLE apps ADD COLUMN routes integer GENERATED ALWAYS AS (
    greatest(1, CASE WHEN jsonb_typeof(spec->'routing'->'hosts') = 'array' THEN jsonb_array_length(spec->'routing'->'hosts') ELSE 0 END) *
    ((CASE WHEN jsonb_typeof(spec->'routing'->'paths') = 'array' THEN jsonb_array_length(spec->'routing'->'paths') ELSE 0 END) +
     (CASE WHEN jsonb_typeof(spec->'routing'->'rules') = 'array' THEN jsonb_array_length(spec->'routing'->'rules') ELSE 0 END))
) STORED;

---- create above / drop below ----

ALTER TABLE apps DROP COLUMN routes;
DROP INDEX apps_host_claims;
