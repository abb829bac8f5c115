//! The `jobq` binary from a shell's point of view.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use sqlx::MySqlPool;

use crate::common::*;

fn jobq(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobq"));
    cmd.args(args)
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env("JOBQ_WORKER__POLL_INTERVAL", "20ms")
        .env("JOBQ_MAINTENANCE__INTERVAL", "100ms")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn jobq");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[sqlx::test(migrations = false)]
async fn enqueue_work_stats_job(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let o = jobq(&url, &["migrate"], None);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = jobq(
        &url,
        &[
            "enqueue",
            "record",
            "--count",
            "3",
            "--priority",
            "2",
            "--max-attempts",
            "4",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: Vec<u64> = stdout(&o).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 3);
    let o = jobq(
        &url,
        &["enqueue", "sleep", "--queue", "other", "--payload", "-"],
        Some("{\"ms\": 5}"),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sleep_id: u64 = stdout(&o).trim().parse().unwrap();
    let o = jobq(&url, &["enqueue", "noop", "--delay", "1h"], None);
    let later: u64 = stdout(&o).trim().parse().unwrap();
    assert_eq!(state_of(&db, later).await, "scheduled");

    let o = jobq(
        &url,
        &[
            "work",
            "--queues",
            "default,other",
            "--concurrency",
            "2",
            "--claim-mode",
            "named-lock",
            "--prefetch",
            "3",
            "--drain",
        ],
        None,
    );
    assert!(o.status.success(), "work --drain: {}", stderr(&o));
    for id in ids.iter().chain([&sleep_id]) {
        assert_eq!(state_of(&db, *id).await, "completed");
    }
    assert_eq!(state_of(&db, later).await, "scheduled");

    // A flag is the config's last layer, checked like a key.
    let o = jobq(&url, &["work", "--prefetch", "20000", "--drain"], None);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("worker.prefetch"), "{}", stderr(&o));

    let o = jobq(&url, &["stats", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["totals"]["completed"], 4);
    assert_eq!(v["totals"]["scheduled"], 1);
    assert_eq!(v["totals"]["discarded"], 0);
    assert_eq!(v["queues"]["other"]["states"]["completed"], 1);
    let o = jobq(&url, &["stats"], None);
    assert!(stdout(&o).contains("TOTAL"), "{}", stdout(&o));

    let o = jobq(&url, &["job", &ids[0].to_string()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("state completed") && text.contains("running -> completed"),
        "{text}"
    );
    let o = jobq(&url, &["job", &ids[0].to_string(), "--json"], None);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["job"]["priority"], 2);
    assert_eq!(v["job"]["max_attempts"], 4);
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
    let o = jobq(&url, &["job", "999999"], None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[sqlx::test(migrations = false)]
async fn bad_enqueue_exits_non_zero_and_inserts_nothing(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let long = "q".repeat(300);
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["enqueue", "noop", "--payload", "{oops"],
            None,
            "payload",
        ),
        (
            vec!["enqueue", "noop", "--payload", "-"],
            Some("not json"),
            "payload",
        ),
        (
            vec!["enqueue", "noop", "--queue", "x'; DROP TABLE jobq_jobs; --"],
            None,
            "queue",
        ),
        (vec!["enqueue", "noop", "--queue", &long], None, "queue"),
        (vec!["enqueue", "noop", "--queue", ""], None, "queue"),
        (vec!["enqueue", ""], None, "kind"),
        (vec!["enqueue", "noop", "--delay", "soon"], None, "500ms"),
        (
            vec!["enqueue", "noop", "--run-at", "tomorrow"],
            None,
            "RFC 3339",
        ),
        (vec!["enqueue", "noop", "--count", "0"], None, "count"),
        (
            vec!["enqueue", "noop", "--max-attempts", "0"],
            None,
            "max_attempts",
        ),
        (
            vec!["work", "--claim-mode", "fastest"],
            None,
            "possible values: skip-locked, named-lock",
        ),
    ];
    for (args, input, needle) in cases {
        let o = jobq(&url, &args, input);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    // A payload over producer.max_payload_bytes.
    let big = format!("\"{}\"", "x".repeat(2048));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobq"));
    let o = cmd
        .args(["enqueue", "noop", "--payload", &big])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_PRODUCER__MAX_PAYLOAD_BYTES", "1024")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("max_payload_bytes"), "{}", stderr(&o));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    // Invalid config names the key and exits 2.
    let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["stats"])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_WORKER__CONCURRENCY", "lots")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("worker.concurrency"), "{}", stderr(&o));
}

#[sqlx::test(migrations = false)]
async fn migrate_is_idempotent_and_concurrent(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // A database that does not exist yet, created by `jobq migrate` run four times at once.
    let url = url_of(&db).await;
    let server = &url[..url.rfind('/').unwrap()];
    let fresh = format!(
        "{server}/jobq_fresh_{}_{}",
        std::process::id(),
        rand_suffix()
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_jobq"))
                .arg("migrate")
                .env("JOBQ_DATABASE_URL", &fresh)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = jobq(&fresh, &["migrate"], None);
    assert!(o.status.success());
    let o = jobq(&fresh, &["stats", "--json"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let db_name = fresh.rsplit('/').next().unwrap().to_owned();
    sqlx::query(&format!("DROP DATABASE `{db_name}`"))
        .execute(&db)
        .await
        .unwrap();
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        % 1_000_000_007
}

/// Error texts and worker ids come from handlers and other programs: `jobq job` shows their
/// control characters escaped, never raw (an escape sequence must not drive the terminal).
#[sqlx::test(migrations = false)]
async fn job_shows_control_characters_escaped(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let id = jobq_worker::Producer::new(db.clone())
        .enqueue(jobq_worker::NewJob::json(
            "noop",
            serde_json::json!({"k": "\u{1b}[2J"}),
        ))
        .await
        .unwrap();
    let evil = "\u{1b}[31mred\u{7}\r\nsecond line";
    sqlx::query("UPDATE jobq_jobs SET last_error = ?, worker_id = ? WHERE id = ?")
        .bind(evil)
        .bind("w\u{1b}]0;title\u{7}")
        .bind(id.0)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobq_transitions (job_id, from_state, to_state, event, attempt, error, at) \
         VALUES (?, 'available', 'available', 'snoozed', 0, ?, UTC_TIMESTAMP(6))",
    )
    .bind(id.0)
    .bind(evil)
    .execute(&db)
    .await
    .unwrap();
    let o = jobq(&url, &["job", &id.to_string()], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let raw: Vec<char> = out
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(raw.is_empty(), "raw control characters {raw:?} in:\n{out}");
    assert!(out.contains(r"\u{1b}[31mred\u{7}\r\nsecond line"), "{out}");
    assert!(out.contains(r"w\u{1b}]0;title\u{7}"), "{out}");
    assert!(
        out.contains(r"\u001b[2J"),
        "the payload is shown as JSON: {out}"
    );
}

/// `--payload -` stops reading at the limit: an endless standard input is refused at once,
/// naming the limit, and nothing is enqueued.
#[sqlx::test(migrations = false)]
async fn enqueue_stops_reading_stdin_past_the_limit(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["enqueue", "noop", "--payload", "-"])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_PRODUCER__MAX_PAYLOAD_BYTES", "1024")
        .env("JOBQ_LOG__LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Up to 1 GiB, stopped by the broken pipe once jobq has given up reading.
    let writer = std::thread::spawn(move || {
        let block = vec![b' '; 64 << 10];
        let mut sent = 0usize;
        while sent < 1 << 30 {
            if stdin.write_all(&block).is_err() {
                break;
            }
            sent += block.len();
        }
        sent
    });
    let o = child.wait_with_output().unwrap();
    let sent = writer.join().unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("over the limit of 1024 bytes"),
        "{}",
        stderr(&o)
    );
    assert!(sent < 1 << 30, "jobq read all {sent} bytes");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
}

/// `--count` builds and sends its copies in chunks, in one transaction: every id is printed
/// once, across chunk boundaries.
#[sqlx::test(migrations = false)]
async fn enqueue_count_is_sent_in_chunks(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let o = jobq(&url, &["enqueue", "noop", "--count", "2501"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let ids: std::collections::BTreeSet<u64> =
        stdout(&o).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(ids.len(), 2501);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 2501);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'enqueued'"
        )
        .await,
        2501
    );
}

/// Payloads the server's JSON rules refuse are refused before anything is sent, naming the
/// field and the place in the payload.
#[sqlx::test(migrations = false)]
async fn payloads_the_server_refuses_are_refused_first(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let deep = format!("{{\"a\": {}{}}}", "[".repeat(40), "]".repeat(40));
    for (payload, says) in [
        (deep.as_str(), "nested deeper than 31 levels at $.a"),
        (r#"{"name": "\ud800"}"#, "lone UTF-16 surrogate"),
    ] {
        let o = jobq(&url, &["enqueue", "noop", "--payload", payload], None);
        assert!(!o.status.success(), "{payload} was accepted");
        let err = stderr(&o);
        assert!(
            err.contains("invalid payload") && err.contains(says),
            "{payload}: {err}"
        );
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
}

/// A payload limit the server's `max_allowed_packet` cannot carry (the server would drop the
/// connection mid-insert) is refused when jobq starts, saying what to change.
#[sqlx::test(migrations = false)]
async fn settings_the_server_cannot_carry_are_refused_at_start(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let packet = count(&db, "SELECT CAST(@@max_allowed_packet AS SIGNED)").await;
    let too_big = packet.to_string();
    for args in [&["enqueue", "noop"][..], &["work", "--drain"][..]] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
            .args(args)
            .env("JOBQ_DATABASE_URL", &url)
            .env("JOBQ_PRODUCER__MAX_PAYLOAD_BYTES", &too_big)
            .env("JOBQ_LOG__LEVEL", "warn")
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} started");
        assert!(
            stderr(&o).contains("max_allowed_packet"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&db)
        .await
        .unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["enqueue", "noop"])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_PRODUCER__MAX_JSON_DEPTH", "50")
        .output()
        .unwrap();
    if version.to_lowercase().contains("mariadb") {
        assert!(!o.status.success(), "depth 50 accepted on {version}");
        assert!(stderr(&o).contains("max_json_depth"), "{}", stderr(&o));
    } else {
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM jobq_jobs").await,
        i64::from(!version.to_lowercase().contains("mariadb"))
    );
}

/// `jobq bench` notices worker processes that exit early instead of waiting for progress: here
/// every worker fails to bind its metrics port, which this test holds.
#[sqlx::test(migrations = false)]
async fn bench_fails_when_its_workers_exit_early(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    // The bench works in `<database>_bench`: a short name, within MySQL's 64 characters.
    let test_url = url_of(&db).await;
    let url = format!(
        "{}/jq_early_{}",
        &test_url[..test_url.rfind('/').unwrap()],
        rand_suffix()
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["bench", "--jobs", "300", "--processes", "2"])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env("JOBQ_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "the bench must fail: {err}");
    assert!(err.contains("exited early"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(50),
        "noticed without waiting for the 60 s no-progress limit"
    );
    let bench_db = format!("{}_bench", url.rsplit('/').next().unwrap());
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{bench_db}`"))
        .execute(&db)
        .await
        .unwrap();
    drop(taken);
}

/// `jobq bench --scenario fan-in` at a small size: the fan-in row with the child's release
/// latency, and the burn-downs with and without blocked jobs, with their ratio.
#[sqlx::test(migrations = false)]
async fn bench_fan_in_reports_release_latency_and_the_blocked_burden(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let test_url = url_of(&db).await;
    let url = format!(
        "{}/jq_fan_{}",
        &test_url[..test_url.rfind('/').unwrap()],
        rand_suffix()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args([
            "bench",
            "--scenario",
            "fan-in",
            "--parents",
            "40",
            "--blocked",
            "300",
            "--jobs",
            "200",
        ])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}{out}", stderr(&o));
    assert!(
        out.contains("| fan-in | skip-locked | 1x8+auto | 41 |"),
        "{out}"
    );
    assert_eq!(out.matches("| burn-down+blocked |").count(), 2, "{out}");
    assert!(
        out.contains("the child was claimed") && out.contains("ms after the last parent completed"),
        "{out}"
    );
    assert!(
        out.contains("300 blocked jobs in the queue: ")
            && out.contains("% of the rate without them"),
        "{out}"
    );
    let bench_db = format!("{}_bench", url.rsplit('/').next().unwrap());
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{bench_db}`"))
        .execute(&db)
        .await
        .unwrap();
}
