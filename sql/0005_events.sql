-- Operator control: what was done to a message, and lists that stay fast at
-- a million rows.
--
-- message_events: one row per change an operator made (a cancel, a resend,
-- single or bulk), written in the transaction of the change itself, so the
-- detail view never shows an event that did not happen or misses one that
-- did. Rows are only ever added.
CREATE TABLE message_events (
    id          BIGSERIAL   PRIMARY KEY,
    kind        TEXT        NOT NULL CHECK (kind IN ('contact', 'notify')),
    message_id  BIGINT      NOT NULL,
    what        TEXT        NOT NULL CHECK (what IN ('cancelled', 'resent')),
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    request_id  TEXT,
    -- The status the message left.
    from_status TEXT        NOT NULL,
    -- A resend's ?force=; null for a cancel.
    force       BOOLEAN,
    bulk        BOOLEAN     NOT NULL DEFAULT false
);
CREATE INDEX message_events_message ON message_events (kind, message_id, id);

-- Idempotency-Key records are per endpoint: the two accept endpoints kept
-- their scope names, the actions add theirs.
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_scope_check,
    ADD CONSTRAINT idempotency_keys_scope_check CHECK (scope IN (
        'contact', 'notify',
        'contact.cancel', 'contact.retry', 'notify.cancel', 'notify.retry',
        'contact.bulk_cancel', 'contact.bulk_retry', 'notify.bulk_cancel', 'notify.bulk_retry'));

-- List filters: ?to= / ?email= (compared case-insensitively) and the
-- created_after / created_before window. Newest first is the primary key.
-- IF NOT EXISTS: on a big table an operator may build these beforehand
-- with CREATE INDEX CONCURRENTLY (docs/operations.md, Upgrading).
CREATE INDEX IF NOT EXISTS notifications_recipient ON notifications (lower(recipient), id);
CREATE INDEX IF NOT EXISTS contact_messages_email ON contact_messages (lower(email), id);
CREATE INDEX IF NOT EXISTS notifications_created ON notifications (created_at, id);
CREATE INDEX IF NOT EXISTS contact_messages_created ON contact_messages (created_at, id);

-- ?search= (a case-insensitive substring, ILIKE '%...%') has no index here:
-- a trigram GIN index (pg_trgm) would serve it, but measured on this
-- project's machine it cost a fifth to a half of the single-row INSERT rate
-- and put GIN pending-list flushes of 100-250 ms into the accept path's
-- tail. An operator who needs fast search on a big table can add it
-- (docs/operations.md, "Operator actions and big lists").
