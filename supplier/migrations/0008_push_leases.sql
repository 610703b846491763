-- Version 8: push leases. On PostgreSQL several hosts push from one outbox and a
-- host takes a due delivery with a lease (until when, by which host), so each
-- attempt is made by one host and a dead host's deliveries are taken over once
-- its leases run out (supplier/pgstore.py). SQLite has one host: the columns
-- are kept so both schemas hold the same data (migrate-store), and stay NULL.

ALTER TABLE deliveries ADD COLUMN lease_until REAL;  -- the database server's clock
ALTER TABLE deliveries ADD COLUMN leased_by TEXT;    -- who took it last: "host#run"
