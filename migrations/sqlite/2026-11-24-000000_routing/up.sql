-- Acceptance, lapses, transfers and sticky routing (API.md "Acceptance,
-- lapses and transfers", "Sticky routing").

-- Durations in nanoseconds, as the API gives them; NULL: the feature is off.
ALTER TABLE sources ADD COLUMN accept_timeout_nanos BIGINT
    CHECK (accept_timeout_nanos BETWEEN 1000000000 AND 86400000000000);
ALTER TABLE sources ADD COLUMN sticky_window_nanos BIGINT
    CHECK (sticky_window_nanos BETWEEN 1000000000 AND 31622400000000000);

-- accept_deadline is set only while an ACTIVE contact waits to be accepted.
-- lapsed_with: the operators the contact lapsed with since it was last
-- PENDING, comma-separated ids; NULL when none.
ALTER TABLE contacts ADD COLUMN accepted_at BIGINT;
ALTER TABLE contacts ADD COLUMN accept_deadline BIGINT CHECK (accept_deadline IS NULL OR status = 1);
ALTER TABLE contacts ADD COLUMN lapses INTEGER NOT NULL DEFAULT 0 CHECK (lapses >= 0);
ALTER TABLE contacts ADD COLUMN lapsed_with TEXT;
-- The lapse task finds the offers whose deadline passed. Sources without an
-- accept_timeout never add to this index. (Sticky routing finds a lead's most
-- recent assigned contact through contacts_lead_id (lead_id, id), newest
-- first: a lead has few contacts that were never assigned.)
CREATE INDEX contacts_accept_deadline ON contacts (accept_deadline)
    WHERE accept_deadline IS NOT NULL;

ALTER TABLE contact_counts ADD COLUMN lapsed BIGINT NOT NULL DEFAULT 0 CHECK (lapsed >= 0);

ALTER TABLE contact_events ADD COLUMN accepted_at BIGINT;
ALTER TABLE contact_events ADD COLUMN accept_deadline BIGINT;
ALTER TABLE contact_events ADD COLUMN lapses INTEGER NOT NULL DEFAULT 0;
