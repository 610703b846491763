-- Version 7: SIM numbers learned by USSD (or the operator's SMS answer), by ICCID.
-- Kept apart from sims.number (what the modem says) and sims.number_manual (the
-- operator's): a learned number ranks below both and is learned once per SIM.

CREATE TABLE learned_numbers (
    iccid TEXT PRIMARY KEY,
    number TEXT NOT NULL,
    source TEXT NOT NULL,  -- e.g. "USSD *111*0887#", "SMS from Beeline"
    learned REAL NOT NULL
);

-- The last balance read by USSD per SIM (`networks:` `balance_ussd:`): the answer's
-- text, and its amount (a decimal string) and ISO 4217 currency where it says them.
CREATE TABLE sim_balances (
    iccid TEXT PRIMARY KEY,
    amount TEXT,
    currency TEXT,
    text TEXT NOT NULL,
    read REAL NOT NULL
);
