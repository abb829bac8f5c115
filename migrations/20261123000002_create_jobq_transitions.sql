-- jobq_transitions: one row per state change of a job, written in the same transaction as the
-- change itself, so the history can never disagree with the job row.
-- `from_state` is NULL for the row written at enqueue. `event` says why the change happened:
-- enqueued, promoted, claimed, completed, failed, discarded, snoozed, cancelled, rescued, released.
CREATE TABLE jobq_transitions (
  id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  job_id      BIGINT UNSIGNED NOT NULL,
  from_state  ENUM('available','scheduled','running','retryable','completed','discarded','cancelled') NULL,
  to_state    ENUM('available','scheduled','running','retryable','completed','discarded','cancelled') NOT NULL,
  event       VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  attempt     INT UNSIGNED NOT NULL,
  worker_id   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
  error       TEXT NULL,
  at          DATETIME(6) NOT NULL,
  -- Appends go to the end of the clustered index (auto-increment), history reads use job_id.
  PRIMARY KEY (id),
  KEY jobq_transitions_job (job_id, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
