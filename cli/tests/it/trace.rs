//! `jobq enqueue --traceparent` and TRACEPARENT (README "Tracing"): the context is stored
//! with the job for its handler's span to continue; a malformed one is refused with the
//! format, nothing inserted. (The spans themselves: `worker/tests/trace.rs`.)

use sqlx::MySqlPool;

use crate::common::*;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

async fn stored(db: &MySqlPool) -> Vec<(Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT CAST(traceparent AS CHAR), CAST(tracestate AS CHAR) FROM jobq_jobs ORDER BY id",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn the_cli_stores_the_trace_context_it_is_given(db: MySqlPool) {
    jobq_producer::migrate(&db).await.unwrap();
    let url = url_of(&db).await;
    jobq_ok(
        &url,
        &[
            "enqueue",
            "noop",
            "--traceparent",
            PARENT,
            "--tracestate",
            "vendor=1",
        ],
        &[],
    )
    .await;
    jobq_ok(&url, &["enqueue", "noop"], &[("TRACEPARENT", PARENT)]).await;
    jobq_ok(&url, &["enqueue", "noop"], &[]).await;
    assert_eq!(
        stored(&db).await,
        [
            (Some(PARENT.to_owned()), Some("vendor=1".to_owned())),
            (Some(PARENT.to_owned()), None),
            (None, None),
        ]
    );
    let out = jobq_cli(&url, &["enqueue", "noop", "--traceparent", "00-abc-01"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not a W3C traceparent") && err.contains("00-<32 hex digits>"),
        "{err}"
    );
    assert_eq!(stored(&db).await.len(), 3, "nothing inserted");
    // A malformed TRACEPARENT in the environment is not the user's input: a warning, and the
    // job goes in without it.
    let out = {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_jobq"));
        cmd.args(["enqueue", "noop"])
            .env("JOBQ_DATABASE_URL", &url)
            .env("JOBQ_LOG__LEVEL", "warn")
            .env("TRACEPARENT", "garbage");
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: ignoring TRACEPARENT from the environment"),
        "{err}"
    );
    assert_eq!(stored(&db).await.len(), 4);
    assert_eq!(stored(&db).await[3], (None, None));
}
