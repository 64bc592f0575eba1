//! Request counts and latencies of the client gRPC port, by method path and status code.
//!
//! The outermost layer of the client gRPC server, so calls refused by the gate count too.
//! Labels stay bounded: a path that is not in [`GRPC_ACCESS`](crate::access::GRPC_ACCESS) is
//! recorded as `unknown`, and a `grpc-status` that is not one of the 17 codes as `other`.

use std::time::Instant;

use axum::http::{Request, Response};
use muster_metrics::Metrics;

/// A tower layer recording every call into the node's [`Metrics`].
#[derive(Debug, Clone)]
pub struct MeasureLayer(pub Metrics);

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measure<S>;

    fn layer(&self, inner: S) -> Measure<S> {
        Measure {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`MeasureLayer`].
#[derive(Debug, Clone)]
pub struct Measure<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<Request<B>> for Measure<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let span = tracing::info_span!(
            target: muster_cluster::trace::TARGET,
            "grpc.request",
            otel.name = method,
            otel.kind = "server",
            rpc.method = method,
        );
        muster_cluster::trace::continue_from_headers(&span, req.headers());
        let answer = span.in_scope(|| self.inner.call(req));
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = tracing::Instrument::instrument(answer, span).await;
            let code = match &res {
                // An error answered at once travels in the headers ("trailers only"); a
                // successful call's status comes in the trailers, after the body.
                Ok(r) => code_label(r.headers().get("grpc-status").map(|v| v.as_bytes())),
                Err(_) => "transport",
            };
            metrics.api().grpc(method, code, started.elapsed());
            res
        })
    }
}

/// The method path if the client port serves it, else `unknown`.
fn method_label(path: &str) -> &'static str {
    crate::access::GRPC_ACCESS
        .iter()
        .find(|(p, _)| *p == path)
        .map_or("unknown", |(p, _)| p)
}

fn code_label(status: Option<&[u8]>) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match status {
        None => "0",
        Some(s) => std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .and_then(|n| CODES.get(n).copied())
            .unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_stay_within_the_known_sets() {
        assert_eq!(
            method_label("/muster.v1.JobService/CreateJob"),
            "/muster.v1.JobService/CreateJob"
        );
        assert_eq!(method_label("/x.Y/anything-an-attacker-sends"), "unknown");
        assert_eq!(code_label(None), "0");
        assert_eq!(code_label(Some(b"16")), "16");
        assert_eq!(code_label(Some(b"99")), "other");
        assert_eq!(code_label(Some(b"\xff")), "other");
    }
}
