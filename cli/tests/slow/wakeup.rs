//! The in-process wake-up: an idle claimer sleeping out a long poll interval is woken by a
//! producer in its own process. Slow by nature: the claimer must first back off to its longest
//! wait.

use std::time::Duration;

use jobq_config::ClaimMode;
use jobq_worker::{NewJob, Producer};
use serde_json::json;
use sqlx::MySqlPool;

use crate::common::*;

/// A producer in the worker's own process wakes the idle claimer at once: with a 10 s poll
/// interval the job still runs long before the next poll.
#[sqlx::test(migrations = false)]
async fn same_process_enqueue_wakes_the_worker(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let mut s = settings(&db, ClaimMode::SkipLocked).await;
    s.worker.poll_interval = Duration::from_secs(10);
    let pool = pool(&s).await;
    let w = start(pool.clone(), builtins(), &s);
    // Let the claimer go idle. Its waits double from 2 ms (2, 4, … 8192 ms end at 16.4 s), and
    // the wait after that is the full 10 s: enqueued at 17 s, the job would be found by polling
    // only at ~26.4 s, so finishing within 5 s shows the wake-up.
    tokio::time::sleep(Duration::from_secs(17)).await;
    let id = Producer::new(pool.clone())
        .enqueue(NewJob::json("noop", json!({})))
        .await
        .unwrap();
    wait_for(
        Duration::from_secs(5),
        "job woken and run before the next poll",
        || async { state_of(&db, id.0).await == "completed" },
    )
    .await;
    w.stop().await;
}
