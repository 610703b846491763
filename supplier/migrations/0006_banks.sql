-- Version 6: SIM banks. Every slot's SIM as learned when it was first switched
-- in (so the inventory knows every SIM of a bank, in a module or not), its
-- rotation state, and which slot each module holds (written before a switch
-- command is sent, so a restart mid-switch knows what was asked for).

CREATE TABLE bank_slots (
    bank TEXT NOT NULL,
    module INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    iccid TEXT,                      -- NULL: never seen (or the slot is empty)
    imsi TEXT,
    number TEXT,
    state TEXT NOT NULL DEFAULT 'unknown',  -- unknown | known | empty | faulty
    last_in REAL,                    -- when its SIM was last confirmed in the module
    failures INTEGER NOT NULL DEFAULT 0,    -- failed switches in a row
    retry_at REAL,                   -- an empty or faulty slot is not tried before this
    in_rotation INTEGER NOT NULL DEFAULT 1, -- 0: an operator took it out of rotation
    PRIMARY KEY (bank, module, slot)
);
CREATE INDEX bank_slots_by_iccid ON bank_slots (iccid);

CREATE TABLE bank_modules (
    bank TEXT NOT NULL,
    module INTEGER NOT NULL,
    slot INTEGER,                    -- the slot it holds, or is being switched to
    switching INTEGER NOT NULL DEFAULT 0,   -- 1 from the switch command to its confirmation
    held INTEGER NOT NULL DEFAULT 0,        -- 1: an operator stopped its rotation
    PRIMARY KEY (bank, module)
);
