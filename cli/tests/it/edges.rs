//! The promises at the edges (issue "keep every promise at the edges"): outcomes the server
//! would refuse, writes that keep failing, and cancellation on every path that abandons an
//! attempt.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobq_config::{ClaimMode, KindOverrides};
use jobq_worker::{JobContext, JobError, JobId, NewJob, Producer, Registry};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// Error texts over 64 KiB, snoozes past year 9999 and a refund at `max_attempts = 2^32-1`
/// would each be refused by strict mode; they are cut, clamped and saturated instead, and the
/// outcome is written.
#[sqlx::test(migrations = false)]
async fn outcomes_the_server_would_refuse_are_cut_to_fit(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let mut r = Registry::new();
    r.register_json(
        "edge",
        |v: serde_json::Value, _ctx: JobContext| async move {
            Err(match v["do"].as_str().unwrap() {
                "long_error" => JobError::discard("é".repeat(50_000)),
                "snooze_forever" => JobError::snooze(Duration::MAX),
                _ => JobError::snooze(Duration::from_secs(3600)),
            })
        },
    )
    .unwrap();
    let p = Producer::new(pool.clone());
    let long = p
        .enqueue(NewJob::json("edge", json!({"do": "long_error"})))
        .await
        .unwrap();
    let forever = p
        .enqueue(NewJob::json("edge", json!({"do": "snooze_forever"})))
        .await
        .unwrap();
    let at_max = p
        .enqueue(NewJob::json("edge", json!({"do": "refund"})).max_attempts(u32::MAX))
        .await
        .unwrap();
    let w = start(pool.clone(), r, &s);
    wait_for(
        Duration::from_secs(20),
        "all three outcomes written",
        || async {
            state_of(&db, long.0).await == "discarded"
                && state_of(&db, forever.0).await == "scheduled"
                && state_of(&db, at_max.0).await == "scheduled"
        },
    )
    .await;
    w.stop().await;
    let (job, h) = jobq_worker::job_with_history(&db, long).await.unwrap();
    let e = job.last_error.unwrap();
    assert!(e.len() <= 65_535 && e.contains("[cut: 100000 bytes in all]"));
    assert_eq!(h.last().unwrap().error.as_deref(), Some(e.as_str()));
    let (job, _) = jobq_worker::job_with_history(&db, forever).await.unwrap();
    assert!(
        *job.run_at.format("%Y").to_string() >= *"2035",
        "{}",
        job.run_at
    );
    let (job, _) = jobq_worker::job_with_history(&db, at_max).await.unwrap();
    assert_eq!(job.max_attempts, u32::MAX, "the refund saturates");
    assert_consistent(&db).await;
}

/// An outcome the database keeps refusing (here a trigger rejects it) is given up after the
/// write budget: the job's lease is no longer renewed, its slot is freed for the next job, the
/// rescue path takes it, and the worker still stops promptly.
#[sqlx::test(migrations = false)]
async fn an_outcome_that_cannot_be_written_frees_its_slot(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.concurrency = 1;
    s.worker.heartbeat_interval = Duration::from_millis(300);
    s.worker.lease_ttl = Duration::from_secs(2);
    s.worker.shutdown_timeout = Duration::from_secs(1);
    let pool = pool(&s).await;
    let mut r = Registry::new();
    r.register_json(
        "refused",
        |_: serde_json::Value, _ctx: JobContext| async move {
            Err::<(), _>(JobError::retry("fails, and its failure cannot be recorded"))
        },
    )
    .unwrap();
    r.register_json(
        "next",
        |_: serde_json::Value, _ctx: JobContext| async move { Ok::<(), JobError>(()) },
    )
    .unwrap();
    let p = Producer::new(pool.clone());
    let refused = p
        .enqueue(NewJob::json("refused", json!({})).max_attempts(1))
        .await
        .unwrap();
    let next = p.enqueue(NewJob::json("next", json!({}))).await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TRIGGER refuse_outcome BEFORE INSERT ON jobq_transitions FOR EACH ROW \
         BEGIN IF NEW.job_id = {} AND NEW.event <> 'rescued' AND NEW.event <> 'claimed' THEN \
           SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END",
        refused.0
    ))
    .execute(&db)
    .await
    .unwrap();
    let w = start(pool.clone(), r, &s);
    wait_for(
        Duration::from_secs(30),
        "the next job ran in the freed slot",
        || async { state_of(&db, next.0).await == "completed" },
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "the refused job rescued (discarded: its only attempt was used)",
        || async { state_of(&db, refused.0).await == "discarded" },
    )
    .await;
    let started = Instant::now();
    w.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let (job, h) = jobq_worker::job_with_history(&db, refused).await.unwrap();
    assert_eq!(h.last().unwrap().event.as_str(), "rescued", "{h:?}");
    assert!(job.last_error.unwrap().contains("lease expired"));
    sqlx::query("DROP TRIGGER refuse_outcome")
        .execute(&db)
        .await
        .unwrap();
    assert_consistent(&db).await;
}

