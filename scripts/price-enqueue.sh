#!/usr/bin/env bash
# What bounds bulk enqueue on this server: 100,000 no-op jobs inserted by the mysql client the
# way `Producer::enqueue_many` writes them (multi-row INSERTs of 1,000 jobs, then their
# `enqueued` history rows, 10 statements' worth per commit), into a scratch database, in
# variants run back to back: jobq's schema as it is; without the history rows; without the
# CHECK constraints; without the keys and unique indexes; and a table with only a primary key
# (the floor). Prints jobs/s per variant. BENCHMARKS.md "What bounds bulk enqueue".
#   scripts/price-enqueue.sh [MYSQL_ARGS...]     (default: -uroot -h127.0.0.1)
# Needs `jobq` built (target/release/jobq) for the schema; drops and creates jobq_enqueue_price.
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@"); [ ${#args[@]} -eq 0 ] && args=(-uroot -h127.0.0.1)
db=jobq_enqueue_price
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import sys
d = sys.argv[1]
rows, stmts = 1000, 100
vals = ",".join("('bench','noop','{}','available',0,UTC_TIMESTAMP(6),25,UTC_TIMESTAMP(6),NULL)" for _ in range(rows))
with open(f"{d}/full.sql", "w") as full, open(f"{d}/jobs.sql", "w") as jobs:
    for f in (full, jobs):
        f.write("SET SESSION time_zone='+00:00';\nSTART TRANSACTION;\n")
    for s in range(stmts):
        ins = f"INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at, concurrency_key) VALUES {vals};\n"
        full.write(ins); jobs.write(ins)
        full.write("SET @f = LAST_INSERT_ID();\nINSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, at) "
                   f"SELECT id, NULL, 'available', 'enqueued', 0, UTC_TIMESTAMP(6) FROM jobq_jobs WHERE id >= @f AND id < @f + {rows};\n")
        if s % 10 == 9:
            full.write("COMMIT;\nSTART TRANSACTION;\n"); jobs.write("COMMIT;\nSTART TRANSACTION;\n")
    for f in (full, jobs):
        f.write("COMMIT;\n")
PY
sed 's/INSERT INTO jobq_jobs /INSERT INTO floor_jobs /' "$work/jobs.sql" > "$work/floor.sql"
mysql "${args[@]}" -e "DROP DATABASE IF EXISTS $db"
JOBQ_DATABASE_URL="mysql://root@127.0.0.1:3306/$db" target/release/jobq migrate 2>/dev/null
mysql "${args[@]}" "$db" -e "CREATE TABLE floor_jobs LIKE jobq_jobs; ALTER TABLE floor_jobs \
  DROP INDEX jobq_jobs_claim, DROP INDEX jobq_jobs_due, DROP INDEX jobq_jobs_keys, DROP INDEX jobq_jobs_unique, \
  DROP CONSTRAINT jobq_jobs_queue_name, DROP CONSTRAINT jobq_jobs_kind_name, \
  DROP CONSTRAINT jobq_jobs_names_allowed, DROP CONSTRAINT jobq_jobs_key_utf8"
run() { # label file
  mysql "${args[@]}" "$db" -e "TRUNCATE jobq_jobs; TRUNCATE jobq_transitions; TRUNCATE floor_jobs"
  local s e; s=$(date +%s.%N); mysql "${args[@]}" "$db" < "$2"; e=$(date +%s.%N)
  python3 -c "print('%-44s %7.0f jobs/s' % ('$1', 100000 / ($e - $s)))"
}
for round in 1 2; do
  echo "round $round"
  run "jobq schema, with history" "$work/full.sql"
  run "jobq schema, no history" "$work/jobs.sql"
  run "floor: primary key only, no history" "$work/floor.sql"
done
mysql "${args[@]}" "$db" -e "ALTER TABLE jobq_jobs DROP CONSTRAINT jobq_jobs_queue_name, DROP CONSTRAINT jobq_jobs_kind_name, \
  DROP CONSTRAINT jobq_jobs_names_allowed, DROP CONSTRAINT jobq_jobs_key_utf8"
run "no CHECK constraints, with history" "$work/full.sql"
mysql "${args[@]}" "$db" -e "ALTER TABLE jobq_jobs DROP INDEX jobq_jobs_keys, DROP INDEX jobq_jobs_unique"
run "no CHECKs, no keys/unique index, with history" "$work/full.sql"
run "no CHECKs, no keys/unique index, no history" "$work/jobs.sql"
mysql "${args[@]}" -e "DROP DATABASE $db"
