-- jobq_leader: time-leased leadership, so exactly one process at a time runs maintenance
-- (promotion of due jobs, rescue, retention, queue-depth sampling). A table lease rather than a
-- named lock, because GET_LOCK is unavailable on Galera and must not decide correctness anyway.
CREATE TABLE jobq_leader (
  name       VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  holder     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  expires_at DATETIME(6) NOT NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB;
