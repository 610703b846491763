-- Version 6 (PostgreSQL): SIM banks: every slot's SIM as learned when it was first
-- switched in, its rotation state, and which slot each module holds.

CREATE TABLE bank_slots (
    bank        text NOT NULL,
    module      integer NOT NULL,
    slot        integer NOT NULL,
    iccid       text,                     -- NULL: never seen (or the slot is empty)
    imsi        text,
    number      text,
    state       text NOT NULL DEFAULT 'unknown',  -- unknown | known | empty | faulty
    last_in     double precision,         -- when its SIM was last confirmed in the module
    failures    integer NOT NULL DEFAULT 0,       -- failed switches in a row
    retry_at    double precision,         -- an empty or faulty slot is not tried before this
    in_rotation boolean NOT NULL DEFAULT true,    -- false: an operator took it out of rotation
    PRIMARY KEY (bank, module, slot)
);
CREATE INDEX bank_slots_by_iccid ON bank_slots (iccid);

CREATE TABLE bank_modules (
    bank      text NOT NULL,
    module    integer NOT NULL,
    slot      integer,                  -- the slot it holds, or is being switched to
    switching boolean NOT NULL DEFAULT false,  -- from the switch command to its confirmation
    held      boolean NOT NULL DEFAULT false,  -- an operator stopped its rotation
    PRIMARY KEY (bank, module)
);
