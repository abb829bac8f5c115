-- The server refuses what the runtime cannot read. A REGEXP `$` also matches before a trailing
-- line break (on MariaDB before a final newline; on MySQL before \n, \r and other line ends),
-- so a queue or kind such as 'noop\n' passed the name checks of migration 8; and a concurrency
-- key written by a client whose connection charset is not utf8mb4 (latin1, say) is stored as
-- bytes that are not UTF-8. The runtime refuses both. Now the server does too, with checks that
-- need no anchor: a name holds no character outside the allowed set, and a key converts to
-- utf8mb4 and back unchanged (`<=>`: a conversion that gives NULL fails the check too). Such an
-- INSERT fails naming the constraint, or, on a strict server, with error 1300 naming the bytes.
-- (A claim that still reads such a row, written before this migration or on a server that
-- ignores CHECK, discards that one job with the reason instead of failing, so one bad row never
-- stops its queue.)
--
-- Rows that already break these checks make this ALTER fail. Find them with
--   SELECT id, queue, kind FROM jobq_jobs
--    WHERE queue REGEXP '[^A-Za-z0-9_.:-]' OR kind REGEXP '[^A-Za-z0-9_.:-]'
--       OR NOT (CONVERT(CONVERT(concurrency_key USING utf8mb4) USING binary) <=> concurrency_key);
-- then fix or delete them and run `jobq migrate` again. Like migration 8 this rebuilds the table
-- (a copy that blocks writes while it runs): on a large jobq_jobs, prune finished jobs first and
-- migrate in a quiet moment.
ALTER TABLE jobq_jobs
  ADD CONSTRAINT jobq_jobs_names_allowed
    CHECK (queue NOT REGEXP '[^A-Za-z0-9_.:-]' AND kind NOT REGEXP '[^A-Za-z0-9_.:-]'),
  ADD CONSTRAINT jobq_jobs_key_utf8
    CHECK (concurrency_key IS NULL
           OR CONVERT(CONVERT(concurrency_key USING utf8mb4) USING binary) <=> concurrency_key);
