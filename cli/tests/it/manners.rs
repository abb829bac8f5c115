//! The CLI behaves like a Unix tool: errors name the server and keep their cause, usage errors
//! exit 2, a closed pipe ends a command quietly, log lines to a pipe carry no colour, tables
//! line up, and a job nobody will run gets a warning.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobq_config::ClaimMode;
use sqlx::MySqlPool;

use crate::common::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_server_that_is_down_is_named_with_its_cause_at_once() {
    let port = closed_port();
    let url = format!("mysql://root@127.0.0.1:{port}/jobq");
    for args in [
        &["stats"][..],
        &["enqueue", "noop"],
        &["work", "--drain"],
        &["demo", "--jobs", "1"],
        &["lock", "run", "x", "--", "true"],
        &["migrate"],
    ] {
        let started = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
            .args(args)
            .env("JOBQ_DATABASE_URL", &url)
            // Demo: a URL was given, so no private server is started in its place.
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) && err.contains("Connection refused"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("pool timed out"), "{args:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[sqlx::test(migrations = false)]
async fn usage_errors_exit_2(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    for (args, says) in [
        (&["enqueue", "noop", "--count", "0"][..], "--count"),
        (&["enqueue", "bad kind"], "kind"),
        (&["enqueue", "noop", "--payload", "{nope"], "JSON"),
        (&["jobs", "list", "--limit", "0"], "--limit"),
        (
            &["lock", "run", "x", "--permits", "0", "--", "true"],
            "--permits",
        ),
        (&["enqueue", "noop", "--no-such-flag"], "--no-such-flag"),
    ] {
        let o = jobq_cli(&url, args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
}

/// `jobq enqueue --count 20000 | head -1`: jobq ends quietly (status 0, no panic report) and
/// every job was enqueued (the ids are printed after the commit).
#[sqlx::test(migrations = false)]
async fn a_closed_pipe_ends_the_command_quietly(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["enqueue", "noop", "--count", "20000"])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close the pipe like `head -1`.
    let mut stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = [0u8; 16];
        let n = stdout.read(&mut buf).unwrap();
        drop(stdout);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(first.chars().next().unwrap().is_ascii_digit(), "{first}");
    let o = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panic"), "{}", stderr(&o));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM jobq_jobs").await, 20_000);
}

/// Log lines written to a pipe carry no colour escapes; tables line up.
#[sqlx::test(migrations = false)]
async fn plain_logs_and_aligned_tables(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    jobq_ok(&url, &["enqueue", "noop", "--count", "3"], &[]).await;
    jobq_ok(
        &url,
        &["enqueue", "noop", "--queue", "a-rather-long-queue-name"],
        &[],
    )
    .await;
    let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["work", "--drain"])
        .env("JOBQ_DATABASE_URL", &url)
        .env("JOBQ_LOG__LEVEL", "info")
        .env("JOBQ_WORKER__POLL_INTERVAL", "20ms")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("INFO"), "{err}");
    assert!(!err.contains('\u{1b}'), "colour escapes in a pipe: {err:?}");

    // A left-aligned column starts at one place in every line.
    for (args, column, value) in [
        (&["queues"][..], "state", "active"),
        (&["jobs", "list", "--state", "completed"], "kind", "noop"),
    ] {
        let out = jobq_ok(&url, args, &[]).await;
        let mut lines = out.lines();
        let at = lines.next().unwrap().find(column).unwrap();
        for l in lines {
            assert_eq!(l.find(value), Some(at), "{args:?}: misaligned {l:?}\n{out}");
        }
    }
    // `stats` ends in a right-aligned column: every line is as long as the header.
    let out = jobq_ok(&url, &["stats"], &[]).await;
    let widths: Vec<usize> = out.lines().map(|l| l.chars().count()).collect();
    assert!(widths.len() >= 4, "{out}");
    assert!(widths.iter().all(|w| *w == widths[0]), "{out}");
}

/// A kind no worker handles, or one handled on another queue, is enqueued with a warning (exit
/// 0); a kind a worker handles on the job's queue, without.
#[sqlx::test(migrations = false)]
async fn enqueue_warns_of_a_kind_nobody_runs(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let o = jobq_cli(&url, &["enqueue", "noopp"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no worker has had a handler for kind \"noopp\""),
        "{}",
        stderr(&o)
    );
    // A worker registers its kinds on the default queue.
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let w = start(pool(&s).await, builtins(), &s);
    wait_for(Duration::from_secs(10), "kinds noted", || async {
        count(&db, "SELECT COUNT(*) FROM jobq_kinds WHERE kind = 'noop'").await == 1
    })
    .await;
    let o = jobq_cli(&url, &["enqueue", "noop"]).await;
    assert!(o.status.success());
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    let o = jobq_cli(&url, &["enqueue", "noop", "--queue", "elsewhere"]).await;
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("handled by workers of queue(s) default but not of \"elsewhere\""),
        "{}",
        stderr(&o)
    );
    w.stop().await;
}

/// Bad configuration is refused before anything runs, naming the key, with exit status 2; a
/// misspelt `JOBQ_` section is named in a warning.
#[test]
fn bad_configuration_exits_2_naming_the_key() {
    for (var, value, key) in [
        ("JOBQ_LOG__LEVEL", "inof", "log.level"),
        (
            "JOBQ_DATABASE__CONNECT_TIMEOUT",
            "0s",
            "database.connect_timeout",
        ),
        (
            "JOBQ_DATABASE_URL",
            "mysql://root@127.0.0.1:70000/jobq",
            "database_url",
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
            .arg("stats")
            .env(var, value)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {}", stderr(&o));
        assert!(stderr(&o).contains(key), "{var}={value}: {}", stderr(&o));
    }
    let o = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["migrate", "--print-sql"])
        .env("JOBQ_WORKR__CONCURRENCY", "3")
        .env("JOBQ_LOCK_TOKEN", "7")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("JOBQ_WORKR__CONCURRENCY is not a configuration variable"),
        "{err}"
    );
    assert!(!err.contains("JOBQ_LOCK_TOKEN"), "{err}");
}
