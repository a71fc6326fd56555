-- What the autoscaler's decisions need beyond current, desired and reasons:
-- the recommendation before limits (for the stabilisation windows a new
-- leader rebuilds), what held it back, and the term that decided.
ALTER TABLE scaling_decisions ADD COLUMN recommendation integer NOT NULL DEFAULT 0;
ALTER TABLE scaling_decisions ADD COLUMN limits jsonb NOT NULL DEFAULT '[]';
ALTER TABLE scaling_decisions ADD COLUMN term bigint NOT NULL DEFAULT 0;

---- create above / drop below ----

ALTER TABLE scaling_decisions DROP COLUMN term;
ALTER TABLE scaling_decisions DROP COLUMN limits;
ALTER TABLE scaling_decisions DROP COLUMN recommendation;
