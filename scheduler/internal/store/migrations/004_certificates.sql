-- ACME: the account the leader orders with, by directory and email, and
-- each app's certificate with its renewal state. Private keys (the
-- account's and each certificate's) are stored encrypted with the key of
-- the scheduler's --cert-key-file (AES-256-GCM, the app or account as
-- associated data); the chain is public.
CREATE TABLE acme_accounts (
    directory  text        NOT NULL,
    email      text        NOT NULL,
    key        bytea       NOT NULL,
    uri        text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (directory, email)
);

CREATE TABLE certificates (
    app        text        PRIMARY KEY,
    names      text[]      NOT NULL,
    chain      text        NOT NULL DEFAULT '',
    key        bytea,
    serial     text        NOT NULL DEFAULT '',
    not_before timestamptz,
    not_after  timestamptz,
    issued_at  timestamptz,
    -- Renewal state: consecutive failures, when to try again, and why the
    -- last attempt failed.
    failures   integer     NOT NULL DEFAULT 0,
    retry_at   timestamptz,
    last_error text        NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);

---- create above / drop below ----

DROP TABLE certificates;
DROP TABLE acme_accounts;
