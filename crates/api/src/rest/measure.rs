//! `GET /metrics` and the measurement of every REST request: its metrics, and the span a trace
//! of it starts with (when traces are exported, see `muster_cluster::trace`).
//!
//! Requests are counted by route template (axum's [`MatchedPath`], `unmatched` for a path no
//! route takes), method and status, so the labels stay bounded whatever paths clients send.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use muster_cluster::trace::TARGET;
use muster_metrics::Metrics;
use tracing::Instrument;

use super::App;

/// `GET /metrics`: Prometheus' text format, with the state gauges read now.
pub(super) async fn metrics(State(app): State<App>) -> Response {
    app.cluster.refresh_metrics().await;
    (
        [(header::CONTENT_TYPE, muster_metrics::CONTENT_TYPE)],
        app.cluster.telemetry().encode(),
    )
        .into_response()
}

/// Records the request's route, method, status and time to the response head.
pub(super) async fn measure(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = Instant::now();
    let span = tracing::info_span!(
        target: TARGET,
        "rest.request",
        otel.name = %format!("{method} {}", route.as_deref().unwrap_or("unmatched")),
        otel.kind = "server",
        http.request.method = method,
        http.route = route.as_deref().unwrap_or("unmatched"),
        http.response.status_code = tracing::field::Empty,
    );
    muster_cluster::trace::continue_from_headers(&span, req.headers());
    let res = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    metrics.api().http(
        route.as_deref().unwrap_or("unmatched"),
        method,
        res.status().as_u16(),
        started.elapsed(),
    );
    res
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
