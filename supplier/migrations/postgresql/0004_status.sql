-- Version 4 (PostgreSQL): the status page asks for a SIM's SMS and its last SMS time.

CREATE INDEX sms_by_iccid ON sms (iccid, received);
CREATE INDEX activations_by_iccid ON activations (iccid, id);
CREATE INDEX activations_finished ON activations (finished) WHERE status = 3;
