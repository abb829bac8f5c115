-- Dependencies between jobs, workflows and batches (README "Workflows").
--
-- blocked: a job that waits for its parents. It is outside the claim index's `available` range
-- and outside maintenance's due ranges (`scheduled`, `retryable`), so however many jobs are
-- blocked, no claim and no promotion reads them. It leaves `blocked` in the transaction that
-- ends its last parent: `available` (or `scheduled` if its run-at is later), or `cancelled`
-- when a parent failed and the edge says so. Appended at the end of the ENUM: in place on both
-- servers.
--
-- pending_parents: how many of the job's parents have not ended yet (or, for an `ignore` edge,
-- not ended at all); the job is released when it reaches 0. One counter on the child, changed
-- by each parent's ending transaction under the child's row lock: a fan-in of any width costs
-- each parent one row change, never a scan of its siblings.
--
-- dependents: how many jobs were ever made to depend on this one. A worker reads it with the
-- claim: a job without dependents (nor workflow) is completed in the batched path, whose
-- UPDATE requires `dependents = 0`, so a dependent added while the job ran is never missed
-- (the batch leaves the job alone and the worker completes it in the path that releases).
--
-- workflow_id: the workflow or batch the job belongs to (jobq_workflows.id), NULL for most.
ALTER TABLE jobq_jobs
  MODIFY state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled','waiting','blocked')
    NOT NULL DEFAULT 'available',
  ADD COLUMN pending_parents INT UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN dependents INT UNSIGNED NOT NULL DEFAULT 0,
  ADD COLUMN workflow_id BIGINT UNSIGNED NULL;

ALTER TABLE jobq_transitions
  MODIFY from_state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled','waiting','blocked') NULL,
  MODIFY to_state ENUM('available','scheduled','running','retryable','completed','discarded','cancelled','waiting','blocked') NOT NULL;

-- A blocked job is still unique: rebuild unique_active with `blocked` among the live states.
ALTER TABLE jobq_jobs DROP INDEX jobq_jobs_unique, DROP COLUMN unique_active;
ALTER TABLE jobq_jobs
  ADD COLUMN unique_active VARCHAR(384) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    AS (IF(state IN ('available', 'scheduled', 'running', 'retryable', 'waiting', 'blocked') OR unique_period_us IS NOT NULL,
           CONCAT(CONVERT(kind USING utf8mb4), '/', unique_key), NULL)) VIRTUAL,
  ADD UNIQUE KEY jobq_jobs_unique (unique_active);

-- jobq_deps: one row per edge "child runs after parent". The primary key serves the parent's
-- ending (its edges, in one range); the second key the child's questions (its parents, for
-- `ctx.parents()`, `jobq workflows show` and the repair pass).
--   on_failure:   what the child does when this parent ends without completing: `cancel` (the
--                 child and what follows it end `cancelled`), `ignore` (the edge counts as
--                 satisfied) or `continue` (the child is released at once);
--   parent_state: how the parent ended, NULL until it has (written with the ending);
--   resolved_at:  when (the parent's ending transaction's clock).
CREATE TABLE jobq_deps (
  parent_id    BIGINT UNSIGNED NOT NULL,
  child_id     BIGINT UNSIGNED NOT NULL,
  on_failure   ENUM('cancel','ignore','continue') NOT NULL DEFAULT 'cancel',
  parent_state ENUM('completed','discarded','cancelled') NULL,
  resolved_at  DATETIME(6) NULL,
  PRIMARY KEY (parent_id, child_id),
  KEY jobq_deps_child (child_id, parent_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- jobq_workflows: a named graph of jobs inserted together, or a batch (independent jobs with
-- callbacks). The counters are kept by the writes that end its jobs, so listing workflows
-- never counts jobs.
--   unique_key:  a second workflow with the same key is a duplicate while this one is running
--                (`unique_active`, as for jobs);
--   duplicates:  enqueues refused as duplicates of this one (as for unique jobs);
--   fail_fast:   when any job ends without completing, every job of the workflow that has not
--                started is cancelled;
--   jobs:        how many jobs it has; completed / discarded / cancelled: how many ended so;
--   state:       running until every job ended, then completed (all completed), failed (some
--                did not) or cancelled (`jobq workflows cancel`).
CREATE TABLE jobq_workflows (
  id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  name          VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  batch         BOOLEAN NOT NULL DEFAULT FALSE,
  unique_key    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
  duplicates    INT UNSIGNED NOT NULL DEFAULT 0,
  fail_fast     BOOLEAN NOT NULL DEFAULT FALSE,
  jobs          INT UNSIGNED NOT NULL,
  completed     INT UNSIGNED NOT NULL DEFAULT 0,
  discarded     INT UNSIGNED NOT NULL DEFAULT 0,
  cancelled     INT UNSIGNED NOT NULL DEFAULT 0,
  state         ENUM('running','completed','failed','cancelled') NOT NULL DEFAULT 'running',
  created_at    DATETIME(6) NOT NULL,
  finished_at   DATETIME(6) NULL,
  unique_active VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
    AS (IF(state = 'running', unique_key, NULL)) VIRTUAL,
  PRIMARY KEY (id),
  UNIQUE KEY jobq_workflows_unique (unique_active),
  KEY jobq_workflows_created (created_at, id),
  -- Retention: workflows that ended long ago.
  KEY jobq_workflows_finished (finished_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- jobq_workflow_jobs: the jobs of a workflow by the names the workflow gave them (a child reads
-- its parents' results by these names).
CREATE TABLE jobq_workflow_jobs (
  workflow_id BIGINT UNSIGNED NOT NULL,
  name        VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
  job_id      BIGINT UNSIGNED NOT NULL,
  PRIMARY KEY (workflow_id, name),
  UNIQUE KEY jobq_workflow_jobs_job (job_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- jobq_callbacks: the jobs a workflow or batch enqueues when it ends, one per event:
-- `success` (every job completed), `failure` (some did not), `finish` (either). Inserted into
-- jobq_jobs by the transaction that ends the workflow's last job, which sets job_id: each at
-- most once, however many workers end its jobs at once.
CREATE TABLE jobq_callbacks (
  workflow_id     BIGINT UNSIGNED NOT NULL,
  on_event        ENUM('success','failure','finish') NOT NULL,
  queue           VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  kind            VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
  payload         JSON NOT NULL,
  priority        SMALLINT NOT NULL DEFAULT 0,
  max_attempts    INT UNSIGNED NOT NULL,
  concurrency_key VARBINARY(1020) NULL,
  job_id          BIGINT UNSIGNED NULL,
  PRIMARY KEY (workflow_id, on_event)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
