-- Version 3 (PostgreSQL): opening and finishing an activation keep the usage
-- counts and the SIM's last use by trigger, as in the SQLite store, so each is
-- one statement.

CREATE FUNCTION activation_opened() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage (number, service, offers) VALUES (NEW.number, NEW.service, 1)
        ON CONFLICT (number, service) DO UPDATE SET offers = usage.offers + 1;
    UPDATE sims SET last_used = NEW.created WHERE iccid = NEW.iccid;
    RETURN NULL;
END;
$$;

CREATE TRIGGER activation_opened AFTER INSERT ON activations
    FOR EACH ROW EXECUTE FUNCTION activation_opened();

CREATE FUNCTION activation_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage (number, service, sold, cancelled, returned, blocked)
        VALUES (NEW.number, NEW.service, (NEW.status = 3)::int, (NEW.status = 4)::int,
                (NEW.status = 5)::int, NEW.status IN (1, 3))
        ON CONFLICT (number, service) DO UPDATE SET
            sold = usage.sold + (NEW.status = 3)::int,
            cancelled = usage.cancelled + (NEW.status = 4)::int,
            returned = usage.returned + (NEW.status = 5)::int,
            blocked = usage.blocked OR NEW.status IN (1, 3);
    RETURN NULL;
END;
$$;

CREATE TRIGGER activation_finished AFTER UPDATE OF finished ON activations
    FOR EACH ROW WHEN (OLD.finished IS NULL AND NEW.finished IS NOT NULL)
    EXECUTE FUNCTION activation_finished();
