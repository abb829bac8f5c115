//! The operator endpoint on `metrics.listen`: `/metrics` (Prometheus text format), `/healthz`
//! (the process is up) and `/readyz` (the worker runs with every loop alive, the database
//! answers and is migrated), GET and HEAD, on axum like the console. Each connection is served
//! by hyper directly (HTTP/1.1, no keep-alive) so that at most [`MAX_CONNECTIONS`] are held at
//! once (more wait in the listen backlog) and each is bounded in time: idle or slow clients can
//! neither pile up descriptors nor hold a slot.
//! `/readyz` never touches the database itself: a background check on its own connection
//! refreshes a cached answer, so probes cost nothing and cannot exhaust the workers' pool;
//! clients get a short reason, the log gets the detail.

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use jobq_worker::{Config, Health, Status};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;
use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Installs the Prometheus recorder (explicit buckets) and returns its handle.
pub(crate) fn install_recorder(config: &Config) -> Result<PrometheusHandle> {
    use jobq_worker::metrics as m;
    let handle = PrometheusBuilder::new()
        .idle_timeout(MetricKindMask::GAUGE, Some(m::gauge_idle_timeout(config)))
        .set_buckets_for_metric(Matcher::Full(m::RUN_SECONDS.into()), m::RUN_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::WAIT_SECONDS.into()), m::WAIT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::CLAIM_SECONDS.into()), m::CLAIM_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::LOCK_WAIT_SECONDS.into()), m::CLAIM_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(m::CLAIM_BATCH.into()), m::BATCH_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Prefix("jobq_lock_".into()),
            jobq_lock::metrics::BUCKETS,
        )?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    m::describe();
    jobq_lock::metrics::describe();
    Ok(handle)
}

/// At most this many connections are served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 32;
/// A connection must send its request and take the answer within this time.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the readiness check runs (on its own connection, never the workers' pool).
const READY_EVERY: Duration = Duration::from_secs(2);

/// Binds `addr` now (so a taken port fails the start) and serves in the background.
/// `/readyz` reports the worker's `health` and a database check cached by a background task.
pub(crate) async fn spawn(
    addr: SocketAddr,
    handle: PrometheusHandle,
    pool: &MySqlPool,
    health: Health,
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
    let db_state = Arc::new(Mutex::new(Err("starting")));
    tokio::spawn(check_database(pool.clone(), db_state.clone()));
    let ready = Readiness { health, db_state };
    let app = router(handle, ready);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            match listener.accept().await {
                Ok((sock, _)) => {
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    tokio::spawn(async move {
                        let conn = hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(hyper_util::rt::TokioIo::new(sock), service);
                        let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                        drop(permit);
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

/// The endpoint's routes. axum answers HEAD on every GET route (headers, no body) and 405 with
/// an `Allow` header for other methods.
fn router(handle: PrometheusHandle, ready: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n") })
        .with_state((handle, ready))
}

type EndpointState = (PrometheusHandle, Readiness);

async fn metrics(State((handle, _)): State<EndpointState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
}

async fn readyz(State((_, ready)): State<EndpointState>) -> impl IntoResponse {
    match ready.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// What `/readyz` answers from: the worker's health and the last database check.
#[derive(Clone)]
struct Readiness {
    health: Health,
    /// `Err(short reason)` when the last check failed (the detail is in the log).
    db_state: Arc<Mutex<Result<(), &'static str>>>,
}

impl Readiness {
    fn check(&self) -> Result<(), String> {
        match self.health.status() {
            Status::Running => {}
            Status::Stopping => return Err("stopping".into()),
            Status::Dead(l) => return Err(format!("the worker's {l} died")),
        }
        (*self.db_state.lock().expect("never poisoned")).map_err(str::to_owned)
    }
}

/// Checks every [`READY_EVERY`] that the database answers on a connection of its own and the
/// schema is migrated; logs the detail when the result changes, keeps a short reason.
/// Each new connection goes where the pool's do (after a failover, to the pool's new host).
async fn check_database(pool: MySqlPool, state: Arc<Mutex<Result<(), &'static str>>>) {
    let mut conn: Option<MySqlConnection> = None;
    let mut last: Option<Result<(), String>> = None;
    loop {
        let (now, short): (Result<(), String>, Result<(), &'static str>) = async {
            if conn.is_none() {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    MySqlConnection::connect_with(&*pool.connect_options()),
                )
                .await
                {
                    Ok(Ok(c)) => conn = Some(c),
                    Ok(Err(e)) => {
                        return (Err(format!("connecting: {e}")), Err("database unreachable"))
                    }
                    Err(_) => {
                        return (
                            Err("connecting: no answer within 2 s".into()),
                            Err("database unreachable"),
                        )
                    }
                }
            }
            let c = conn.as_mut().expect("just connected");
            match tokio::time::timeout(Duration::from_secs(2), jobq_worker::check_migrated(&mut *c))
                .await
            {
                Ok(Ok(())) => (Ok(()), Ok(())),
                Ok(Err(e @ jobq_worker::Error::NotMigrated(_))) => {
                    (Err(e.to_string()), Err("schema not migrated"))
                }
                Ok(Err(e)) => {
                    conn = None;
                    (
                        Err(format!("{:#}", anyhow::Error::new(e))),
                        Err("database error"),
                    )
                }
                Err(_) => {
                    conn = None;
                    (
                        Err("no answer within 2 s".into()),
                        Err("database not answering"),
                    )
                }
            }
        }
        .await;
        if last.as_ref() != Some(&now) {
            match &now {
                Ok(()) => tracing::info!("readiness: database ready"),
                Err(detail) => tracing::warn!(%detail, "readiness: not ready"),
            }
            last = Some(now);
        }
        *state.lock().expect("never poisoned") = short;
        tokio::time::sleep(READY_EVERY).await;
    }
}
