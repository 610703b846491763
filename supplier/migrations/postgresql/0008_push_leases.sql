-- Version 8 (PostgreSQL): push leases. Several hosts push from one outbox: a host
-- takes due deliveries (`FOR UPDATE SKIP LOCKED`) with a lease of the hub's
-- push timeout plus a margin, by the database server's clock, so each attempt
-- is made by one host; settling or rescheduling ends the lease, and the
-- deliveries of a host that died are taken by another once its leases run out.

ALTER TABLE deliveries ADD COLUMN lease_until double precision;  -- epoch s, the server's clock
ALTER TABLE deliveries ADD COLUMN leased_by text;                -- who took it last: "host#run"

-- Taking due work: a hub's undelivered deliveries in the order they are taken
-- (next_attempt, id), so the `LIMIT n FOR UPDATE SKIP LOCKED` scan stops after n
-- rows without a sort, with the lease beside the key (0002's index was on
-- (hub, next_attempt) alone).
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (hub, next_attempt, id) INCLUDE (lease_until)
    WHERE done IS NULL;
