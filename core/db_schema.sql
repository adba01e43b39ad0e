-- SPDX-License-Identifier: MIT
-- The loyd store schema (SQLite), compiled in as loyd_db_schema_sql.
--
-- Each section starts with a line "-- migration N" (N = 1, 2, 3, ... in order).  At open the
-- store applies every section with N > PRAGMA user_version, each in its own transaction that
-- also sets user_version = N.  A released section is never edited: changes go into a new
-- section appended at the end.  Points are INTEGER (int64) in STRICT tables, never REAL.

-- migration 1
CREATE TABLE tenants (
    tenant      TEXT NOT NULL PRIMARY KEY CHECK (length(tenant) BETWEEN 1 AND 200),
    created_ms  INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Received webhooks, stored before the 200 answer.  AUTOINCREMENT: an id is never reused, so an
-- id reported to anyone always means the same row.
CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT NOT NULL REFERENCES tenants (tenant),
    idem_key     TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    content_type TEXT NOT NULL DEFAULT '',
    body         BLOB NOT NULL,
    notices      TEXT CHECK (notices IS NULL OR json_valid(notices)),
    status       TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'done', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    error        TEXT,
    finished_ms  INTEGER,
    UNIQUE (tenant, idem_key)
) STRICT;
CREATE INDEX inbox_new ON inbox (id) WHERE status = 'new';
CREATE INDEX inbox_new_tenant ON inbox (tenant, id) WHERE status = 'new';

-- One row per applied event; (tenant, event_key) is the exactly-once guard.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT NOT NULL REFERENCES tenants (tenant),
    event_key    TEXT NOT NULL,
    type         TEXT NOT NULL,
    inbox_id     INTEGER REFERENCES inbox (id),
    json         TEXT CHECK (json IS NULL OR json_valid(json)),
    trace        TEXT CHECK (trace IS NULL OR json_valid(trace)),
    pack_version TEXT,
    applied_ms   INTEGER NOT NULL,
    UNIQUE (tenant, event_key)
) STRICT;
CREATE INDEX events_inbox ON events (inbox_id) WHERE inbox_id IS NOT NULL;

CREATE TABLE members (
    tenant      TEXT NOT NULL REFERENCES tenants (tenant),
    member_id   TEXT NOT NULL,
    json        TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(json)),
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant, member_id)
) STRICT;

-- The points ledger: append-only.  A lot is a row with points > 0 and no lot_id; redeem, expire
-- and reverse rows are negative and name the lot they draw from.  Balance = SUM(points).
CREATE TABLE ledger (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant       TEXT NOT NULL,
    member_id    TEXT NOT NULL,
    event_key    TEXT NOT NULL,
    kind         TEXT NOT NULL
                 CHECK (kind IN ('award', 'redeem', 'expire', 'reverse', 'adjust')),
    points       INTEGER NOT NULL CHECK (points <> 0),
    reason       TEXT,
    expires_ms   INTEGER,
    lot_id       INTEGER REFERENCES ledger (id),
    ref          TEXT,
    created_ms   INTEGER NOT NULL,
    pack_version TEXT,
    campaign     TEXT,
    FOREIGN KEY (tenant, event_key) REFERENCES events (tenant, event_key),
    CHECK (kind <> 'award' OR (points > 0 AND lot_id IS NULL)),
    CHECK (kind NOT IN ('redeem', 'expire', 'reverse') OR (points < 0 AND lot_id IS NOT NULL))
) STRICT;
CREATE INDEX ledger_member ON ledger (tenant, member_id, id);
CREATE INDEX ledger_lot ON ledger (lot_id) WHERE lot_id IS NOT NULL;
CREATE INDEX ledger_ref ON ledger (tenant, ref) WHERE ref IS NOT NULL;
CREATE INDEX ledger_campaign ON ledger (tenant, campaign) WHERE campaign IS NOT NULL;
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger rows are immutable');
END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'ledger rows are immutable');
END;

-- Write-backs to the CRM, written in the same transaction as the ledger rows that caused them.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant          TEXT NOT NULL REFERENCES tenants (tenant),
    member_id       TEXT,
    event_key       TEXT,
    payload         TEXT NOT NULL CHECK (json_valid(payload)),
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    error           TEXT,
    created_ms      INTEGER NOT NULL,
    updated_ms      INTEGER NOT NULL,
    FOREIGN KEY (tenant, event_key) REFERENCES events (tenant, event_key)
) STRICT;
CREATE INDEX outbox_pending ON outbox (tenant, id) WHERE status = 'pending';
CREATE INDEX outbox_pending_member ON outbox (tenant, member_id, id) WHERE status = 'pending';

-- Per-tenant durable values: CRM tokens, provisioned CRM field ids.
CREATE TABLE kv (
    tenant      TEXT NOT NULL REFERENCES tenants (tenant),
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) STRICT, WITHOUT ROWID;

-- Events and write-backs that failed for good.  payload is ANY: an inbox body may be binary.
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT REFERENCES tenants (tenant),
    kind        TEXT NOT NULL,
    ref         TEXT,
    payload     ANY,
    error       TEXT,
    created_ms  INTEGER NOT NULL
) STRICT;
CREATE INDEX dead_letters_tenant ON dead_letters (tenant, id);

-- migration 2
-- A write-back handed to the CRM and not finished yet: after a crash it may or may not have
-- landed, so an add (a note, a task) must be looked for before it is sent again.
ALTER TABLE outbox ADD COLUMN sending INTEGER NOT NULL DEFAULT 0 CHECK (sending IN (0, 1));
