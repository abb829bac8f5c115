-- jobq_kinds: which job kinds workers have handlers for, on which queues, and when a worker last
-- said so (at its start, then about hourly). `jobq enqueue` reads it to warn about a kind no
-- live or recent worker handles (a misspelt kind would otherwise fail attempt after attempt,
-- for days, with "no handler registered").
-- A new table: safe to create while producers and workers run.
CREATE TABLE IF NOT EXISTS jobq_kinds (
  kind     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  queue    VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  seen_at  DATETIME(6) NOT NULL,
  PRIMARY KEY (kind, queue)
) ENGINE=InnoDB;
