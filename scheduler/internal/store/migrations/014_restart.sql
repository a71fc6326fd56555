-- scheduler restart (issue 27): the generation of an app's last restart.
-- The leader mixes it into the hash of the app's containers, so a restart
-- replaces every instance by a rolling update with the same spec; 0 (never
-- restarted) leaves every hash as it was.
ALTER TABLE apps ADD COLUMN restarted_generation bigint NOT NULL DEFAULT 0;

---- create above / drop below ----

ALTER TABLE apps DROP COLUMN restarted_generation;
