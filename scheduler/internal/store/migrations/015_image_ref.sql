-- Image pinning (issue 27): the reference every host runs for an app's
-- generation: repo@sha256:… (a registry's digest for the spec's tag, or
-- the spec's own digest), or sha256:… (the image ID of an image only the
-- engines hold); '' for an image that was not pinned, and for every app
-- stored before this migration, whose containers then hash as before.
-- previous_image_ref is the apps row's ref before its last change: the
-- app_updated event says old → new.
ALTER TABLE apps ADD COLUMN image_ref text NOT NULL DEFAULT '';
ALTER TABLE apps ADD COLUMN previous_image_ref text NOT NULL DEFAULT '';
ALTER TABLE app_history ADD COLUMN image_ref text NOT NULL DEFAULT '';

---- create above / drop below ----

ALTER TABLE app_history DROP COLUMN image_ref;
ALTER TABLE apps DROP COLUMN previous_image_ref;
ALTER TABLE apps DROP COLUMN image_ref;
