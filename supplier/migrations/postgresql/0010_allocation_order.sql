-- Version 10 (PostgreSQL): GET_NUMBER reads sellable SIMs in the order it sells them.
--
-- The allocation (supplier/shared.py `allocate`) wants the least recently used
-- SIM that every rule allows, ties by ICCID. Without an index in that order it
-- checked every live SIM (its host's lease, the same-number rule, the number's
-- history) and sorted them all to take one: ~4.7 ms of server time per call at
-- 512 SIMs, most of the server's work under load (bench/RESULTS.md). With this
-- index the plan walks enabled SIMs from the least recently used and stops at
-- the first one that passes, usually the first or one of the next few.
CREATE INDEX sims_least_recently_used ON sims ((COALESCE(last_used, 0)), iccid) WHERE enabled;
