-- The webhook outbox: one row per status event and receiver, written in
-- the transaction of the outcome that causes it, so an event exists exactly
-- when its outcome does. The Webhooks actor delivers due rows.
--
-- A row is 'pending' until delivered ('delivered'), given up after the
-- retry schedule ('failed'), or refused with 410 Gone ('gone'). A claim
-- moves next_attempt_at past the attempt's end (the lease) and stamps
-- lease_owner; a process that dies mid-delivery leaves the row due again
-- once that time passes, and only the lease's owner records the outcome.
CREATE TABLE webhook_events (
    id              BIGSERIAL PRIMARY KEY,
    -- The webhook-id header: one per event, shared by its receivers' rows,
    -- the same on every retry.
    event_id        TEXT        NOT NULL,
    type            TEXT        NOT NULL CHECK (type IN
                    ('message.sent', 'message.failed', 'message.retrying', 'message.cancelled')),
    url             TEXT        NOT NULL,
    message_kind    TEXT        NOT NULL CHECK (message_kind IN ('contact', 'notify')),
    message_id      BIGINT      NOT NULL,
    message_uuid    UUID        NOT NULL,
    -- The body, byte for byte as signed and sent on every attempt (text,
    -- not jsonb, which would reorder keys).
    payload         TEXT        NOT NULL,
    status          TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'failed', 'gone')),
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_owner     UUID,
    last_status_code INTEGER,
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);

-- Every index is paid for by each outcome that records an event, on the
-- delivery path, so there are few: what is due (claims), what finished
-- longest ago (the purge; pending rows are not in it), and the events of
-- one message (the list's ?message=). The list by status walks the primary
-- key backwards, newest first. event_id is unique by construction (a new
-- uuid per event, the receivers deduplicated), so no index checks it.
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_events_finished ON webhook_events (finished_at)
    WHERE status <> 'pending';
CREATE INDEX webhook_events_message ON webhook_events (message_uuid);
