//! Trace propagation through a real OpenTelemetry SDK pipeline exporting to memory (README
//! "Tracing"): a job's handler span is the child of the span that enqueued it on its first
//! attempt and links to it on a retry; a job enqueued by a handler is the child of that
//! handler's span; a workflow's jobs, parent and child, continue the span that enqueued the
//! workflow, and so does its callback; a job inserted with plain SQL and a `traceparent` continues that context.

use std::sync::OnceLock;
use std::time::Duration;

use jobq_worker::{JobContext, JobError, JobId, NewJob, Producer, Registry, Shutdown, Workflow};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use sqlx::MySqlPool;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// The process's one pipeline: `tracing` spans to OpenTelemetry, exported to memory.
fn pipeline() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static PIPELINE: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("jobq-test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this test binary");
        (provider, exporter)
    })
}

/// The trace and span id of `span`, as OpenTelemetry sees it.
fn ids_of(span: &tracing::Span) -> (TraceId, SpanId) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (sc.trace_id(), sc.span_id())
}

/// The `job` span of job `id`'s attempt `attempt`.
fn job_span(spans: &[SpanData], id: JobId, attempt: i64) -> SpanData {
    let attr = |s: &SpanData, key: &str| {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().to_string())
    };
    spans
        .iter()
        .find(|s| {
            s.name == "job"
                && attr(s, "job_id") == Some(id.0.to_string())
                && attr(s, "attempt") == Some(attempt.to_string())
        })
        .unwrap_or_else(|| {
            let seen: Vec<_> = spans.iter().map(|s| (&s.name, &s.attributes)).collect();
            panic!("no span of job {id} attempt {attempt} among {seen:?}")
        })
        .clone()
}

/// The URL of the test's database (DATABASE_URL's server, `#[sqlx::test]`'s database).
async fn url_of(db: &MySqlPool) -> String {
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(db)
        .await
        .unwrap();
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL names the test server");
    let server = base.rsplit_once('/').map_or(base.as_str(), |(s, _)| s);
    format!("{server}/{name}")
}

