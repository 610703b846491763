-- Version 5 (PostgreSQL): SIM numbers learned by USSD (or the operator's SMS answer),
-- by ICCID, and the last balance read per SIM (supplier/upkeep.py).

CREATE TABLE learned_numbers (
    iccid   text PRIMARY KEY,
    number  text NOT NULL,
    source  text NOT NULL,  -- e.g. "USSD *111*0887#", "SMS from Beeline"
    learned double precision NOT NULL
);

CREATE TABLE sim_balances (
    iccid    text PRIMARY KEY,
    amount   text,            -- a decimal string, NULL when the answer gave none
    currency text,            -- ISO 4217
    text     text NOT NULL,
    read     double precision NOT NULL
);
