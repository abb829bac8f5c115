-- jobq_queues: per-queue state that every worker obeys, kept in the database so it survives
-- restarts and applies to workers started later. A queue without a row is active.
--
-- paused_at: set by `jobq queues pause`; a claim reads it in its own statement (a constant
-- subquery, not locked by the claim's FOR UPDATE) and claims nothing while it is set.
CREATE TABLE jobq_queues (
  name       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  paused_at  DATETIME(6) NULL,
  -- Who paused it, as given (the CLI records user@host:pid).
  paused_by  VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
