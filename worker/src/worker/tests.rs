//! Tests of the worker's wiring (`worker.rs`): loops, stop phases, lost claim answers, and
//! contexts that outlive their attempt.

use super::*;
use crate::health::Status;
use crate::shutdown::Shutdown;

/// A pool on the test's database whose sessions run at READ COMMITTED, as a worker requires
/// (the test harness's pool runs at the server's default).
async fn rc(pool: &MySqlPool) -> MySqlPool {
    use sqlx::Executor;
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(20)
        .after_connect(|c, _| {
            Box::pin(async move {
                c.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await
                    .map(drop)
            })
        })
        .connect_with((*pool.connect_options()).clone())
        .await
        .unwrap()
}

/// A background loop that panics does not leave a process that looks alive: the worker
/// stops by itself, reports the loop through its health and returns an error naming it.
#[sqlx::test(migrations = false)]
async fn a_dead_background_loop_stops_the_worker_loudly(pool: MySqlPool) {
    jobq_producer::migrate(&pool).await.unwrap();
    let mut settings = jobq_config::Settings::default();
    settings.worker.shutdown_timeout = Duration::from_secs(2);
    let config = settings.validate().unwrap();
    let queue = QueueName::new("default").unwrap();
    for which in [
        Loop::Claimer(queue.clone()),
        Loop::Completer,
        Loop::Heartbeat,
        Loop::Maintenance,
    ] {
        let (_shutdown, signal) = Shutdown::new();
        let worker =
            Worker::new(rc(&pool).await, Registry::new(), &config).inject_panic(which.clone());
        let health = worker.health();
        assert_eq!(health.status(), Status::Running);
        let result = tokio::time::timeout(Duration::from_secs(20), worker.run(signal))
            .await
            .unwrap_or_else(|_| panic!("the worker kept running after its {which} died"));
        match result {
            Err(Error::LoopDied(l)) => assert_eq!(l, which),
            other => panic!("expected LoopDied({which}), got {other:?}"),
        }
        assert_eq!(health.status(), Status::Dead(which));
    }
    let workers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobq_workers")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 0, "each stopped worker removed its row");
}

/// A claim that committed but whose answer never arrived: its jobs never started, so they
/// are given back with the attempt refunded; a job allowed one attempt still runs (before,
/// it waited for its lease to expire and rescue discarded it, never having run).
#[sqlx::test(migrations = false)]
async fn a_lost_claim_answer_costs_no_attempt(pool: MySqlPool) {
    jobq_producer::migrate(&pool).await.unwrap();
    let mut settings = jobq_config::Settings::default();
    settings.worker.poll_interval = Duration::from_millis(20);
    settings.maintenance.interval = Duration::from_millis(100);
    let config = settings.validate().unwrap();
    let mut registry = Registry::new();
    crate::builtin::register(&mut registry).unwrap();
    let id = jobq_producer::Producer::new(pool.clone())
        .enqueue(jobq_producer::NewJob::json("noop", serde_json::json!({})).max_attempts(1))
        .await
        .unwrap();
    let (shutdown, signal) = Shutdown::new();
    let worker = Worker::new(rc(&pool).await, registry, &config).lose_claim_answers(1);
    let run = tokio::spawn(worker.run(signal));
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT CAST(state AS CHAR) FROM jobq_jobs WHERE id = ?")
            .bind(id.0)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let start = std::time::Instant::now();
    while !matches!(state().await.as_str(), "completed" | "discarded") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the job never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.stop();
    run.await.unwrap().unwrap();
    assert_eq!(state().await, "completed");
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(event AS CHAR) FROM jobq_transitions WHERE job_id = ? ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        events,
        ["enqueued", "claimed", "released", "claimed", "completed"]
    );
}

