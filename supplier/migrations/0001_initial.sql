-- Version 1: SIMs, activations and per-(number, service) history.

CREATE TABLE sims (
    iccid         TEXT PRIMARY KEY,
    imsi          TEXT,
    number        TEXT,              -- as the modem reported it (digits, country code)
    number_manual TEXT,              -- set by an operator; wins over the modem's
    country       TEXT,
    operator      TEXT,
    port          TEXT,
    enabled       INTEGER NOT NULL DEFAULT 1,   -- 0: taken out of sale by an operator
    first_seen    REAL NOT NULL,
    last_seen     REAL NOT NULL,
    last_used     REAL               -- last GET_NUMBER: spreads the load (least recently used first)
);

CREATE TABLE activations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, even after deletes
    hub         TEXT NOT NULL,
    iccid       TEXT NOT NULL,
    number      TEXT NOT NULL,
    service     TEXT NOT NULL,
    country     TEXT NOT NULL,
    operator    TEXT NOT NULL,
    sum         TEXT,                -- decimal as the hub sent it
    currency    INTEGER,             -- ISO 4217 numeric
    created     REAL NOT NULL,
    release_at  REAL NOT NULL,       -- sellable again after this without a FINISH
    finished    REAL,                -- when FINISH_ACTIVATION arrived
    status      INTEGER              -- its status: 1, 3, 4 or 5
);
CREATE INDEX activations_by_number ON activations (number, created);
CREATE INDEX activations_unfinished ON activations (release_at) WHERE finished IS NULL;

CREATE TABLE usage (
    number    TEXT NOT NULL,
    service   TEXT NOT NULL,
    offers    INTEGER NOT NULL DEFAULT 0,  -- times handed out for this service
    sold      INTEGER NOT NULL DEFAULT 0,  -- FINISH 3
    cancelled INTEGER NOT NULL DEFAULT 0,  -- FINISH 4
    returned  INTEGER NOT NULL DEFAULT 0,  -- FINISH 5
    blocked   INTEGER NOT NULL DEFAULT 0,  -- FINISH 1 or 3: never again for this service
    PRIMARY KEY (number, service)
);
