//! `jobq lock run` and the lock library across real processes: many `jobq` processes contend
//! for one lock (session, lease, semaphore of one) while running shell commands that read and
//! write through the `mariadb` client or a file; holders are killed with `kill -9` or frozen
//! with SIGSTOP.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;

use crate::common::*;

/// The lock kinds `jobq lock run` offers, as its flags.
const SESSION: &[&str] = &[];
/// Leases long enough that a busy machine never makes them lapse (the tests about expiry set
/// their own).
const LEASE: &[&str] = &["--lease", "--ttl", "10s"];
const SEMAPHORE_OF_1: &[&str] = &["--lease", "--ttl", "10s", "--permits", "1"];

/// `jobq lock run NAME FLAGS -- sh -c SCRIPT` against `url`. The script finds `$SQL` (a
/// `mariadb` client command line for the test database) and `$DIR` (a scratch directory).
fn lock_run(url: &str, dir: &Path, name: &str, flags: &[&str], script: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["lock", "run", name])
        .args(flags)
        .args(["--", "sh", "-c", script])
        .env("JOBQ_DATABASE_URL", url)
        .env("JOBQ_LOG__LEVEL", "warn")
        .env_remove("RUST_LOG")
        .env("SQL", client(url))
        .env("DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jobq lock run")
}

/// A `mariadb` command line (batch mode, no column names) for the database of `url`.
fn client(url: &str) -> String {
    let rest = url.split_once("://").expect("a URL").1;
    let (auth, rest) = rest.rsplit_once('@').unwrap_or(("root", rest));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let (hostport, db) = rest.split_once('/').expect("a database in the URL");
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    let db = db.split('?').next().unwrap();
    let mut c = format!("mariadb --no-defaults -N -B -h{host} -P{port} -u{user}");
    if !password.is_empty() {
        c.push_str(&format!(" -p{password}"));
    }
    c.push_str(&format!(" {db}"));
    c
}

/// Waits for `child` (at most `limit`); returns its exit code and stderr.
fn finish(child: Child, limit: Duration) -> (Option<i32>, String) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            signal(pid, "KILL");
            panic!("jobq lock run (pid {pid}) did not exit within {limit:?}");
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success(), "kill -{sig} {pid} failed");
}

