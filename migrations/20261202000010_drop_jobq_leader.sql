-- jobq_leader is replaced by the jobq-lock lease `jobq:maintenance` in jobq_locks (see
-- worker/src/runtime/maintenance.rs). Dropping it makes workers of earlier versions that are
-- still running during a rolling upgrade fail their election and step down, instead of electing
-- a second maintenance leader beside the new one.
DROP TABLE jobq_leader;
