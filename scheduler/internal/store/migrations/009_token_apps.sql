-- A deploy token may be limited to the apps it may change: name patterns
-- (an app name, or a glob with '*', such as shop-*). Empty: every app.
ALTER TABLE api_tokens ADD COLUMN apps text[] NOT NULL DEFAULT '{}';

---- create above / drop below ----

ALTER TABLE api_tokens DROP COLUMN apps;
