//! The operator endpoint of `jobq work` under abuse: many idle connections do not pile up in
//! the process, and readiness tells clients a short reason while the log keeps the detail.

use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use crate::http::{free_port, get};
use crate::procs::WorkerProc;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("reading the worker's /proc fd table")
        .count()
}

#[sqlx::test(migrator = "jobq_worker::MIGRATOR")]
async fn idle_connections_are_bounded(db: sqlx::MySqlPool) {
    let url = url_of(&db).await;
    let port = free_port();
    let mut w = WorkerProc::spawn(
        &url,
        &["--concurrency", "2"],
        &[("JOBQ_METRICS__LISTEN", &format!("127.0.0.1:{port}"))],
    );
    wait_for(Duration::from_secs(20), "/readyz ready", || async {
        matches!(get(port, "/readyz"), Ok((200, _)))
    })
    .await;
    let before = open_fds(w.pid());
    // 300 clients that connect and never send a request.
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connecting"))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_fds(w.pid());
    assert!(
        during <= before + 40,
        "300 idle clients made the worker hold {} more descriptors (bound: 32 connections)",
        during - before
    );
    drop(idle);
    // Closed clients are let go at once; a real request is answered again.
    wait_for(
        Duration::from_secs(10),
        "/healthz answers again",
        || async { matches!(get(port, "/healthz"), Ok((200, _))) },
    )
    .await;
    w.stop_cleanly();
}
