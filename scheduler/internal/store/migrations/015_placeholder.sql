-- Placeholder for migration 015, which another branch adds in parallel:
-- tern refuses a gap, and this branch's 016 needs a 015 to load. Drop this
-- file when merging (the other branch's 015 takes its place).
SELECT 1;

---- create above / drop below ----

SELECT 1;
