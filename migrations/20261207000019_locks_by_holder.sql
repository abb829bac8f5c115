-- `jobq lock status` and the console's /locks page list the lease permits that are held or
-- expired (holder set). jobq_locks keeps a row per permit ever used (released ones keep their
-- fencing token), so without an index that listing read every row ever written; with one it
-- reads the held and expired permits only.
--
-- A database where jobq-lock created jobq_locks itself (`ensure_schema`, which now creates the
-- index too) may have it already: added only when missing, in a form both servers run.
SET @jobq_add_holder_key := (
  SELECT IF(COUNT(*) = 0, 'ALTER TABLE jobq_locks ADD KEY jobq_locks_holder (holder)', 'DO 0')
    FROM information_schema.STATISTICS
   WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobq_locks' AND INDEX_NAME = 'jobq_locks_holder');
PREPARE jobq_add_holder_key FROM @jobq_add_holder_key;
EXECUTE jobq_add_holder_key;
DEALLOCATE PREPARE jobq_add_holder_key;
