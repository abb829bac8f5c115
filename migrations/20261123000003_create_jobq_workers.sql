-- jobq_workers: one row per running worker process, beaten by its heartbeat and deleted on a
-- clean shutdown. Rows of crashed processes are removed by maintenance after a while.
CREATE TABLE jobq_workers (
  id                VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  host              VARCHAR(255) NOT NULL,
  pid               INT UNSIGNED NOT NULL,
  queues            TEXT NOT NULL,
  started_at        DATETIME(6) NOT NULL,
  last_heartbeat_at DATETIME(6) NOT NULL,
  PRIMARY KEY (id),
  KEY jobq_workers_heartbeat (last_heartbeat_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
