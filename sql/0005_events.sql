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

-- ?search= is a case-insensitive substring (ILIKE '%...%'); trigram GIN
-- indexes serve it on a big table. pg_trgm ships with PostgreSQL's contrib
-- (Debian's postgresql-15 package has it) and is a trusted extension; where
-- it cannot be created, search still works, by scanning.
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'pg_trgm is not available (%): ?search= will scan', SQLERRM;
        RETURN;
    END;
    EXECUTE 'CREATE INDEX IF NOT EXISTS notifications_search ON notifications
             USING gin (recipient gin_trgm_ops, subject gin_trgm_ops)';
    EXECUTE 'CREATE INDEX IF NOT EXISTS contact_messages_search ON contact_messages
             USING gin (name gin_trgm_ops, email gin_trgm_ops)';
END
$$;
