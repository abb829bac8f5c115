-- jobq_demo_effects: written by the built-in `record` kind, in the transaction that completes
-- the job. Deliberately no unique key: a duplicate run would show up as a duplicate row.
CREATE TABLE jobq_demo_effects (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  job_id     BIGINT UNSIGNED NOT NULL,
  attempt    INT UNSIGNED NOT NULL,
  worker     VARCHAR(64) NOT NULL,
  effect_key VARCHAR(255) NOT NULL,
  created_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  KEY jobq_demo_effects_job (job_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