async fn wait_completed(db: &MySqlPool, ids: &[JobId]) {
    let p = Producer::new(db.clone());
    for id in ids {
        let end = p
            .wait_for(*id, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("the job ends");
        assert_eq!(end.state.as_str(), "completed", "job {id}: {:?}", end.error);
    }
}

#[sqlx::test(migrations = false)]
async fn handler_spans_continue_the_enqueuing_trace(db: MySqlPool) {
    let (provider, exporter) = pipeline();
    jobq_worker::testing::migrate(&db).await.unwrap();
    let producer = Producer::new(db.clone());

    let mut registry = Registry::new();
    registry
        .register_json(
            "flaky",
            |_: serde_json::Value, ctx: JobContext| async move {
                if ctx.attempt() == 1 {
                    return Err(JobError::retry_after("once", Duration::from_millis(50)));
                }
                Ok(())
            },
        )
        .unwrap();
    let inner = producer.clone();
    registry
        .register_json("spawner", move |_: serde_json::Value, ctx: JobContext| {
            let inner = inner.clone();
            async move {
                let child = inner
                    .enqueue(NewJob::json("leaf", json!({})))
                    .await
                    .map_err(JobError::retry)?;
                ctx.set_result(&child.0)?;
                Ok(())
            }
        })
        .unwrap();
    for kind in ["leaf", "step"] {
        registry
            .register_json(kind, |_: serde_json::Value, _ctx: JobContext| async {
                Ok(())
            })
            .unwrap();
    }

    // Enqueued inside a request's span.
    let request = tracing::info_span!("request");
    let (flaky, spawner) = async {
        (
            producer
                .enqueue(NewJob::json("flaky", json!({})))
                .await
                .unwrap(),
            producer
                .enqueue(NewJob::json("spawner", json!({})))
                .await
                .unwrap(),
        )
    }
    .instrument(request.clone())
    .await;
    let (trace, request_id) = ids_of(&request);
    let flow_request = tracing::info_span!("flow_request");
    let flow = producer
        .enqueue_workflow(
            Workflow::new("traced")
                .job("first", NewJob::json("step", json!({})))
                .job_after("second", NewJob::json("step", json!({})), &["first"])
                .on_finish(NewJob::json("leaf", json!({}))),
        )
        .instrument(flow_request.clone())
        .await
        .unwrap();
    let (flow_trace, flow_request_id) = ids_of(&flow_request);
    // A producer in another language, with plain SQL and the optional column.
    let remote_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let remote_span = "00f067aa0ba902b7";
    sqlx::query(
        "INSERT INTO jobq_jobs (queue, kind, payload, state, priority, run_at, max_attempts, created_at, traceparent) \
         VALUES ('default', 'leaf', '{}', 'available', 0, UTC_TIMESTAMP(6), 3, UTC_TIMESTAMP(6), ?)",
    )
    .bind(format!("00-{remote_trace}-{remote_span}-01"))
    .execute(&db)
    .await
    .unwrap();
    let foreign: u64 = sqlx::query_scalar("SELECT MAX(id) FROM jobq_jobs")
        .fetch_one(&db)
        .await
        .unwrap();

    let mut settings = jobq_config::Settings {
        database_url: url_of(&db).await,
        ..Default::default()
    };
    settings.worker.poll_interval = Duration::from_millis(20);
    settings.maintenance.interval = Duration::from_millis(50);
    let config = settings.validate().unwrap();
    let (shutdown, signal) = Shutdown::new();
    let pool = jobq_worker::connect(&config).await.unwrap();
    let worker = tokio::spawn(jobq_worker::Worker::new(pool, registry, &config).run(signal));
    let child = {
        let end = producer
            .wait_for(spawner, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("spawner ends");
        JobId(end.result.unwrap().as_u64().unwrap())
    };
    wait_completed(
        &db,
        &[
            flaky,
            spawner,
            child,
            flow.jobs["first"],
            flow.jobs["second"],
            JobId(foreign),
        ],
    )
    .await;
    let callback: u64 = {
        let mut id = None;
        for _ in 0..600 {
            id = sqlx::query_scalar("SELECT job_id FROM jobq_callbacks WHERE workflow_id = ?")
                .bind(flow.id.0)
                .fetch_one(&db)
                .await
                .unwrap();
            if id.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        id.expect("the workflow's callback was enqueued")
    };
    wait_completed(&db, &[JobId(callback)]).await;
    shutdown.stop();
    worker.await.unwrap().unwrap();
    drop((request, flow_request));
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    // First attempt: a child of the request; the retry: its own trace, linked to the request.
    let first = job_span(&spans, flaky, 1);
    assert_eq!(first.span_context.trace_id(), trace);
    assert_eq!(first.parent_span_id, request_id);
    let retry = job_span(&spans, flaky, 2);
    assert_ne!(retry.span_context.trace_id(), trace);
    assert_eq!(retry.parent_span_id, SpanId::INVALID);
    let linked: Vec<(TraceId, SpanId)> = retry
        .links
        .iter()
        .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
        .collect();
    assert_eq!(linked, [(trace, request_id)]);
    // A job enqueued by a handler: a child of that handler's span, in the request's trace.
    let spawned_by = job_span(&spans, spawner, 1);
    assert_eq!(spawned_by.parent_span_id, request_id);
    let leaf = job_span(&spans, child, 1);
    assert_eq!(leaf.span_context.trace_id(), trace);
    assert_eq!(leaf.parent_span_id, spawned_by.span_context.span_id());
    // A workflow's jobs, across the edge: both continue the span that enqueued the workflow.
    for name in ["first", "second"] {
        let s = job_span(&spans, flow.jobs[name], 1);
        assert_eq!(
            (s.span_context.trace_id(), s.parent_span_id),
            (flow_trace, flow_request_id),
            "{name}"
        );
    }
    // Its callback too.
    let s = job_span(&spans, JobId(callback), 1);
    assert_eq!(
        (s.span_context.trace_id(), s.parent_span_id),
        (flow_trace, flow_request_id),
        "callback"
    );
    // Plain SQL with a traceparent.
    let s = job_span(&spans, JobId(foreign), 1);
    assert_eq!(s.span_context.trace_id().to_string(), remote_trace);
    assert_eq!(s.parent_span_id.to_string(), remote_span);
}
