-- jobq_demo_effects belongs to the demo, not to the jobq schema: `jobq migrate` creates only what
-- the runtime needs. The demo, the bench and the tests create it (CREATE TABLE IF NOT EXISTS),
-- and so does the first `record` job a worker runs. Same name and columns as before.
DROP TABLE IF EXISTS jobq_demo_effects;
