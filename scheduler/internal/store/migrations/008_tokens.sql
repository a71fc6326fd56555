-- Scoped API tokens, and who made each change. A token is stored as the
-- SHA-256 of its secret only (the secret is 32 random bytes, so a hash
-- without salt or stretching is enough); revoking keeps the row, so the
-- name stays in the audit trail and is never given to another token.
CREATE TABLE api_tokens (
    name         text        PRIMARY KEY,
    scope        text        NOT NULL CHECK (scope IN ('read', 'deploy', 'admin')),
    hash         bytea       NOT NULL UNIQUE CHECK (length(hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text        NOT NULL,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

-- The actor of each change: a token's name, "bootstrap" (--api-token-file),
-- "anonymous" (an open loopback API), or the scheduler itself
-- ("scheduler", "autoscaler"). Rows from before this migration have ''.
ALTER TABLE events ADD COLUMN actor text NOT NULL DEFAULT '';
ALTER TABLE app_history ADD COLUMN actor text NOT NULL DEFAULT '';
ALTER TABLE apps ADD COLUMN updated_by text NOT NULL DEFAULT '';

---- create above / drop below ----

ALTER TABLE apps DROP COLUMN updated_by;
ALTER TABLE app_history DROP COLUMN actor;
ALTER TABLE events DROP COLUMN actor;
DROP TABLE api_tokens;