struct SetOnDrop(Arc<AtomicBool>);
impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A registry whose handler spawns a helper task that waits for `ctx.cancelled()` and raises
/// `seen`, then hangs.
fn spawning_registry(kind: &str, seen: Arc<AtomicBool>) -> Registry {
    let mut r = Registry::new();
    r.register_json(kind, move |_: serde_json::Value, ctx: JobContext| {
        let seen = seen.clone();
        async move {
            let watcher = ctx.clone();
            tokio::spawn(async move {
                let _flag = SetOnDrop(seen);
                watcher.cancelled().await;
            });
            std::future::pending::<()>().await;
            Ok::<(), JobError>(())
        }
    })
    .unwrap();
    r
}

/// When the runtime gives up on an attempt, `ctx.cancelled()` fires for the tasks the handler
/// spawned: on `job_timeout` and on a shutdown release (a lost lease is covered by
/// `outcomes::lost_lease_cancels_the_handler`).
#[sqlx::test(migrations = false)]
async fn ctx_cancelled_fires_when_the_runtime_gives_up(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.kinds.insert(
        "stuck".into(),
        KindOverrides {
            job_timeout: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    );
    s.worker.shutdown_timeout = Duration::from_millis(300);
    let pool = pool(&s).await;
    let p = Producer::new(pool.clone());

    // job_timeout.
    let timed_out = Arc::new(AtomicBool::new(false));
    let id = p
        .enqueue(NewJob::json("stuck", json!({})).max_attempts(1))
        .await
        .unwrap();
    let w = start(
        pool.clone(),
        spawning_registry("stuck", timed_out.clone()),
        &s,
    );
    wait_for(Duration::from_secs(20), "timed out", || async {
        state_of(&db, id.0).await == "discarded"
    })
    .await;
    wait_for(
        Duration::from_secs(5),
        "spawned task saw the timeout",
        || async { timed_out.load(Ordering::SeqCst) },
    )
    .await;
    w.stop().await;

    // Shutdown release.
    let released = Arc::new(AtomicBool::new(false));
    let id = p.enqueue(NewJob::json("lingers", json!({}))).await.unwrap();
    let w = start(
        pool.clone(),
        spawning_registry("lingers", released.clone()),
        &s,
    );
    wait_for(Duration::from_secs(20), "running", || async {
        state_of(&db, id.0).await == "running"
    })
    .await;
    w.stop().await;
    assert_eq!(state_of(&db, id.0).await, "available");
    wait_for(
        Duration::from_secs(5),
        "spawned task saw the release",
        || async { released.load(Ordering::SeqCst) },
    )
    .await;
    let (_, h) = jobq_worker::job_with_history(&db, JobId(id.0))
        .await
        .unwrap();
    assert_eq!(h.last().unwrap().event.as_str(), "released");
    assert_consistent(&db).await;
}

/// Batched completions keep their slots until written: however far the completer lags (here a
/// trigger makes every completion slow), a process never has more `running` rows than slots.
#[sqlx::test(migrations = false)]
async fn running_rows_never_exceed_slots(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    const SLOTS: i64 = 4;
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.concurrency = SLOTS as u32;
    // Without prefetch the bound is the slots themselves (`it::prefetch` tests the bound with
    // jobs claimed ahead).
    s.worker.prefetch = jobq_config::Prefetch::Fixed(0);
    let pool = pool(&s).await;
    sqlx::raw_sql(
        "CREATE TRIGGER slow_completion BEFORE INSERT ON jobq_transitions FOR EACH ROW \
         BEGIN IF NEW.event = 'completed' THEN DO SLEEP(0.003); END IF; END",
    )
    .execute(&db)
    .await
    .unwrap();
    Producer::new(pool.clone())
        .enqueue_many((0..150).map(|_| NewJob::json("noop", json!({}))).collect())
        .await
        .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    let mut most = 0;
    loop {
        let running = count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'",
        )
        .await;
        most = most.max(running);
        let done = count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
        )
        .await;
        if done == 150 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.stop().await;
    assert!(most <= SLOTS, "{most} running rows with {SLOTS} slots");
    assert!(most > 0);
    assert_consistent(&db).await;
}

