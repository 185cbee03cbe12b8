-- A resend starts a new series of attempts: retry_count restarts at 0, and
-- attempt numbers go on after the highest one so far. attempt_base is that
-- highest number at the resend; attempt n of a series is numbered
-- attempt_base + n.
ALTER TABLE contact_messages ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
