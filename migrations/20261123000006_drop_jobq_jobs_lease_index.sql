-- The rescue reads `running` jobs through jobq_jobs_due (state, run_at, id) instead: running
-- jobs number at most the slots of all workers, so that scan stays small, while a
-- (state, lease_expires_at) index was rewritten by every claim, completion and heartbeat
-- (measured: see BENCHMARKS.md, "lease index").
ALTER TABLE jobq_jobs DROP INDEX jobq_jobs_lease;
