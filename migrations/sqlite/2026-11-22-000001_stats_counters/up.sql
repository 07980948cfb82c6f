-- Counters behind GetOperatorStats, kept in the same transaction as the
-- contacts they count, so the report reads a few rows instead of scanning.

CREATE TABLE contact_counts (
    operator_id BIGINT NOT NULL REFERENCES operators (id),
    source_id   BIGINT NOT NULL REFERENCES sources (id),
    active      BIGINT NOT NULL DEFAULT 0 CHECK (active >= 0),
    closed      BIGINT NOT NULL DEFAULT 0 CHECK (closed >= 0),
    total       BIGINT NOT NULL DEFAULT 0 CHECK (total >= 0),
    PRIMARY KEY (operator_id, source_id)
);
CREATE INDEX contact_counts_source_id ON contact_counts (source_id);

CREATE TABLE pending_counts (
    source_id BIGINT PRIMARY KEY NOT NULL REFERENCES sources (id),
    pending   BIGINT NOT NULL DEFAULT 0 CHECK (pending >= 0)
);

-- A row for every source, and for every pair in a weight table or with contacts.
INSERT INTO pending_counts (source_id, pending)
SELECT s.id, (SELECT COUNT(*) FROM contacts c WHERE c.source_id = s.id AND c.status = 2)
FROM sources s;

INSERT INTO contact_counts (operator_id, source_id, active, closed, total)
SELECT pairs.operator_id, pairs.source_id,
       (SELECT COUNT(*) FROM contacts c
         WHERE c.operator_id = pairs.operator_id AND c.source_id = pairs.source_id AND c.status = 1),
       (SELECT COUNT(*) FROM contacts c
         WHERE c.operator_id = pairs.operator_id AND c.source_id = pairs.source_id AND c.status = 3),
       (SELECT COUNT(*) FROM contacts c
         WHERE c.operator_id = pairs.operator_id AND c.source_id = pairs.source_id)
FROM (
    SELECT operator_id, source_id FROM source_operators
    UNION
    SELECT DISTINCT operator_id, source_id FROM contacts WHERE operator_id IS NOT NULL
) AS pairs;
