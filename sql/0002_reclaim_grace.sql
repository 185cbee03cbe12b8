-- A lease found expired is not taken back at once: the reconciler first
-- stamps reclaim_after, and reclaims only once that time has passed with
-- the lease still unchanged. A holder that is alive but could not record
-- its outcome (the database was down for longer than the lease) writes it
-- during that grace, so the mail it sent is not sent again.
ALTER TABLE contact_messages ADD COLUMN reclaim_after TIMESTAMPTZ;
ALTER TABLE notifications ADD COLUMN reclaim_after TIMESTAMPTZ;
