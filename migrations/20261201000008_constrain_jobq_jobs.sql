-- Rows are written by other programs too (producers in other languages, operators' SQL).
-- These constraints make impossible rows impossible, so every jobq loop can rely on them:
--
-- * a `running` row carries its claim's fence token and a lease (without a lease no rescue
--   would ever take it back);
-- * a job has at least one attempt;
-- * queue and kind names follow the producer's rule (1..64 / 1..128 of A-Z a-z 0-9 _ . : -):
--   names end up in metrics labels, logs and named-lock names.
--
-- `attempt <= max_attempts` is deliberately not a constraint: a job's max_attempts may be
-- lowered while it runs, and the decision code handles attempt > max_attempts (no more tries).
--
-- Defaults make the smallest correct insert from another language
--   INSERT INTO jobq_jobs (queue, kind, payload) VALUES ('default', 'send_email', '{"to": "a@b.c"}')
-- a job to run now: `available`, run_at and created_at on the database's UTC clock (whatever the
-- session's time zone), 25 attempts (the producer's default). README: "Enqueueing from other
-- languages".
--
-- Enforced by MariaDB 10.2+ and MySQL 8.0.16+ (older MySQL 8.0 parses and ignores CHECK; the
-- runtime still treats a running row without a lease as expired).

-- Repair rows that would fail the new constraints and can be repaired without losing work:
-- a running row without a lease is given an expired one (rescue takes it next tick), without
-- a token a fresh random one (no worker holds it); max_attempts 0 means "one attempt".
UPDATE jobq_jobs
   SET lease_expires_at = COALESCE(lease_expires_at, UTC_TIMESTAMP(6)),
       claim_token = COALESCE(claim_token, UNHEX(MD5(CONCAT(id, '/', RAND()))))
 WHERE state = 'running' AND (lease_expires_at IS NULL OR claim_token IS NULL);
UPDATE jobq_jobs SET max_attempts = 1 WHERE max_attempts = 0;

-- A row with a malformed queue or kind name cannot be repaired here (renaming would move it to
-- a queue nobody asked for): this ALTER then fails naming the constraint; fix or delete those
-- rows (SELECT id, queue, kind FROM jobq_jobs WHERE queue NOT REGEXP '^[A-Za-z0-9_.:-]{1,64}$'
-- OR kind NOT REGEXP '^[A-Za-z0-9_.:-]{1,128}$'), delete the failed attempt's record
-- (DELETE FROM _sqlx_migrations WHERE version = 20261201000008 AND success = 0: DDL commits
-- implicitly, so it stays behind) and run `jobq migrate` again.
--
-- Adding CHECK constraints rebuilds the table (a copy that blocks writes while it runs): on a
-- large jobq_jobs, prune finished jobs first (`maintenance.*_retention`) and migrate in a quiet
-- moment.
ALTER TABLE jobq_jobs
  ADD CONSTRAINT jobq_jobs_running_is_leased
    CHECK (state <> 'running' OR (claim_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
  ADD CONSTRAINT jobq_jobs_attempts_positive CHECK (max_attempts >= 1),
  ADD CONSTRAINT jobq_jobs_queue_name CHECK (queue REGEXP '^[A-Za-z0-9_.:-]{1,64}$'),
  ADD CONSTRAINT jobq_jobs_kind_name CHECK (kind REGEXP '^[A-Za-z0-9_.:-]{1,128}$'),
  MODIFY state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled')
    NOT NULL DEFAULT 'available',
  MODIFY run_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
  MODIFY created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
  MODIFY max_attempts INT UNSIGNED NOT NULL DEFAULT 25;
