-- jobq_jobs: one row per job, for the job's whole life.
--
-- State machine (see README "Job states"):
--   scheduled|retryable --(due, maintenance)--> available --(claim)--> running
--   running --> completed | retryable | discarded | cancelled | available (rescue, shutdown)
-- Future jobs are kept in `scheduled`/`retryable` so that the claim never scans them; the one
-- elected maintenance process moves them to `available` when due.
--
-- All times are UTC from the database clock (UTC_TIMESTAMP(6)); no client clock is compared.
CREATE TABLE jobq_jobs (
  id               BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  -- Names are validated by the producer: 1..64 / 1..128 bytes of [A-Za-z0-9_.:-].
  queue            VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  kind             VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  -- MariaDB: LONGTEXT with CHECK (JSON_VALID(payload)); MySQL: native JSON.
  payload          JSON NOT NULL,
  state            ENUM('available','scheduled','running','retryable','completed','discarded','cancelled') NOT NULL,
  -- Lower runs first (like Oban and River). Ties: earlier run_at, then lower id.
  priority         SMALLINT NOT NULL DEFAULT 0,
  run_at           DATETIME(6) NOT NULL,
  -- Number of the current or last attempt; 0 until first claimed.
  attempt          INT UNSIGNED NOT NULL DEFAULT 0,
  max_attempts     INT UNSIGNED NOT NULL,
  -- Fencing: a fresh random token per claim. Every write a worker makes about a running job
  -- is guarded by `claim_token = <its token>`, so a worker whose claim was rescued and handed
  -- to someone else can never overwrite the newer claim.
  claim_token      BINARY(16) NULL,
  -- A running job whose lease passes is rescued; the owner's heartbeat keeps pushing it.
  lease_expires_at DATETIME(6) NULL,
  worker_id        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NULL,
  -- Room for later features: deduplication and per-key concurrency limits.
  unique_key       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  concurrency_key  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  created_at       DATETIME(6) NOT NULL,
  attempted_at     DATETIME(6) NULL,
  finalized_at     DATETIME(6) NULL,
  last_error       TEXT NULL,
  PRIMARY KEY (id),
  -- The claim: WHERE queue = ? AND state = 'available' AND run_at <= now
  --            ORDER BY priority, run_at, id LIMIT n [FOR UPDATE SKIP LOCKED].
  -- Equalities first, then the sort columns in ORDER BY order, so the claim reads the index in
  -- order, locks only the rows it returns and never filesorts (MYSQL-NOTES §3.2).
  KEY jobq_jobs_claim (queue, state, priority, run_at, id),
  -- Maintenance: due scheduled/retryable jobs (state = ? AND run_at <= now ORDER BY run_at, id),
  -- and retention (state = 'completed' AND run_at < cutoff).
  KEY jobq_jobs_due (state, run_at, id),
  -- Rescue: state = 'running' AND lease_expires_at < now.
  KEY jobq_jobs_lease (state, lease_expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
