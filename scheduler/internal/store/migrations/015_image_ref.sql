-- Image pinning (issue 27): the reference every host runs for an app's
-- generation: repo@sha256:… (a registry's digest for the spec's tag, or
-- the spec's own digest), or sha256:… (the image ID of an image only the
-- engines hold); '' for an image that was not pinned, and for every app
-- stored before this migration, whose containers then hash as before.
-- previous_image_ref is the apps row's ref before its last change: the
-- app_updated event says old → new. image_ref_generation is the generation
-- image_ref was written for: a scheduler of the version before, still
-- serving the API during a rolling upgrade, writes a new generation
-- without touching image_ref, and that stale pin must not apply to it.
ALTER TABLE apps ADD COLUMN image_ref text NOT NULL DEFAULT '';
ALTER TABLE apps ADD COLUMN previous_image_ref text NOT NULL DEFAULT '';
ALTER TABLE apps ADD COLUMN image_ref_generation bigint NOT NULL DEFAULT 0;
ALTER TABLE app_history ADD COLUMN image_ref text NOT NULL DEFAULT '';

---- create above / drop below ----

ALTER TABLE app_history DROP COLUMN image_ref;
ALTER TABLE apps DROP COLUMN image_ref_generation;
ALTER TABLE apps DROP COLUMN previous_image_ref;
ALTER TABLE apps DROP COLUMN image_ref;
