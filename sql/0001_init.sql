-- The durable state of email-service. PostgreSQL is the source of truth: a
-- message exists once its row is committed, and its status, retry count and
-- next_attempt_at say everything the dispatcher needs to finish it.

CREATE TABLE contact_messages (
    id              BIGSERIAL PRIMARY KEY,
    uuid            UUID        NOT NULL UNIQUE,
    name            TEXT        NOT NULL,
    email           TEXT        NOT NULL,
    message         TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    retry_count     INTEGER     NOT NULL DEFAULT 0,
    error_message   TEXT,
    next_attempt_at TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ,
    -- Who is sending it now and until when; an expired lease means the
    -- process died mid-send and the message goes back to 'queued'.
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    -- SHA-256 of the validated request, so a repeat with the same body uuid
    -- can be told apart from a conflicting reuse of that uuid.
    request_hash    BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id              BIGSERIAL PRIMARY KEY,
    uuid            UUID        NOT NULL UNIQUE,
    recipient       TEXT        NOT NULL,
    subject         TEXT        NOT NULL,
    body            TEXT        NOT NULL,
    html            TEXT,
    metadata        JSONB,
    status          TEXT        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    retry_count     INTEGER     NOT NULL DEFAULT 0,
    error_message   TEXT,
    next_attempt_at TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ,
    lease_owner     TEXT,
    lease_until     TIMESTAMPTZ,
    request_hash    BYTEA       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- List views: newest first, optionally filtered by status.
CREATE INDEX contact_messages_status_id ON contact_messages (status, id DESC);
CREATE INDEX notifications_status_id ON notifications (status, id DESC);

-- Dispatcher: what is due, and which leases have expired.
CREATE INDEX contact_messages_due ON contact_messages (next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE status = 'queued';
CREATE INDEX contact_messages_leases ON contact_messages (lease_until)
    WHERE status = 'sending';
CREATE INDEX notifications_leases ON notifications (lease_until)
    WHERE status = 'sending';

-- One row per delivery attempt, for both kinds of message.
CREATE TABLE delivery_attempts (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT        NOT NULL CHECK (kind IN ('contact', 'notify')),
    message_id  BIGINT      NOT NULL,
    number      INTEGER     NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome     TEXT CHECK (outcome IN ('sent', 'transient', 'permanent', 'crash')),
    smtp_code   INTEGER,
    smtp_reply  TEXT,
    error       TEXT,
    duration_ms BIGINT,
    UNIQUE (kind, message_id, number)
);

-- Idempotency-Key records, per endpoint. The stored response is replayed
-- byte for byte, so it is kept as text, not jsonb (which reorders keys).
CREATE TABLE idempotency_keys (
    scope           TEXT        NOT NULL CHECK (scope IN ('contact', 'notify')),
    key             TEXT        NOT NULL,
    request_hash    BYTEA       NOT NULL,
    message_id      BIGINT,
    response_status SMALLINT,
    response_body   TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
