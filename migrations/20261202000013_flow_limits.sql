-- Per-key concurrency limits and rate limits (see README "Concurrency keys" and "Rate limits").
--
-- waiting: a job with a concurrency key whose key was at its limit when a claim read it. It is
-- out of the claim index's `available` range, so claims never re-read it (the claim stays
-- O(batch) however deep one key's backlog is); it goes back to `available` when a job of its
-- key stops running (the worker that ran it, or maintenance after a rescue, promotes it).
-- Appended at the end of the ENUM: an in-place change on both servers.
ALTER TABLE jobq_jobs
  MODIFY state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled','waiting')
    NOT NULL DEFAULT 'available';

ALTER TABLE jobq_transitions
  MODIFY from_state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled','waiting') NULL,
  MODIFY to_state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled','waiting') NOT NULL;

-- A waiting job is still unique: rebuild unique_active with `waiting` among the live states.
ALTER TABLE jobq_jobs DROP INDEX jobq_jobs_unique, DROP COLUMN unique_active;
ALTER TABLE jobq_jobs
  ADD COLUMN unique_active VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    AS (IF(state IN ('available', 'scheduled', 'running', 'retryable', 'waiting') OR unique_period_us IS NOT NULL,
           unique_key, NULL)) VIRTUAL,
  ADD UNIQUE KEY jobq_jobs_unique (kind, unique_active);

-- Concurrency keys compare byte for byte: a PAD SPACE collation (utf8mb4_bin on both servers)
-- would make 'a' and 'a ' one key in SQL but two in the worker's bookkeeping.
ALTER TABLE jobq_jobs MODIFY concurrency_key VARBINARY(1020) NULL;

-- key_state: the state of a job that has a concurrency key, NULL for every other job. The index
-- on it serves the per-key questions (how many of this key run; which of its waiting jobs is
-- next, in claim order) and costs jobs without a key nothing after their insert: their entry
-- never changes, since the indexed values stay NULL through every state change.
ALTER TABLE jobq_jobs
  ADD COLUMN key_state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin
    AS (IF(concurrency_key IS NULL, NULL, CAST(state AS CHAR))) VIRTUAL,
  ADD KEY jobq_jobs_keys (queue, concurrency_key, key_state, priority, run_at, id);

-- jobq_keys: one row per (queue, concurrency key) ever claimed. The row is the key's mutex:
-- a claim and a promotion lock it (INSERT … ON DUPLICATE KEY UPDATE, keys in order) before
-- they count the key's running jobs, so two claimers can never both see a free slot.
--   key_limit:  the limit the last claim applied (promotion and maintenance read it);
--   rate_state: the key's rate-limit window (worker/src/limits.rs), NULL without one.
CREATE TABLE jobq_keys (
  queue            VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  concurrency_key  VARBINARY(1020) NOT NULL,
  key_limit        INT UNSIGNED NOT NULL DEFAULT 1,
  rate_state       VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
  updated_at       DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
  PRIMARY KEY (queue, concurrency_key)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The queue's rate-limit window, locked and rewritten by every claim of a rate-limited queue.
ALTER TABLE jobq_queues
  ADD COLUMN rate_state VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL;
