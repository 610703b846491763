-- Version 9 (PostgreSQL): where each host's status route answers (`host.status_url`).
-- An operator action on a SIM in another host's modems that needs the modem itself
-- (USSD, a modem reset) is forwarded from the page it was made on to the status
-- route of the host that has the SIM. Each host writes its own row when it starts
-- and whenever it renews; a row stays when its host stops (the URL is still where it
-- would answer) and is only used while that host's lease (`hosts`) is live.

CREATE TABLE host_status_urls (
    host    text PRIMARY KEY,
    url     text NOT NULL,              -- e.g. http://10.0.0.11:8001
    updated double precision NOT NULL   -- epoch seconds, the writing host's clock
);