/// An operator's transaction holding one running job's row locked costs only that job its
/// lease: the heartbeat skips the locked row instead of waiting for it, so every other job keeps
/// its lease and completes in its first attempt.
#[sqlx::test(migrations = false)]
async fn one_locked_row_costs_no_other_job_its_lease(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use sqlx::{Connection, Executor};
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.concurrency = 4;
    s.worker.heartbeat_interval = Duration::from_millis(200);
    s.worker.lease_ttl = Duration::from_secs(2);
    let pool = pool(&s).await;
    let p = Producer::new(pool.clone());
    let ids = p
        .enqueue_many(
            (0..4)
                .map(|_| NewJob::json("sleep", json!({"ms": 4000})))
                .collect(),
        )
        .await
        .unwrap();
    let w = start(pool.clone(), builtins(), &s);
    wait_for(Duration::from_secs(10), "all four running", || async {
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'",
        )
        .await
            == 4
    })
    .await;
    // The operator locks one running row and keeps it locked for longer than a lease.
    let mut operator = sqlx::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    operator
        .execute("SET SESSION innodb_lock_wait_timeout = 50")
        .await
        .unwrap();
    let mut tx = operator.begin().await.unwrap();
    sqlx::query("SELECT id FROM jobq_jobs WHERE id = ? FOR UPDATE")
        .bind(ids[0].0)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    tx.rollback().await.unwrap();
    for id in &ids[1..] {
        wait_for(
            Duration::from_secs(10),
            "the other jobs completed",
            || async { state_of(&db, id.0).await == "completed" },
        )
        .await;
        let (job, h) = jobq_worker::job_with_history(&db, *id).await.unwrap();
        assert_eq!(job.attempt, 1, "job {id:?} kept its lease: {h:?}");
    }
    // The locked job lost its lease (its push was skipped for a whole lease) and ran again.
    wait_for(
        Duration::from_secs(20),
        "the locked job completed",
        || async { state_of(&db, ids[0].0).await == "completed" },
    )
    .await;
    w.stop().await;
    assert_consistent(&db).await;
}

/// Retention keeps pace with burn-downs of thousands of jobs a second: 12,000 completed jobs
/// past their retention are deleted, with their history, within a few one-second maintenance
/// ticks (it once took 5,000 per 30 ticks), and a job still inside its retention is kept.
#[sqlx::test(migrations = false)]
async fn retention_keeps_pace_with_completions(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.maintenance.interval = Duration::from_secs(1);
    s.maintenance.completed_retention = Duration::from_secs(3600);
    let pool = pool(&s).await;
    let p = Producer::new(pool.clone());
    for _ in 0..12 {
        p.enqueue_many((0..1000).map(|_| NewJob::json("noop", json!({}))).collect())
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE jobq_jobs SET state = 'completed', attempt = 1, \
         run_at = UTC_TIMESTAMP(6) - INTERVAL 2 HOUR, finalized_at = UTC_TIMESTAMP(6) - INTERVAL 2 HOUR",
    )
    .execute(&db)
    .await
    .unwrap();
    let recent = p.enqueue(NewJob::json("noop", json!({}))).await.unwrap();
    let w = start(pool.clone(), builtins(), &s);
    let started = Instant::now();
    wait_for(
        Duration::from_secs(15),
        "12,000 old jobs pruned",
        || async { count(&db, "SELECT COUNT(*) FROM jobq_jobs").await == 1 },
    )
    .await;
    eprintln!("12,000 jobs pruned in {:?}", started.elapsed());
    wait_for(Duration::from_secs(10), "the recent job ran", || async {
        state_of(&db, recent.0).await == "completed"
    })
    .await;
    w.stop().await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM jobq_transitions t LEFT JOIN jobq_jobs j ON j.id = t.job_id WHERE j.id IS NULL"
        )
        .await,
        0,
        "the history of pruned jobs is pruned too"
    );
    assert_consistent(&db).await;
}

