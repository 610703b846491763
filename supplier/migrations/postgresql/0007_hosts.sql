-- Version 7 (PostgreSQL): several hosts share one inventory (issue 16).
--
-- `hosts`: one row per host name; a host is alive while `lease_until` is ahead
-- of the database server's clock (renewed every 5 s, valid 15 s). Leases are
-- written and compared with the server's clock, never a host's, so hosts whose
-- clocks disagree still agree on who is alive.
--
-- `live_sims`: one row per ICCID in some host's modem, as that host last
-- published it: the number it is sold under, its market, and whether it is
-- `present` (ready, registered, enabled, a number, a country, not withheld).
-- A SIM of a host whose lease ran out is not counted and not sold; its row
-- stays until a host publishes that ICCID again (it moved, or its host is back).
-- The hold (`held_until`, `holder`) is written only by an allocation, on the row
-- it locked (so a concurrent allocation re-checks it), and cleared by FINISH
-- (the trigger below); a new row starts with the hold of the SIM's newest open
-- activation, so a SIM carried from one host to another stays held.

CREATE TABLE hosts (
    name        text PRIMARY KEY,
    lease_until double precision NOT NULL,  -- server clock, epoch seconds
    started     double precision NOT NULL,  -- server clock: alive since (its lease last began)
    instance    text NOT NULL DEFAULT ''    -- the process renewing it: two with one name are found
);

CREATE TABLE live_sims (
    iccid      text PRIMARY KEY,
    host       text NOT NULL REFERENCES hosts (name) ON DELETE CASCADE,
    number     text,                    -- the sale number (digits, country code)
    country    text,
    operator   text,
    port       text,
    present    boolean NOT NULL,        -- sellable when free and its number's history allows
    published  double precision NOT NULL,  -- server clock: when this row was last written
    held_until double precision,        -- the holder's release_at; free again after it
    holder     bigint                   -- the activation holding it (activations.id)
);
-- GET_NUMBER and GET_SERVICES look for present SIMs by market; the number rule
-- (no two live SIMs with one number) by number; publishing by host.
CREATE INDEX live_sims_market ON live_sims (country, operator) WHERE present;
CREATE INDEX live_sims_by_number ON live_sims (number);
CREATE INDEX live_sims_by_host ON live_sims (host);
-- Routing an SMS reads the newest activation of its number.
CREATE INDEX activations_by_number_id ON activations (number, id);

CREATE FUNCTION activation_ends_hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE live_sims SET held_until = NULL, holder = NULL
        WHERE iccid = NEW.iccid AND holder = NEW.id;
    RETURN NULL;
END;
$$;

-- FINISH frees the SIM for every host at once, in the FINISH's own transaction.
-- Triggers on one event fire in name order: this one before `activation_finished`
-- (migration 3), so a FINISH locks the SIM's row before its number's `usage` row,
-- the order an allocation takes them in (no deadlock when the two meet).
CREATE TRIGGER activation_ends_hold AFTER UPDATE OF finished ON activations
    FOR EACH ROW WHEN (OLD.finished IS NULL AND NEW.finished IS NOT NULL)
    EXECUTE FUNCTION activation_ends_hold();
