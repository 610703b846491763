-- Version 2: received SMS (as parts, and as messages) and their deliveries to hubs.

CREATE TABLE sms_parts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    digest       TEXT NOT NULL UNIQUE,   -- sha256 of (ICCID, PDU): read twice, stored once
    iccid        TEXT NOT NULL,
    port         TEXT,
    storage      TEXT,
    slot         INTEGER,
    pdu          TEXT NOT NULL,          -- as the modem gave it
    received     REAL NOT NULL,
    sender       TEXT,
    part_key     TEXT,                   -- multipart: sender/reference size/reference/total
    part_total   INTEGER,
    part_seq     INTEGER,
    sms_id       INTEGER REFERENCES sms (id)   -- NULL while waiting for the other parts
);
CREATE INDEX sms_parts_pending ON sms_parts (part_key) WHERE sms_id IS NULL;

CREATE TABLE sms (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- the smsId sent to the hubs
    iccid     TEXT NOT NULL,
    number    TEXT,                     -- the SIM's number when it arrived
    sender    TEXT NOT NULL,
    text      TEXT NOT NULL,
    kind      TEXT NOT NULL,            -- text | binary | status_report | submit | undecodable
    sent      REAL,                     -- the network's time stamp
    received  REAL NOT NULL,
    complete  INTEGER NOT NULL DEFAULT 1  -- 0: delivered with parts missing after the timeout
);
CREATE INDEX sms_by_number ON sms (number, received);

CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sms_id        INTEGER NOT NULL REFERENCES sms (id),
    hub           TEXT NOT NULL,
    activation_id INTEGER,
    created       REAL NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    last_attempt  REAL,
    last_result   TEXT,
    done          REAL,                 -- when it ended: SUCCESS, or a final answer
    outcome       TEXT,                 -- SUCCESS, or the final status the hub gave
    UNIQUE (sms_id, hub)
);
CREATE INDEX deliveries_due ON deliveries (hub, next_attempt) WHERE done IS NULL;
