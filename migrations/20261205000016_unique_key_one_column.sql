-- jobq_jobs_unique on one column: `unique_active` is now kind + '/' + unique key while the job
-- holds its key (as before: available, scheduled, running, retryable or waiting, or finished
-- with a hold period), and NULL otherwise, including for every job without a unique key.
-- Kind names cannot contain '/', so the pair is unambiguous; the collation is the key's own,
-- as before.
--
-- Why: Galera certifies the values of unique keys. A key with a NULL part, such as
-- (kind, NULL) of the old two-column index, is certified like any other value, so any two
-- updates of jobs of one kind without a unique key, on two nodes at once, conflicted (the
-- second is aborted). On a 3-node cluster with one worker per node on three queues, that cost
-- ~550 certification failures per 10,000 no-op jobs and a third of the rate. A one-column key
-- that is NULL is not certified at all (measured: 0 failures). Nothing changes on one server.
ALTER TABLE jobq_jobs DROP INDEX jobq_jobs_unique, DROP COLUMN unique_active;
ALTER TABLE jobq_jobs
  ADD COLUMN unique_active VARCHAR(384) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    AS (IF(state IN ('available', 'scheduled', 'running', 'retryable', 'waiting') OR unique_period_us IS NOT NULL,
           CONCAT(CONVERT(kind USING utf8mb4), '/', unique_key), NULL)) VIRTUAL,
  ADD UNIQUE KEY jobq_jobs_unique (unique_active);
