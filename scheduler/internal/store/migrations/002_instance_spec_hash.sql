-- The container-relevant spec hash an instance runs, so a spec change is rolled out.
ALTER TABLE instances ADD COLUMN spec_hash text NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN started_at timestamptz;

---- create above / drop below ----

ALTER TABLE instances DROP COLUMN started_at;
ALTER TABLE instances DROP COLUMN spec_hash;
