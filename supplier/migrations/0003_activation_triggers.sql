-- Version 3: the bookkeeping of opening and finishing an activation moves into
-- triggers, so that each is one statement (one round trip to the database
-- thread) inside the group commit.

CREATE TRIGGER activation_opened AFTER INSERT ON activations
BEGIN
    INSERT INTO usage (number, service, offers) VALUES (NEW.number, NEW.service, 1)
        ON CONFLICT (number, service) DO UPDATE SET offers = usage.offers + 1;
    UPDATE sims SET last_used = NEW.created WHERE iccid = NEW.iccid;
END;

CREATE TRIGGER activation_finished AFTER UPDATE OF finished ON activations
WHEN OLD.finished IS NULL AND NEW.finished IS NOT NULL
BEGIN
    INSERT INTO usage (number, service, sold, cancelled, returned, blocked)
        VALUES (NEW.number, NEW.service, NEW.status = 3, NEW.status = 4, NEW.status = 5,
                NEW.status IN (1, 3))
        ON CONFLICT (number, service) DO UPDATE SET
            sold = usage.sold + (NEW.status = 3),
            cancelled = usage.cancelled + (NEW.status = 4),
            returned = usage.returned + (NEW.status = 5),
            blocked = MAX(usage.blocked, NEW.status IN (1, 3));
END;