/// Whether process `pid` is stopped (SIGSTOP).
fn stopped(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) S …`: the state follows the command name's closing parenthesis.
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
}

/// Waits until `path` exists.
fn wait_file(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads, checks and decrements the stock with a pause in between, recording a sale.
const SELL: &str = r#"s=$($SQL -e "SELECT stock FROM item WHERE id = 1")
if [ "$s" -gt 0 ]; then
  sleep 0.2
  $SQL -e "UPDATE item SET stock = $s - 1 WHERE id = 1; INSERT INTO sale (pid) VALUES ($$)"
fi"#;

async fn stock_of_one(db: &MySqlPool) {
    for sql in [
        "CREATE TABLE item (id INT PRIMARY KEY, stock INT NOT NULL)",
        "CREATE TABLE sale (id INT AUTO_INCREMENT PRIMARY KEY, pid INT NOT NULL)",
        "INSERT INTO item VALUES (1, 1)",
    ] {
        sqlx::query(sql).execute(db).await.unwrap();
    }
}

/// 16 processes read-check-decrement a stock of 1 at the same moment under `flags`: one sale.
async fn seckill(db: MySqlPool, flags: &[&str]) {
    stock_of_one(&db).await;
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut timeout = flags.to_vec();
    timeout.extend(["--timeout", "60s"]);
    let buyers: Vec<Child> = (0..16)
        .map(|_| lock_run(&url, dir.path(), "item 1", &timeout, SELL))
        .collect();
    for b in buyers {
        let (code, err) = finish(b, Duration::from_secs(90));
        assert_eq!(code, Some(0), "{err}");
    }
    let sales = count(&db, "SELECT COUNT(*) FROM sale").await;
    let stock = count(&db, "SELECT stock FROM item").await;
    assert_eq!((sales, stock), (1, 0), "exactly one sale");
}

/// Without a lock the same 16 buyers oversell: the seckill tests would catch a lock that does
/// not exclude.
#[sqlx::test(migrations = false)]
async fn seckill_without_a_lock_oversells(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    stock_of_one(&db).await;
    let url = url_of(&db).await;
    let buyers: Vec<Child> = (0..16)
        .map(|_| {
            Command::new("sh")
                .args(["-c", SELL])
                .env("SQL", client(&url))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut b in buyers {
        assert!(b.wait().unwrap().success());
    }
    let sales = count(&db, "SELECT COUNT(*) FROM sale").await;
    assert!(sales > 1, "{sales} sales without a lock");
}

#[sqlx::test(migrations = false)]
async fn seckill_session_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    seckill(db, SESSION).await;
}

#[sqlx::test(migrations = false)]
async fn seckill_lease_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    seckill(db, LEASE).await;
}

#[sqlx::test(migrations = false)]
async fn seckill_semaphore_of_one(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    seckill(db, SEMAPHORE_OF_1).await;
}

/// 8 concurrent `jobq lock run` read-sleep-write a counter file: it ends at 8.
async fn counter_file(db: MySqlPool, flags: &[&str]) {
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0\n").unwrap();
    let mut timeout = flags.to_vec();
    timeout.extend(["--timeout", "60s"]);
    let script = r#"n=$(cat "$DIR/counter"); sleep 0.1; echo $((n + 1)) > "$DIR/counter""#;
    let runs: Vec<Child> = (0..8)
        .map(|_| lock_run(&url, dir.path(), "counter", &timeout, script))
        .collect();
    for r in runs {
        let (code, err) = finish(r, Duration::from_secs(90));
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&counter).unwrap().trim(), "8");
}

#[sqlx::test(migrations = false)]
async fn counter_file_session_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    counter_file(db, SESSION).await;
}

#[sqlx::test(migrations = false)]
async fn counter_file_lease_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    counter_file(db, LEASE).await;
}

/// A holder whose command records its pid in `$DIR/holder` and sleeps; returns it once it holds
/// the lock.
fn holder(url: &str, dir: &Path, flags: &[&str]) -> Child {
    let h = lock_run(
        url,
        dir,
        "crash",
        flags,
        r#"echo $$ > "$DIR/holder.tmp"; mv "$DIR/holder.tmp" "$DIR/holder"; exec sleep 60"#,
    );
    wait_file(&dir.join("holder"), Duration::from_secs(20));
    h
}

/// Kills the holder's command (its own process group, orphaned by the `kill -9` of `jobq`).
fn kill_command(dir: &Path) {
    let pid = std::fs::read_to_string(dir.join("holder")).unwrap();
    signal(pid.trim().parse().unwrap(), "KILL");
}

#[sqlx::test(migrations = false)]
async fn kill9_of_a_session_holder_frees_the_lock_at_once(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = holder(&url, dir.path(), SESSION);
    let waiter = lock_run(
        &url,
        dir.path(),
        "crash",
        &["--timeout", "30s"],
        r#"touch "$DIR/waiter""#,
    );
    // Start the clock only once the waiter is inside GET_LOCK.
    wait_for(Duration::from_secs(20), "the waiter in GET_LOCK", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT GET_LOCK%'",
        )
        .await
            > 0
    })
    .await;
    assert!(!dir.path().join("waiter").exists(), "the waiter waits");
    h.kill().unwrap();
    let killed = Instant::now();
    h.wait().unwrap();
    kill_command(dir.path());
    let (code, err) = finish(waiter, Duration::from_secs(30));
    let waited = killed.elapsed();
    assert_eq!(code, Some(0), "{err}");
    assert!(dir.path().join("waiter").exists());
    assert!(
        waited < Duration::from_secs(2),
        "the waiter got the lock {waited:?} after the kill"
    );
}

#[sqlx::test(migrations = false)]
async fn kill9_of_a_lease_holder_frees_the_lock_at_expiry(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let mut h = holder(&url, dir.path(), &["--lease", "--ttl", "3s"]);
    let waiter = lock_run(
        &url,
        dir.path(),
        "crash",
        &["--lease", "--ttl", "3s", "--timeout", "30s"],
        r#"touch "$DIR/waiter""#,
    );
    h.kill().unwrap();
    h.wait().unwrap();
    kill_command(dir.path());
    // No renewal after the kill: this is the dead holder's expiry (the waiter cannot have
    // taken it yet, the lease having been renewed at most a second ago).
    let expired: (String, u64) = sqlx::query_as(
        "SELECT CAST(expires_at AS CHAR), token FROM jobq_locks WHERE name = 'crash'",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    let (code, err) = finish(waiter, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    let (after_expiry_ms, token): (i64, u64) = sqlx::query_as(
        "SELECT TIMESTAMPDIFF(MICROSECOND, ?, acquired_at) DIV 1000, token \
         FROM jobq_locks WHERE name = 'crash'",
    )
    .bind(&expired.0)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(token, expired.1 + 1, "the waiter took it next");
    assert!(
        (0..1500).contains(&after_expiry_ms),
        "the waiter took the lease {after_expiry_ms} ms after the dead holder's expiry"
    );
}

/// A 2 s lease held for 8 s is never taken: the watchdog renews it.
#[sqlx::test(migrations = false)]
async fn the_watchdog_keeps_a_lease_for_as_long_as_the_command_runs(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let h = lock_run(
        &url,
        dir.path(),
        "long",
        &["--lease", "--ttl", "2s"],
        r#"touch "$DIR/held"; sleep 8"#,
    );
    wait_file(&dir.path().join("held"), Duration::from_secs(20));
    let rival = lock_run(
        &url,
        dir.path(),
        "long",
        &["--lease", "--ttl", "2s", "--timeout", "7s"],
        r#"touch "$DIR/rival""#,
    );
    let (code, err) = finish(rival, Duration::from_secs(30));
    assert_eq!(code, Some(75), "the rival timed out: {err}");
    assert!(err.contains("could not acquire"), "{err}");
    assert!(!dir.path().join("rival").exists());
    let (code, err) = finish(h, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        count(
            &db,
            "SELECT CAST(token AS SIGNED) FROM jobq_locks WHERE name = 'long'"
        )
        .await,
        1,
        "no one else ever took it"
    );
}

/// The guarded write of the SQL contract (README, "Distributed locks"): the permit's row is
/// locked and checked in the writing transaction. Prints the rows written (1, or 0 = refused).
const GUARDED_WRITE: &str = r#"$SQL -e "SET @t = NULL; BEGIN;
  SELECT token INTO @t FROM jobq_locks
   WHERE name_key = UNHEX(SHA1('$JOBQ_LOCK_NAME')) AND slot = $JOBQ_LOCK_SLOT
     AND token = $JOBQ_LOCK_TOKEN AND expires_at > UTC_TIMESTAMP(6) FOR UPDATE;
  UPDATE fenced SET writes = writes + 1, last_token = $JOBQ_LOCK_TOKEN WHERE @t IS NOT NULL;
  SELECT ROW_COUNT(); COMMIT;""#;

/// A holder frozen past its lease: another process takes it with a higher token, and the frozen
/// holder's guarded writes are refused once it runs again; its lost signal fires (the command
/// is stopped and `jobq` exits with 76).
#[sqlx::test(migrations = false)]
async fn a_frozen_holder_loses_its_lease_and_cannot_write(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    sqlx::query("CREATE TABLE fenced (id INT PRIMARY KEY, writes INT NOT NULL, last_token BIGINT)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO fenced VALUES (1, 0, NULL)")
        .execute(&db)
        .await
        .unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    // The holder's command writes through the guard every 100 ms and logs each answer. When
    // told to freeze it stops itself between two writes (a process stopped inside the guarded
    // transaction would hold the permit's row lock, and a takeover would wait for it, as it
    // should).
    let script = format!(
        r#"echo $$ > "$DIR/cmd"
while :; do
  n=$({GUARDED_WRITE})
  echo "$n" >> "$DIR/writes"
  if [ -e "$DIR/freeze" ]; then kill -STOP $$; fi
  sleep 0.1
done"#
    );
    let holder = lock_run(
        &url,
        dir.path(),
        "fence",
        &["--lease", "--ttl", "2s", "--grace", "1s"],
        &script,
    );
    let jobq_pid = holder.id();
    wait_file(&dir.path().join("writes"), Duration::from_secs(20));
    let cmd_pid: u32 = std::fs::read_to_string(dir.path().join("cmd"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Freeze the holder: its command (between two writes), then `jobq` (its watchdog).
    std::fs::write(dir.path().join("freeze"), "").unwrap();
    let start = Instant::now();
    while !stopped(cmd_pid) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the command froze"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(jobq_pid, "STOP");
    std::fs::remove_file(dir.path().join("freeze")).unwrap();
    let before = std::fs::read_to_string(dir.path().join("writes")).unwrap();
    assert!(
        before.lines().all(|l| l == "1"),
        "the holder's writes went through: {before}"
    );
    let old: u64 = count(
        &db,
        "SELECT CAST(token AS SIGNED) FROM jobq_locks WHERE name = 'fence'",
    )
    .await as u64;
    let rival = lock_run(
        &url,
        dir.path(),
        "fence",
        &["--lease", "--ttl", "10s", "--timeout", "20s"],
        &format!(
            r#"n=$({GUARDED_WRITE}); echo "$n" > "$DIR/rival.tmp"; mv "$DIR/rival.tmp" "$DIR/rival"; sleep 4"#
        ),
    );
    wait_file(&dir.path().join("rival"), Duration::from_secs(20));
    let rival_wrote = std::fs::read_to_string(dir.path().join("rival")).unwrap();
    assert_eq!(rival_wrote.trim(), "1", "the new holder writes");
    let new = count(
        &db,
        "SELECT CAST(token AS SIGNED) FROM jobq_locks WHERE name = 'fence'",
    )
    .await as u64;
    assert!(new > old, "the token went up: {old} -> {new}");

    // The command runs again first, so its writes are tried before `jobq` notices the loss.
    let lines_before = before.lines().count();
    signal(cmd_pid, "CONT");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.path().join("writes")).unwrap();
        if text.lines().count() >= lines_before + 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no write tried");
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(jobq_pid, "CONT");
    let (code, err) = finish(holder, Duration::from_secs(20));
    assert_eq!(code, Some(76), "the holder's lost signal fired: {err}");
    assert!(err.contains("lost lock"), "{err}");
    let writes = std::fs::read_to_string(dir.path().join("writes")).unwrap();
    let after: Vec<&str> = writes.lines().skip(before.lines().count()).collect();
    assert!(
        !after.is_empty() && after.iter().all(|l| *l == "0"),
        "every write after the freeze was refused: {after:?}"
    );
    let (writes_total, last): (i32, i64) =
        sqlx::query_as("SELECT writes, last_token FROM fenced WHERE id = 1")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(last as u64, new, "the last write is the new holder's");
    assert_eq!(
        writes_total as usize,
        before.lines().count() + 1,
        "the holder's writes before the freeze and the rival's one"
    );
    let (code, err) = finish(rival, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
}

async fn skip_if_held(db: MySqlPool, flags: &[&str]) {
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let h = lock_run(
        &url,
        dir.path(),
        "nightly",
        flags,
        r#"touch "$DIR/held"; sleep 6"#,
    );
    wait_file(&dir.path().join("held"), Duration::from_secs(20));
    let mut skip = flags.to_vec();
    skip.push("--skip-if-held");
    let started = Instant::now();
    let second = lock_run(&url, dir.path(), "nightly", &skip, r#"touch "$DIR/ran""#);
    let (code, err) = finish(second, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("skipped"), "says so: {err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "at once, not after the holder"
    );
    assert!(!dir.path().join("ran").exists(), "the command did not run");
    let (code, err) = finish(h, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{err}");
}

#[sqlx::test(migrations = false)]
async fn skip_if_held_session_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    skip_if_held(db, SESSION).await;
}

#[sqlx::test(migrations = false)]
async fn skip_if_held_lease_lock(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    skip_if_held(db, LEASE).await;
}

/// A semaphore of 3 with 10 contending processes: never more than 3 holders at once, judged
/// from the start and end times the holders record.
#[sqlx::test(migrations = false)]
async fn a_semaphore_of_three_admits_three(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let runs: Vec<Child> = (0..10)
        .map(|_| {
            lock_run(
                &url,
                dir.path(),
                "three",
                &["--lease", "--permits", "3", "--timeout", "60s"],
                r#"s=$(date +%s%N); sleep 0.4; echo "$s $(date +%s%N)" > "$DIR/span.$$""#,
            )
        })
        .collect();
    for r in runs {
        let (code, err) = finish(r, Duration::from_secs(90));
        assert_eq!(code, Some(0), "{err}");
    }
    let mut events = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let (s, e) = text.trim().split_once(' ').unwrap();
        events.push((s.parse::<u128>().unwrap(), 1i32));
        events.push((e.parse::<u128>().unwrap(), -1i32));
    }
    assert_eq!(events.len(), 20, "all 10 ran");
    // Ends sort before starts at the same instant.
    events.sort();
    let (mut inside, mut most) = (0, 0);
    for (_, d) in events {
        inside += d;
        most = most.max(inside);
    }
    assert!(
        (2..=3).contains(&most),
        "{most} holders at once: at most 3, and more than one (a semaphore, not a mutex)"
    );
}

/// `jobq lock status` names the holder and the token.
#[sqlx::test(migrations = false)]
async fn status_shows_holders(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let lease = lock_run(
        &url,
        dir.path(),
        "shown",
        LEASE,
        r#"touch "$DIR/lease"; sleep 3"#,
    );
    let session = lock_run(
        &url,
        dir.path(),
        "shown",
        SESSION,
        r#"touch "$DIR/session"; sleep 3"#,
    );
    wait_file(&dir.path().join("lease"), Duration::from_secs(20));
    wait_file(&dir.path().join("session"), Duration::from_secs(20));
    let out = Command::new(env!("CARGO_BIN_EXE_jobq"))
        .args(["lock", "status", "shown", "--json"])
        .env("JOBQ_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    let lease_row = rows.iter().find(|r| r["kind"] == "lease").unwrap();
    assert_eq!(lease_row["state"], "held");
    assert_eq!(lease_row["token"], 1);
    assert!(lease_row["holder"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", lease.id())));
    let session_row = rows.iter().find(|r| r["kind"] == "session").unwrap();
    assert!(session_row["holder"]
        .as_str()
        .unwrap()
        .starts_with("connection "));
    for c in [lease, session] {
        let (code, err) = finish(c, Duration::from_secs(20));
        assert_eq!(code, Some(0), "{err}");
    }
}

/// Whether process `pid` still runs (a zombie waiting for its parent counts as gone).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// A lost lease stops all of the command: the script, and the program it started in the
/// background, which before (only the script was signalled) ran on, orphaned, while the next
/// holder started.
#[sqlx::test(migrations = false)]
async fn a_lost_lock_stops_what_the_command_started(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let holder = lock_run(
        &url,
        dir.path(),
        "group",
        &["--lease", "--ttl", "4s", "--grace", "1s"],
        r#"sleep 300 & echo $! > "$DIR/child.tmp"; mv "$DIR/child.tmp" "$DIR/child";
           sh -c 'trap "" TERM; exec sleep 300' & echo $! > "$DIR/stubborn.tmp";
           mv "$DIR/stubborn.tmp" "$DIR/stubborn"; wait"#,
    );
    wait_file(&dir.path().join("stubborn"), Duration::from_secs(20));
    let pid_in = |f: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    // One background program that stops on SIGTERM, one that ignores it (SIGKILL's work).
    let (child, stubborn) = (pid_in("child"), pid_in("stubborn"));
    assert!(alive(child) && alive(stubborn));
    // Someone else takes the lease: the holder's next renewal finds it gone.
    sqlx::query("UPDATE jobq_locks SET holder = 'thief', token = token + 1 WHERE name = 'group'")
        .execute(&db)
        .await
        .unwrap();
    let (code, err) = finish(holder, Duration::from_secs(20));
    assert_eq!(code, Some(76), "the lost signal fired: {err}");
    let start = Instant::now();
    while alive(child) || alive(stubborn) {
        if start.elapsed() >= Duration::from_secs(5) {
            for pid in [child, stubborn].into_iter().filter(|p| alive(*p)) {
                signal(pid, "KILL");
            }
            panic!("the command's background programs outlived the lost lock");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
