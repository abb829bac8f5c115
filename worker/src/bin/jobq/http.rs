//! The operator endpoint on `metrics.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up) and `/readyz` (the database answers and is migrated). A deliberately tiny
//! HTTP/1.1 responder: one request per connection, GET only, no keep-alive.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::MySqlPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Installs the Prometheus recorder (explicit buckets) and returns its handle.
pub(crate) fn install_recorder() -> Result<PrometheusHandle> {
    use jobq_worker::metrics as m;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(m::RUN_SECONDS.into()), m::RUN_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::WAIT_SECONDS.into()), m::WAIT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::CLAIM_SECONDS.into()), m::CLAIM_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::LOCK_WAIT_SECONDS.into()), m::CLAIM_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::CLAIM_BATCH.into()), m::BATCH_BUCKETS)?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    m::describe();
    Ok(handle)
}

/// Binds `addr` now (so a taken port fails the start) and serves in the background.
pub(crate) async fn spawn(
    addr: SocketAddr,
    handle: PrometheusHandle,
    pool: MySqlPool,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding metrics.listen {addr}"))?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    let (handle, pool) = (handle.clone(), pool.clone());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(10),
                            respond(sock, &handle, &pool),
                        )
                        .await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

async fn respond(
    mut sock: TcpStream,
    handle: &PrometheusHandle,
    pool: &MySqlPool,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", handle.render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => match ready(pool).await {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_owned()),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {e}\n"),
            ),
        },
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "try /metrics, /healthz or /readyz\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

/// Ready: the database answers within 2 s and the schema is migrated.
async fn ready(pool: &MySqlPool) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(2), jobq_worker::check_migrated(pool))
        .await
        .context("database did not answer within 2 s")??;
    Ok(())
}
