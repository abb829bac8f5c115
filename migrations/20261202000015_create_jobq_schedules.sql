-- jobq_schedules: the state of each recurring job (README "Recurring jobs"); the definitions
-- live in the configuration. The maintenance leader locks a schedule's row (FOR UPDATE) to
-- decide its due slots, enqueues them and moves last_slot_at in the same transaction: two
-- leaders (a handover) are serialised on the row, and a slot at or before last_slot_at is never
-- enqueued again. Each slot's job also carries the unique key `schedule:NAME:SLOT`.
CREATE TABLE jobq_schedules (
  name          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  -- The newest slot decided (enqueued or skipped), UTC.
  last_slot_at  DATETIME(6) NULL,
  -- The job of the newest enqueued slot, and what the last decision was.
  last_job_id   BIGINT UNSIGNED NULL,
  last_outcome  VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
  paused_at     DATETIME(6) NULL,
  paused_by     VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=ascii COLLATE=ascii_bin;
