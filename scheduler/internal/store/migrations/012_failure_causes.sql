-- What a failed deploy says (issue 26). log_tail is the last lines a
-- failed instance's container wrote: the API's event view shows them, and
-- nothing publishes them on NATS, where every reader would see them. The
-- index serves the restart budget and the failed rollouts, which the
-- leader reads by kind on every cycle.
ALTER TABLE events ADD COLUMN log_tail text[];
CREATE INDEX events_kind_at ON events (kind, at);

---- create above / drop below ----

DROP INDEX events_kind_at;
ALTER TABLE events DROP COLUMN log_tail;
