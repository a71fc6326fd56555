-- An app's newest events of some kinds (LatestEvents: the failure events
-- every `scheduler status APP` reads): each kind's newest rows are read
-- backwards from this index and merged, so the read costs at most limit
-- rows a kind, not every event of those kinds of every app (the BitmapAnd
-- of events_app_at and events_kind_at) nor, for an app that rarely
-- fails, its whole history (events_app_at backwards). See
-- docs/benchmarks.md, Event queries at scale.
CREATE INDEX events_app_kind_at ON events (app, kind, at);

---- create above / drop below ----

DROP INDEX events_app_kind_at;
