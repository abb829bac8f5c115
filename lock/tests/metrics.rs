//! The lock metrics, read back from a recorder: acquire waits by outcome, hold times, and a
//! lost lock counted once.

use std::time::Duration;

use jobq_lock::metrics::{ACQUIRE_WAIT_SECONDS, HOLD_SECONDS, LOST};
use jobq_lock::{LeaseLock, SessionLock};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sqlx::MySqlPool;

type Recorded = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// Everything recorded since the last snapshot (histogram samples are drained by taking one).
fn take(snap: &Snapshotter) -> Recorded {
    snap.snapshot().into_vec()
}

/// The recorded values of `name` whose labels include all of `labels`.
fn values<'r>(recorded: &'r Recorded, name: &str, labels: &[(&str, &str)]) -> Vec<&'r DebugValue> {
    recorded
        .iter()
        .filter(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(.., v)| v)
        .collect()
}

fn samples(v: &[&DebugValue]) -> usize {
    v.iter()
        .map(|v| match v {
            DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum()
}

#[sqlx::test(migrations = false)]
async fn acquisitions_holds_and_losses_are_recorded(db: MySqlPool) {
    jobq_lock::ensure_schema(&db).await.unwrap();
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder in this test binary");

    let session = SessionLock::new(&db).ping_every(Duration::from_millis(50));
    let g = session.try_acquire("m").await.unwrap().unwrap();
    let lease = LeaseLock::new(&db, "a");
    let l = lease.acquire("m", Duration::ZERO).await.unwrap().unwrap();
    assert!(LeaseLock::new(&db, "b")
        .acquire("m", Duration::ZERO)
        .await
        .unwrap()
        .is_none());
    l.release().await.unwrap();
    let rec = take(&snap);
    let acquired = |kind| {
        values(
            &rec,
            ACQUIRE_WAIT_SECONDS,
            &[("kind", kind), ("outcome", "acquired")],
        )
    };
    assert_eq!(samples(&acquired("session")), 1);
    assert_eq!(samples(&acquired("lease")), 1);
    let busy = values(
        &rec,
        ACQUIRE_WAIT_SECONDS,
        &[("kind", "lease"), ("outcome", "busy")],
    );
    assert_eq!(samples(&busy), 1);
    assert_eq!(
        samples(&values(&rec, HOLD_SECONDS, &[("kind", "lease")])),
        1
    );

    // Kill the session lock's connection: lost fires and is counted once.
    let info = jobq_lock::status(&db, Some("m")).await.unwrap();
    let holder = info
        .iter()
        .find(|i| i.kind == "session")
        .and_then(|i| i.holder.clone())
        .expect("the session lock is listed");
    let id = holder
        .strip_prefix("connection ")
        .and_then(|h| h.split(' ').next())
        .unwrap();
    sqlx::query(&format!("KILL CONNECTION {id}"))
        .execute(&db)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), g.lost())
        .await
        .expect("lost within 5 s");
    assert!(g.release().await.is_err());
    let rec = take(&snap);
    let lost = values(&rec, LOST, &[("kind", "session")]);
    assert_eq!(lost.len(), 1);
    assert!(matches!(lost[0], DebugValue::Counter(1)), "{lost:?}");
    assert_eq!(
        samples(&values(&rec, HOLD_SECONDS, &[("kind", "session")])),
        1
    );
}
