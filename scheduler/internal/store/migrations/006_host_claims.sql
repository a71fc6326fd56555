-- Host ownership: when each app first claimed each of its hosts ("" for
-- the default server, an app without routing.hosts), as {host: time}. A
-- host belongs to the app that claimed it first (common/spec Claims), so
-- an app created long ago that names a host later does not take it over.
-- Existing apps are taken to have claimed their hosts when they were
-- created, as the scheduler decided before.
ALTER TABLE apps ADD COLUMN host_claims jsonb NOT NULL DEFAULT '{}';

UPDATE apps SET host_claims = (
    SELECT COALESCE(jsonb_object_agg(lower(h), to_jsonb(apps.created_at)), '{}'::jsonb)
    FROM jsonb_array_elements_text(COALESCE(apps.spec->'routing'->'hosts', '[]'::jsonb)) AS h)
WHERE deleted_at IS NULL;

UPDATE apps SET host_claims = jsonb_build_object('', to_jsonb(created_at))
WHERE deleted_at IS NULL AND host_claims = '{}'::jsonb;

---- create above / drop below ----

ALTER TABLE apps DROP COLUMN host_claims;