/// A task the handler spawned that outlives the attempt cannot begin a transaction nobody
/// would end (before, it opened one that stayed open in the pool for as long as the task
/// held the context); and the handler's own transaction is ended with the attempt.
#[sqlx::test(migrations = false)]
async fn a_context_that_outlives_its_attempt_opens_no_transaction(pool: MySqlPool) {
    jobq_producer::migrate(&pool).await.unwrap();
    let mut settings = jobq_config::Settings::default();
    settings.worker.poll_interval = Duration::from_millis(20);
    let config = settings.validate().unwrap();
    let kept: Arc<std::sync::Mutex<Option<crate::JobContext>>> = Arc::default();
    let mut registry = Registry::new();
    let keep = kept.clone();
    registry
        .register_json(
            "keep",
            move |_: serde_json::Value, ctx: crate::JobContext| {
                let keep = keep.clone();
                async move {
                    // The handler's own transaction, used and ended with the attempt.
                    let mut tx = ctx.tx().await?;
                    sqlx::query("SELECT 1").execute(&mut **tx).await?;
                    drop(tx);
                    *keep.lock().unwrap() = Some(ctx);
                    Ok(())
                }
            },
        )
        .unwrap();
    let id = jobq_producer::Producer::new(pool.clone())
        .enqueue(jobq_producer::NewJob::json("keep", serde_json::json!({})))
        .await
        .unwrap();
    let (shutdown, signal) = Shutdown::new();
    let run = tokio::spawn(Worker::new(rc(&pool).await, registry, &config).run(signal));
    let start = std::time::Instant::now();
    loop {
        let state: String =
            sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_jobs WHERE id = ?")
                .bind(id.0)
                .fetch_one(&pool)
                .await
                .unwrap();
        if state == "completed" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "still {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ctx = kept.lock().unwrap().take().expect("the handler ran");
    let late = ctx.tx().await.map(|_| ()).unwrap_err();
    assert!(
        late.to_string().contains("this attempt has ended"),
        "{late}"
    );
    shutdown.stop();
    run.await.unwrap().unwrap();
    // No session of this database is inside a transaction.
    let open: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.innodb_trx t \
             JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id \
             WHERE p.db = DATABASE() AND t.trx_mysql_thread_id <> CONNECTION_ID()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(open, 0);
}

/// `maintenance.lead = false`: the process works jobs but never leads maintenance, so a due
/// scheduled job waits until a process that may lead is there to promote it.
#[sqlx::test(migrations = false)]
async fn a_process_that_may_not_lead_does_no_maintenance(pool: MySqlPool) {
    jobq_producer::migrate(&pool).await.unwrap();
    let mut settings = jobq_config::Settings::default();
    settings.worker.poll_interval = Duration::from_millis(20);
    settings.maintenance.interval = Duration::from_millis(100);
    settings.maintenance.lead = false;
    let follower = settings.validate().unwrap();
    settings.maintenance.lead = true;
    let leader = settings.validate().unwrap();
    let registry = || {
        let mut r = Registry::new();
        crate::builtin::register(&mut r).unwrap();
        r
    };
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, run_at) \
         VALUES ('default', 'noop', '{}', 'scheduled', UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT CAST(state AS CHAR) FROM jobq_jobs")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let (stop_follower, signal) = Shutdown::new();
    let follower = tokio::spawn(Worker::new(rc(&pool).await, registry(), &follower).run(signal));
    // Ten maintenance intervals: a leader would have promoted it many times over.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state().await, "scheduled", "the follower did maintenance");
    let (stop_leader, signal) = Shutdown::new();
    let leader = tokio::spawn(Worker::new(rc(&pool).await, registry(), &leader).run(signal));
    let start = std::time::Instant::now();
    while state().await != "completed" {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never promoted and run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_follower.stop();
    stop_leader.stop();
    follower.await.unwrap().unwrap();
    leader.await.unwrap().unwrap();
}

/// A run over two servers closes the pool it opened for the other one when it ends: an
/// application embedding the worker keeps no idle connections to a server it no longer works.
/// (A second database on the machine's server counts as another server.)
#[sqlx::test(migrations = false)]
async fn pools_opened_for_other_servers_are_closed_at_the_end(pool: MySqlPool) {
    jobq_producer::migrate(&pool).await.unwrap();
    let db: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let far_db = format!("far_{}", &db[db.len().saturating_sub(40)..]);
    let opts = pool.connect_options();
    let far_url = format!(
        "mysql://root@{}:{}/{far_db}",
        opts.get_host(),
        opts.get_port()
    );
    crate::migrate(&far_url).await.unwrap();
    let mut settings = jobq_config::Settings {
        database_url: format!("mysql://root@{}:{}/{db}", opts.get_host(), opts.get_port()),
        ..Default::default()
    };
    settings.worker.queues = vec!["default".into(), "far".into()];
    settings.worker.poll_interval = Duration::from_millis(20);
    settings.queues.insert(
        "far".into(),
        jobq_config::QueueOverrides {
            database_url: Some(far_url.clone()),
            ..Default::default()
        },
    );
    let config = settings.validate().unwrap();
    let far = MySqlPool::connect(&far_url).await.unwrap();
    jobq_producer::Producer::new(far.clone())
        .enqueue(jobq_producer::NewJob::json("noop", serde_json::json!({})).queue("far"))
        .await
        .unwrap();
    let mut registry = Registry::new();
    crate::builtin::register(&mut registry).unwrap();
    let (_shutdown, signal) = Shutdown::new();
    let worker = Worker::new(rc(&pool).await, registry, &config).drain(true);
    let stopped = tokio::time::timeout(Duration::from_secs(30), worker.run(signal))
        .await
        .expect("the drain never ended")
        .unwrap();
    assert!(matches!(stopped, Stopped::Drained), "{stopped:?}");
    let done: String = sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_jobs")
        .fetch_one(&far)
        .await
        .unwrap();
    assert_eq!(done, "completed");
    far.close().await;
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?")
            .bind(&far_db)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query(&format!("DROP DATABASE `{far_db}`"))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "connections to the other server left open");
}

/// A worker given a pool whose sessions run at REPEATABLE READ (an application's own pool at
/// the server's default) refuses to start, saying what to do, and claims nothing.
#[sqlx::test(migrations = false)]
async fn a_repeatable_read_pool_is_refused(pool: MySqlPool) {
    jobq_producer::migrate(&pool).await.unwrap();
    let id = jobq_producer::Producer::new(pool.clone())
        .enqueue(jobq_producer::NewJob::json("noop", serde_json::json!({})))
        .await
        .unwrap();
    let config = jobq_config::Settings::default().validate().unwrap();
    let mut registry = Registry::new();
    crate::builtin::register(&mut registry).unwrap();
    let (_shutdown, signal) = Shutdown::new();
    let err = Worker::new(pool.clone(), registry, &config)
        .run(signal)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REPEATABLE-READ") && err.contains("jobq_worker::connect"),
        "{err}"
    );
    let state: String =
        sqlx::query_scalar("SELECT CAST(state AS CHAR) FROM jobq_jobs WHERE id = ?")
            .bind(id.0)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(state, "available");
}

/// Batches whose statements could outgrow the server's `max_allowed_packet` are refused at
/// start, naming the keys; the defaults fit the smallest usual packet (4 MiB, MySQL 8.0's
/// default is 64 MiB, MariaDB's 16 MiB).
#[test]
fn batches_beyond_the_packet_are_refused() {
    let fits = jobq_config::Settings::default().validate().unwrap();
    db::check_batches(&fits, 4 << 20).unwrap();
    let mut s = jobq_config::Settings::default();
    s.worker.completion_batch = 2_000;
    let err = db::check_batches(&s.validate().unwrap(), 16 << 20)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("worker.completion_batch = 2000") && err.contains("max_allowed_packet"),
        "{err}"
    );
    let mut s = jobq_config::Settings::default();
    s.worker.max_batch = 100_000;
    let err = db::check_batches(&s.validate().unwrap(), 16 << 20)
        .unwrap_err()
        .to_string();
    assert!(err.contains("max_batch = 100000"), "{err}");
}
