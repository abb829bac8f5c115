-- jobq_locks: lease locks and semaphores of jobq-lock (see lock/src/lease.rs).
--
-- One row per (lock name, permit slot); a plain lock is a semaphore of one permit (slot 0).
-- Rows are never deleted: `token` (the fencing token) only ever grows, across releases,
-- expiries and takeovers. A slot is free when `holder` is NULL or `expires_at` has passed on
-- the database clock.
CREATE TABLE jobq_locks (
  -- SHA1 of the name's bytes: any string is a name, and the key stays short.
  name_key    BINARY(20) NOT NULL,
  slot        INT UNSIGNED NOT NULL,
  -- The name as given, for `jobq lock status`.
  name        VARCHAR(1024) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  holder      VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  token       BIGINT UNSIGNED NOT NULL,
  acquired_at DATETIME(6) NULL,
  expires_at  DATETIME(6) NOT NULL,
  PRIMARY KEY (name_key, slot)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
