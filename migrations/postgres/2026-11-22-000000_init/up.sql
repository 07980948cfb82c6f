-- Times are BIGINT microseconds since the Unix epoch (UTC) on both backends, so one
-- diesel schema serves SQLite and PostgreSQL alike.

CREATE TABLE operators (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL CHECK (char_length(name) BETWEEN 1 AND 255),
    is_active   BOOLEAN NOT NULL,
    max_load    INTEGER NOT NULL CHECK (max_load >= 0),
    -- Kept equal to the operator's count of ACTIVE contacts, in the same transaction.
    active_load INTEGER NOT NULL DEFAULT 0 CHECK (active_load >= 0),
    created_at  BIGINT  NOT NULL
);

CREATE TABLE sources (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id     TEXT    NOT NULL UNIQUE CHECK (char_length(bot_id) BETWEEN 1 AND 255),
    name       TEXT    NOT NULL CHECK (char_length(name) <= 255),
    created_at BIGINT  NOT NULL
);

CREATE TABLE source_operators (
    source_id   BIGINT  NOT NULL REFERENCES sources (id),
    operator_id BIGINT  NOT NULL REFERENCES operators (id),
    weight      INTEGER NOT NULL CHECK (weight BETWEEN 1 AND 1000000),
    PRIMARY KEY (source_id, operator_id)
);
CREATE INDEX source_operators_operator_id ON source_operators (operator_id);

-- Absent identifiers are NULL, so UNIQUE holds only among the present ones.
CREATE TABLE leads (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_id TEXT UNIQUE CHECK (char_length(external_id) BETWEEN 1 AND 255),
    phone       TEXT UNIQUE CHECK (char_length(phone) BETWEEN 1 AND 255),
    email       TEXT UNIQUE CHECK (char_length(email) BETWEEN 1 AND 255),
    name        TEXT    NOT NULL CHECK (char_length(name) <= 255),
    created_at  BIGINT  NOT NULL,
    CHECK (external_id IS NOT NULL OR phone IS NOT NULL OR email IS NOT NULL)
);

-- status: 1 ACTIVE, 2 PENDING, 3 CLOSED (the proto enum's numbers).
CREATE TABLE contacts (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lead_id      BIGINT  NOT NULL REFERENCES leads (id),
    source_id    BIGINT  NOT NULL REFERENCES sources (id),
    operator_id  BIGINT  REFERENCES operators (id),
    status       INTEGER NOT NULL CHECK (status IN (1, 2, 3)),
    created_at   BIGINT  NOT NULL,
    assigned_at  BIGINT,
    closed_at    BIGINT,
    request_id   TEXT UNIQUE CHECK (char_length(request_id) BETWEEN 1 AND 255),
    -- What the first call reported, for idempotent retries.
    lead_created BOOLEAN NOT NULL,
    CHECK (status <> 1 OR (operator_id IS NOT NULL AND assigned_at IS NOT NULL AND closed_at IS NULL)),
    CHECK (status <> 2 OR (operator_id IS NULL AND assigned_at IS NULL AND closed_at IS NULL)),
    CHECK (status <> 3 OR closed_at IS NOT NULL),
    CHECK ((operator_id IS NULL) = (assigned_at IS NULL))
);
CREATE INDEX contacts_operator_id ON contacts (operator_id, id);
CREATE INDEX contacts_source_id ON contacts (source_id, id);
CREATE INDEX contacts_lead_id ON contacts (lead_id, id);
-- Pending dispatch takes the oldest pending contacts of some sources.
CREATE INDEX contacts_pending ON contacts (source_id, id) WHERE status = 2;
