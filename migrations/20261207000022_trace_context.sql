-- Trace propagation (README "Tracing"): the W3C trace context of the span that enqueued a job,
-- which the handler's span continues (its parent on the first attempt, a link on later ones).
-- Both columns are optional in the SQL contract: a producer in another language sets them
-- from its own span, or leaves them NULL. A malformed value is ignored by the worker.
--
-- It alters jobq_jobs, so `jobq migrate` applies it only with every worker stopped (README
-- "Schema"); the columns are added at the end with no default, which both servers do in
-- place (no table copy).
ALTER TABLE jobq_jobs
  ADD COLUMN traceparent VARCHAR(55) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN tracestate VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin NULL;

-- A workflow's callbacks continue the span that enqueued the workflow: their context waits
-- here until the runtime inserts them.
ALTER TABLE jobq_callbacks
  ADD COLUMN traceparent VARCHAR(55) CHARACTER SET ascii COLLATE ascii_bin NULL,
  ADD COLUMN tracestate VARCHAR(512) CHARACTER SET ascii COLLATE ascii_bin NULL;
