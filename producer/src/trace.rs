//! [`TraceContext`]: the W3C trace context stored with a job (`jobq_jobs.traceparent`,
//! `tracestate`), so the handler's span continues the trace of the code that enqueued it.
//! Validated here, whoever gives it (a producer, `jobq enqueue --traceparent`, the SQL
//! contract is checked by the worker when it reads it); read from the current `tracing` span
//! with the feature `otel`.

use crate::error::{Error, Result};

/// The longest `tracestate` kept (the W3C limit is 32 members; 512 characters covers what
/// vendors send, and a longer one is dropped rather than refused: it only carries hints).
pub const MAX_TRACESTATE_CHARS: usize = 512;

/// A W3C trace context: a `traceparent` (`00-<trace id>-<parent span id>-<flags>`) and an
/// optional `tracestate`. Only a valid one can be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Checks `traceparent` (version `00`, 32 and 16 lowercase hex digits, neither all zero,
    /// 2 hex digits of flags) and keeps `tracestate` if it is printable ASCII of at most
    /// [`MAX_TRACESTATE_CHARS`] (else it is dropped).
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Result<TraceContext> {
        check_traceparent(traceparent).map_err(|message| Error::Invalid {
            field: "traceparent",
            message,
        })?;
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE_CHARS
                    && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        Ok(TraceContext {
            traceparent: traceparent.to_owned(),
            tracestate,
        })
    }

    /// The `traceparent` header value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The trace id (32 hex digits).
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The enqueuing span's id (16 hex digits).
    pub fn span_id(&self) -> &str {
        &self.traceparent[36..52]
    }

    /// The flags byte (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent[53..55], 16).unwrap_or(0)
    }

    /// The context of the current `tracing` span, if an OpenTelemetry layer gave it a valid
    /// one (feature `otel`; without it, always `None`).
    pub fn current() -> Option<TraceContext> {
        current()
    }
}

/// Why `t` is not a `traceparent` this version of the format allows.
fn check_traceparent(t: &str) -> std::result::Result<(), String> {
    let parts: Vec<&str> = t.split('-').collect();
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match parts[..] {
        [version, trace, span, flags]
            if version == "00"
                && trace.len() == 32
                && span.len() == 16
                && flags.len() == 2
                && [trace, span, flags].iter().all(|p| hex(p)) =>
        {
            if trace.bytes().all(|b| b == b'0') || span.bytes().all(|b| b == b'0') {
                Err(format!(
                    "{t:?} has an all-zero trace or span id, which W3C calls invalid"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(format!(
            "{t:?} is not a W3C traceparent: write 00-<32 hex digits>-<16 hex digits>-<2 hex \
             digits>, lowercase, as in 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )),
    }
}

#[cfg(feature = "otel")]
fn current() -> Option<TraceContext> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let traceparent = format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    );
    let state = sc.trace_state().header();
    TraceContext::new(&traceparent, Some(&state)).ok()
}

#[cfg(not(feature = "otel"))]
fn current() -> Option<TraceContext> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_w3c_traceparents_are_taken() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::new(ok, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id(), "00f067aa0ba902b7");
        assert_eq!(t.flags(), 1);
        assert_eq!(t.tracestate(), Some("congo=t61rcWkgMzE"));
        let bad = [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ];
        for b in bad {
            let e = TraceContext::new(b, None).unwrap_err().to_string();
            assert!(e.contains("traceparent"), "{b}: {e}");
        }
        // A tracestate that cannot be right is dropped, not refused.
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE_CHARS);
        for s in ["", "  ", long.as_str(), "a=\u{7}"] {
            assert_eq!(
                TraceContext::new(ok, Some(s)).unwrap().tracestate(),
                None,
                "{s:?}"
            );
        }
    }
}
