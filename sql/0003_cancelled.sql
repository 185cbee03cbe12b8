-- An operator may cancel a message that is still queued: 'cancelled' is a
-- final status, like 'sent' and 'failed', until a resend queues it again.
-- Claims, outcomes, releases and reclaims all test for 'queued' or
-- 'sending', so none of them can touch a cancelled row.
ALTER TABLE contact_messages DROP CONSTRAINT contact_messages_status_check,
    ADD CONSTRAINT contact_messages_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled'));
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check,
    ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('queued', 'sending', 'sent', 'failed', 'cancelled'));
