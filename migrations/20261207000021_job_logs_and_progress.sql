-- Per-job logs and progress (README "Logs and progress"). Two new tables and nothing else, so
-- this migration runs while workers run.
--
-- jobq_job_logs: the lines a handler wrote through `ctx.log`, with the attempt that wrote them;
-- at most 64 KiB of text per attempt, then one row with truncated = 1 says the rest was not
-- stored. Deleted with their job by retention. Read by job, in order: (job_id, id).
CREATE TABLE jobq_job_logs (
  id        BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  job_id    BIGINT UNSIGNED NOT NULL,
  attempt   INT UNSIGNED NOT NULL,
  at        DATETIME(6) NOT NULL,
  line      TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  truncated TINYINT(1) NOT NULL DEFAULT 0,
  PRIMARY KEY (id),
  KEY jobq_job_logs_job (job_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- jobq_job_progress: the latest `ctx.progress` of a job (one row per job, kept after it ends),
-- written only by the attempt that holds the job's claim (the write joins jobq_jobs on the
-- claim token). Deleted with its job by retention.
CREATE TABLE jobq_job_progress (
  job_id     BIGINT UNSIGNED NOT NULL,
  attempt    INT UNSIGNED NOT NULL,
  percent    DECIMAL(5,2) NOT NULL,
  message    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  updated_at DATETIME(6) NOT NULL,
  PRIMARY KEY (job_id),
  CONSTRAINT jobq_job_progress_percent CHECK (percent BETWEEN 0 AND 100)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
