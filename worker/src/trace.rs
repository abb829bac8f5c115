//! The handler's span (`job`) and the trace it continues: with the feature `otel`, the trace
//! context stored with the job (`jobq_jobs.traceparent`, set by whoever enqueued it) becomes
//! the span's parent on the first attempt and a link on later ones (a retry is its own
//! operation, caused by the first, not a part of the enqueuing request). A context that does
//! not parse is ignored. Without the feature, the span is a plain `tracing` span.

use jobq_producer::KindName;
use tracing::{info_span, Span};

/// The span a job's attempt runs in.
pub(crate) fn job_span(
    id: u64,
    kind: &KindName,
    queue: &str,
    attempt: u32,
    worker: &str,
    trace: Option<&(String, Option<String>)>,
) -> Span {
    let span =
        info_span!("job", job_id = id, kind = %kind, queue = %queue, attempt, worker = %worker);
    if let Some((parent, state)) = trace {
        continue_trace(&span, parent, state.as_deref(), attempt);
    }
    span
}

#[cfg(feature = "otel")]
fn continue_trace(span: &Span, traceparent: &str, tracestate: Option<&str>, attempt: u32) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Ok(t) = jobq_producer::TraceContext::new(traceparent, tracestate) else {
        tracing::debug!(traceparent, "the job's traceparent does not parse; ignored");
        return;
    };
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(t.trace_id()),
        SpanId::from_hex(t.span_id()),
    ) else {
        return;
    };
    let state = t
        .tracestate()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let remote = SpanContext::new(trace_id, span_id, TraceFlags::new(t.flags()), true, state);
    if attempt <= 1 {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    } else {
        span.add_link(remote);
    }
}

#[cfg(not(feature = "otel"))]
fn continue_trace(_: &Span, _: &str, _: Option<&str>, _: u32) {}
