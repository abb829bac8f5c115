-- Unique jobs (see README "Unique jobs"): at most one job per (kind, unique_key) that is
-- waiting or running, enforced by a unique index, never by check-then-insert.
--
-- unique_active is the key while the job is available, scheduled, running or retryable, and
-- NULL once it is completed, discarded or cancelled (NULLs never collide), so a finished job
-- frees its key, unless it keeps it for a period (below). It is computed by the server from state, so every state change, by jobq or
-- by anyone's SQL, keeps it right.
--
-- duplicates counts the enqueues refused as duplicates of this job (an enqueue that finds the
-- key taken runs `ON DUPLICATE KEY UPDATE duplicates = duplicates + 1`).
--
-- unique_period_us: how long a finished job keeps its key (NULL: it frees it at once). While
-- it is set the key stays taken; an enqueue that finds the hold of a finished job expired
-- (finalized_at + period passed) clears it and inserts. Retention deleting the job ends the
-- hold too.
ALTER TABLE jobq_jobs
  ADD COLUMN duplicates INT UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN unique_period_us BIGINT UNSIGNED NULL,
  ADD COLUMN unique_active VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    AS (IF(state IN ('available', 'scheduled', 'running', 'retryable') OR unique_period_us IS NOT NULL,
           unique_key, NULL)) VIRTUAL,
  ADD UNIQUE KEY jobq_jobs_unique (kind, unique_active);
