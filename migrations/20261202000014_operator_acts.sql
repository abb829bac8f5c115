-- Operators' acts on jobs (README "Operating jobs").
--
-- cancel_requested_at / _by: `jobq cancel` of a running job. The job keeps running until its
-- worker's next heartbeat reads the request (at most one heartbeat interval); the handler is
-- then told (`ctx.cancelled()`), given `worker.cancel_grace` to stop, dropped, and the job ends
-- `cancelled` with nothing of its transaction committed. A job whose worker died meanwhile is
-- rescued to `cancelled` instead of running again.
ALTER TABLE jobq_jobs
  ADD COLUMN cancel_requested_at DATETIME(6) NULL,
  ADD COLUMN cancel_requested_by VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;

-- actor: who asked for a transition an operator caused (`cli:USER@HOST` from the CLI, or what
-- the Rust API was given); NULL for the runtime's own transitions.
ALTER TABLE jobq_transitions
  ADD COLUMN actor VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL;

-- result: what the handler returned with its success (`ctx.set_result`), JSON of at most
-- 64 KiB; shown by `jobq job ID`, returned by `Producer::wait_for` and `jobq enqueue --wait`.
ALTER TABLE jobq_jobs ADD COLUMN result JSON NULL;
