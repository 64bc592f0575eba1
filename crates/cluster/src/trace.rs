//! Distributed traces (OpenTelemetry), best effort and off unless the binary installs an
//! exporter (`--otlp-endpoint`).
//!
//! Spans that belong in a trace are created with the target [`TARGET`]; the binary's log output
//! never enables that target, so without an exporter those spans are disabled at their call
//! sites and cost a cached interest check.
//!
//! Two hops need help to stay in one trace:
//! * **Forwarding.** A follower's write reaches the leader over the peer gRPC service; the
//!   caller's span context travels as a W3C `traceparent` in the request's metadata
//!   ([`inject`]) and the leader's span continues it ([`extract`]).
//! * **Dispatch.** The leader's dispatcher acts on state, long after the write that created the
//!   job returned. [`JobTraces`] keeps, in memory on the node that proposed it, the span context
//!   of each job's creation, so the spans of its MQTT publishes and recorded answers join the
//!   job's trace. It is never persisted, never replicated, bounded, and nothing reads it but
//!   span creation: tracing cannot change what is decided or stored. A leader change or a
//!   restart forgets it (later work on the job then starts traces of its own).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use muster_types::JobId;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of spans meant for the trace exporter (and nowhere else).
pub const TARGET: &str = "muster_trace";

/// Jobs whose creation context is kept; the oldest is forgotten first.
const JOBS_KEPT: usize = 4096;

/// Writes the current span's context into `meta` as `traceparent` (nothing when tracing is off).
pub(crate) fn inject(meta: &mut tonic::metadata::MetadataMap) {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut Metadata(meta));
}

/// The context a caller sent in `meta` (an empty one if it sent none).
pub(crate) fn extract(meta: &tonic::metadata::MetadataMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&MetadataRef(meta))
}

/// Makes `span` a child of the remote context `cx`, if `cx` carries one.
pub(crate) fn continue_remote(span: &Span, cx: opentelemetry::Context) {
    if cx.span().span_context().is_valid() && !span.is_disabled() {
        let _ = span.set_parent(cx);
    }
}

/// Makes `span` (a request's first span) continue the caller's trace when the request carries a
/// W3C `traceparent` header (REST, or gRPC metadata, which travels as HTTP/2 headers).
pub fn continue_from_headers(span: &Span, headers: &tonic::codegen::http::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    continue_remote(
        span,
        TraceContextPropagator::new().extract(&Headers(headers)),
    );
}

struct Headers<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(key.as_bytes()),
            value.parse::<tonic::metadata::AsciiMetadataValue>(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataRef<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The span context each recent job was created in, on the node that proposed the creation
/// (see the module docs).
#[derive(Debug, Default)]
pub struct JobTraces {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_job: HashMap<JobId, opentelemetry::Context>,
    order: VecDeque<JobId>,
}

impl JobTraces {
    /// Keeps the current span's context as `job`'s creation, if tracing is on.
    pub fn remember(&self, job: &JobId) {
        let cx = Span::current().context();
        if !cx.span().span_context().is_valid() {
            return;
        }
        let mut kept = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.by_job.insert(job.clone(), cx).is_none() {
            kept.order.push_back(job.clone());
        }
        while kept.order.len() > JOBS_KEPT {
            if let Some(old) = kept.order.pop_front() {
                kept.by_job.remove(&old);
            }
        }
    }

    /// Makes `span` (a new span about `job`) a child of the job's creation, if it is known.
    /// A disabled span (tracing off) is returned as it is, without a lookup.
    pub fn adopt(&self, job: &JobId, span: Span) -> Span {
        if span.is_disabled() {
            return span;
        }
        let cx = self
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_job
            .get(job)
            .cloned();
        if let Some(cx) = cx {
            let _ = span.set_parent(cx);
        }
        span
    }
}
