//! Queues over two independent servers: the machine's server (this test's database) and a
//! private MariaDB started by the test (`support/mariadb.rs`). `[queues.far] database_url`
//! puts one queue on the private server; `jobq migrate` migrates both, `jobq enqueue` writes to
//! the queue's server, a producer routes by queue (and refuses one call spanning both), one
//! `jobq work` process serves both queues under one worker id with a maintenance leader on each
//! server, `jobq stats` and `/metrics` show both servers, and a SIGTERM drains both. A server
//! that cannot be worked stops the process before anything is claimed anywhere.

use std::time::Duration;

use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::MySqlPool;

use crate::common::*;
use crate::mariadb::PrivateMariaDb;
use crate::procs::WorkerProc;

const NEAR: usize = 300;
const FAR: usize = 300;

#[sqlx::test(migrations = false)]
async fn one_worker_serves_queues_on_two_servers(near: MySqlPool) {
    jobq_producer::migrate(&near).await.unwrap();
    let server = PrivateMariaDb::start().await;
    let near_url = url_of(&near).await;
    let far_url = server.url("jobq_far");
    let env = [
        ("JOBQ_QUEUES__FAR__DATABASE_URL", far_url.as_str()),
        ("JOBQ_WORKER__POLL_INTERVAL", "20ms"),
        ("JOBQ_MAINTENANCE__INTERVAL", "100ms"),
    ];
    let cli = |args: &'static [&'static str]| {
        let url = near_url.clone();
        async move { jobq_ok(&url, args, &env).await }
    };

    // A server that cannot be worked (here: its database does not exist yet) stops the
    // process before it claims anything on any server.
    let early = Producer::new(near.clone())
        .enqueue(NewJob::json("noop", json!({})).queue("near"))
        .await
        .unwrap();
    let mut refused = WorkerProc::spawn(&near_url, &["--queues", "near,far"], &env);
    let (code, _) = refused.wait(Duration::from_secs(30));
    assert_ne!(code, Some(0), "{}", refused.log_text());
    assert_eq!(state_of(&near, early.0).await, "available");
    sqlx::query("DELETE FROM jobq_jobs")
        .execute(&near)
        .await
        .unwrap();
    sqlx::query("DELETE FROM jobq_transitions")
        .execute(&near)
        .await
        .unwrap();

    // One `jobq migrate` creates the far database and its schema.
    cli(&["migrate"]).await;
    let far = MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&far_url)
        .await
        .unwrap();
    for db in [&near, &far] {
        jobq_worker::builtin::setup(db).await.unwrap();
    }

    // The CLI writes a far job to the far server.
    let out = cli(&["enqueue", "record", "--queue", "far", "--count", "100"]).await;
    assert_eq!(out.lines().count(), 100);
    assert_eq!(
        count(&far, "SELECT COUNT(*) FROM jobq_jobs WHERE queue = 'far'").await,
        100
    );
    assert_eq!(count(&near, "SELECT COUNT(*) FROM jobq_jobs").await, 0);

    // A routed producer: each queue's jobs to its server; one call over both is refused whole.
    let mut settings = jobq_config::Settings {
        database_url: near_url.clone(),
        ..Default::default()
    };
    settings.queues.insert(
        "far".into(),
        jobq_config::QueueOverrides {
            database_url: Some(far_url.clone()),
            ..Default::default()
        },
    );
    let config = settings.validate().unwrap();
    let producer = jobq_worker::routed_producer(near.clone(), &config)
        .await
        .unwrap();
    let mixed = vec![
        NewJob::json("record", json!({})).queue("near"),
        NewJob::json("record", json!({})).queue("far"),
    ];
    let e = producer.enqueue_many(mixed).await.unwrap_err();
    assert!(
        matches!(e, jobq_producer::Error::SeveralServers { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("one call per server"), "{e}");
    assert_eq!(count(&near, "SELECT COUNT(*) FROM jobq_jobs").await, 0);
    let near_jobs = (0..NEAR)
        .map(|_| NewJob::json("record", json!({"ms": 2})).queue("near"))
        .collect();
    producer.enqueue_many(near_jobs).await.unwrap();
    let far_jobs = (100..FAR)
        .map(|_| NewJob::json("record", json!({"ms": 2})).queue("far"))
        .collect();
    let far_ids = producer.enqueue_many(far_jobs).await.unwrap();
    assert_eq!(
        count(&near, "SELECT COUNT(*) FROM jobq_jobs").await,
        NEAR as i64
    );
    assert_eq!(
        count(&far, "SELECT COUNT(*) FROM jobq_jobs").await,
        FAR as i64
    );

    // One worker process, both queues.
    let port = crate::http::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut envs: Vec<(&str, &str)> = env.to_vec();
    envs.push(("JOBQ_METRICS__LISTEN", &listen));
    let mut w = WorkerProc::spawn(
        &near_url,
        &["--queues", "near,far", "--concurrency", "4"],
        &envs,
    );
    wait_for(
        Duration::from_secs(60),
        "every job on both servers to complete",
        || async {
            count(
                &near,
                "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
            )
            .await
                == NEAR as i64
                && count(
                    &far,
                    "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'completed'",
                )
                .await
                    == FAR as i64
        },
    )
    .await;
    // Job ids are per server: a far job is read on the far server.
    let last = *far_ids.last().unwrap();
    let end = producer
        .wait_for_in("far", last, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("the far job ended");
    assert_eq!(end.state, jobq_worker::JobState::Completed);

    // One worker id, registered on both servers, running each server's jobs.
    let ids = |db: MySqlPool| async move {
        sqlx::query_scalar::<_, String>("SELECT CAST(id AS CHAR) FROM jobq_workers")
            .fetch_all(&db)
            .await
            .unwrap()
    };
    let (near_ids, far_ids) = (ids(near.clone()).await, ids(far.clone()).await);
    assert_eq!(near_ids.len(), 1, "{near_ids:?}");
    assert_eq!(near_ids, far_ids, "one worker id on both servers");
    for db in [&near, &far] {
        assert_eq!(
            count(
                db,
                &format!(
                    "SELECT COUNT(*) FROM jobq_transitions WHERE event = 'completed' \
                     AND worker_id <> '{}'",
                    near_ids[0]
                ),
            )
            .await,
            0
        );
    }
    assert_effects_once(&near, NEAR).await;
    assert_effects_once(&far, FAR).await;

    // A maintenance leader on each server, each gauge labelled with its server.
    let near_name = jobq_worker::server_name(&near_url);
    let far_name = jobq_worker::server_name(&far_url);
    wait_for(
        Duration::from_secs(20),
        "a leader on each server",
        || async {
            let Ok((200, body)) = crate::http::get(port, "/metrics") else {
                return false;
            };
            [&near_name, &far_name].iter().all(|s| {
                body.lines()
                    .any(|l| l == format!("jobq_maintenance_leader{{server=\"{s}\"}} 1"))
            }) && body.lines().any(|l| {
                l.starts_with("jobq_queue_available_jobs{")
                    && l.contains(&format!("server=\"{far_name}\""))
                    && l.contains("queue=\"far\"")
            })
        },
    )
    .await;

    // `jobq stats` shows each server with its own queue.
    let stats: serde_json::Value = serde_json::from_str(&cli(&["stats", "--json"]).await).unwrap();
    let servers = stats.as_array().expect("an array, one entry per server");
    assert_eq!(servers.len(), 2, "{stats}");
    assert_eq!(servers[0]["server"], near_name.as_str());
    assert_eq!(servers[1]["server"], far_name.as_str());
    assert_eq!(
        servers[0]["stats"]["queues"]["near"]["states"]["completed"],
        NEAR
    );
    assert_eq!(
        servers[1]["stats"]["queues"]["far"]["states"]["completed"],
        FAR
    );
    let text = cli(&["stats"]).await;
    assert!(
        text.contains(&format!("server {near_name}"))
            && text.contains(&format!("server {far_name}")),
        "{text}"
    );

    // SIGTERM while jobs run on both servers: both runs drain, the process exits 0, and
    // nothing is left running or registered on either server.
    for queue in ["near", "far"] {
        let jobs = (0..16)
            .map(|_| NewJob::json("sleep", json!({"ms": 400})).queue(queue))
            .collect();
        producer.enqueue_many(jobs).await.unwrap();
    }
    let running = "SELECT COUNT(*) FROM jobq_jobs WHERE state = 'running'";
    wait_for(
        Duration::from_secs(20),
        "jobs running on both servers",
        || async { count(&near, running).await > 0 && count(&far, running).await > 0 },
    )
    .await;
    w.stop_cleanly();
    for db in [&near, &far] {
        assert_eq!(count(db, running).await, 0, "a job was left running");
        assert_eq!(count(db, "SELECT COUNT(*) FROM jobq_workers").await, 0);
        assert_consistent(db).await;
    }
}
