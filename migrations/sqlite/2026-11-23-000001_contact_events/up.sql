-- Every change of a contact, written in the same transaction as the change.
-- Ids are handed out at commit from event_ids.last, whose row lock orders
-- the transactions that write events: ids increase in commit order, with no
-- gaps. The contact's fields that never change (lead, creation, request id)
-- are read from contacts; its changing fields are kept here as they were
-- right after the event.
CREATE TABLE contact_events (
    id                   INTEGER PRIMARY KEY NOT NULL CHECK (id > 0),
    contact_id           BIGINT  NOT NULL,
    source_id            BIGINT  NOT NULL,
    kind                 INTEGER NOT NULL CHECK (kind BETWEEN 1 AND 5),
    time                 BIGINT  NOT NULL,
    status               INTEGER NOT NULL CHECK (status IN (1, 2, 3)),
    operator_id          BIGINT,
    previous_operator_id BIGINT,
    assigned_at          BIGINT,
    closed_at            BIGINT,
    -- The assignment's reason (1 weighted draw, 2 sticky, 3 transfer), and
    -- its candidates packed 20 bytes each: operator id (8), weight, active
    -- load and max load (4 each), little-endian.
    reason               INTEGER CHECK (reason BETWEEN 1 AND 3),
    candidates           BLOB
);
CREATE INDEX contact_events_contact_id ON contact_events (contact_id, id);
CREATE INDEX contact_events_source_id ON contact_events (source_id, id);
CREATE INDEX contact_events_operator_id ON contact_events (operator_id, id);
CREATE INDEX contact_events_previous_operator_id ON contact_events (previous_operator_id, id)
    WHERE previous_operator_id IS NOT NULL;

CREATE TABLE event_ids (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last BIGINT  NOT NULL CHECK (last >= 0)
);
INSERT INTO event_ids (id, last) VALUES (1, 0);