/// "Exactly once with `ctx.tx()`" holds only while the transaction is the one the handler
/// began: after DDL committed it implicitly (the handler's later writes autocommitted), the
/// attempt fails with a reason instead of completing, and the next attempt completes.
#[sqlx::test(migrations = false)]
async fn a_transaction_the_server_ended_fails_the_attempt(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let pool = pool(&s).await;
    let mut r = Registry::new();
    r.register_json("ddl", |_: serde_json::Value, ctx: JobContext| async move {
        let mut tx = ctx.tx().await?;
        let insert =
            "INSERT INTO jobq_demo_effects (job_id, attempt, worker, effect_key, created_at) \
                      VALUES (?, ?, 'x', ?, UTC_TIMESTAMP(6))";
        sqlx::query(insert)
            .bind(ctx.id().0)
            .bind(ctx.attempt())
            .bind(format!("before-{}", ctx.attempt()))
            .execute(&mut **tx)
            .await?;
        if ctx.attempt() == 1 {
            // DDL commits the transaction implicitly.
            sqlx::query("CREATE TABLE IF NOT EXISTS handler_ddl (id INT)")
                .execute(&mut **tx)
                .await?;
            sqlx::query(insert)
                .bind(ctx.id().0)
                .bind(ctx.attempt())
                .bind("after-1")
                .execute(&mut **tx)
                .await?;
        }
        Ok::<(), JobError>(())
    })
    .unwrap();
    let id = Producer::new(pool.clone())
        .enqueue(NewJob::json("ddl", json!({})))
        .await
        .unwrap();
    let w = start(pool.clone(), r, &s);
    wait_for(Duration::from_secs(20), "completed", || async {
        state_of(&db, id.0).await == "completed"
    })
    .await;
    w.stop().await;
    let (job, h) = jobq_worker::job_with_history(&db, id).await.unwrap();
    assert_eq!(job.attempt, 2, "the first attempt must not complete: {h:?}");
    let failed = h
        .iter()
        .find(|t| t.attempt == 1 && t.error.is_some())
        .expect("the first attempt failed with a reason");
    assert!(
        failed
            .error
            .as_deref()
            .unwrap()
            .contains("ended by the server"),
        "{failed:?}"
    );
    assert_consistent(&db).await;
}

/// A maintenance pass that hangs on a lock (here: pruning a dead worker's row that an operator
/// holds locked) never lets leadership lapse to a second process mid-pass: the lease's watchdog
/// renews it independently of the pass, which waits out the lock in a task of its own. (Before
/// both, the pass waited out the 5 s lock wait while a 0.7 s lease expired and the other worker
/// took over.)
#[sqlx::test(migrations = false)]
async fn a_slow_maintenance_pass_never_outlives_the_leader_lease(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    use sqlx::{Connection, Executor};
    let s = settings(&db, ClaimMode::SkipLocked).await;
    let first = start(pool(&s).await, builtins(), &s);
    let holder = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT CAST(holder AS CHAR) FROM jobq_locks \
             WHERE name = 'jobq:maintenance' AND expires_at > UTC_TIMESTAMP(6)",
        )
        .fetch_optional(&db)
        .await
        .unwrap()
    };
    wait_for(Duration::from_secs(10), "a leader", || async {
        holder().await.is_some()
    })
    .await;
    let leader = holder().await.unwrap();
    let second = start(pool(&s).await, builtins(), &s);
    // A dead worker's row, locked by an operator's open transaction: pruning it blocks.
    sqlx::query(
        "INSERT INTO jobq_workers (id, host, pid, queues, started_at, last_heartbeat_at) \
         VALUES ('dead', 'h', 1, 'default', '2001-01-01', '2001-01-01')",
    )
    .execute(&db)
    .await
    .unwrap();
    let mut operator = sqlx::MySqlConnection::connect_with(&db.connect_options())
        .await
        .unwrap();
    operator.execute("START TRANSACTION").await.unwrap();
    operator
        .execute("SELECT * FROM jobq_workers WHERE id = 'dead' FOR UPDATE")
        .await
        .unwrap();
    // Worker rows are pruned every 30 passes (3 s at 100 ms): watch over two prunes.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let now = holder().await;
        assert_eq!(
            now.as_deref(),
            Some(leader.as_str()),
            "leadership lapsed or moved while a pass was blocked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    operator.execute("ROLLBACK").await.unwrap();
    drop(operator);
    second.stop().await;
    first.stop().await;
}
