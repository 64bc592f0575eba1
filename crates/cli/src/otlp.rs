//! `--otlp-endpoint`: spans exported over OTLP/HTTP (protobuf) to a collector.
//!
//! Only spans of the target `muster_trace` are exported (see `muster_cluster::trace`); the log
//! output never shows them. The batch span processor runs on its own thread and sends with
//! reqwest's blocking client (a small [`HttpClient`] here), so exporting never runs on, or
//! waits for, the node's runtime, and the build keeps one reqwest and one tonic.
//! The `OTEL_BSP_*` environment variables (batch size, delay) apply as the SDK documents them.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The traces URL for an endpoint given as the collector's base (`http://HOST:4318`) or as the
/// full traces URL (`.../v1/traces`).
pub(crate) fn traces_url(endpoint: &str) -> anyhow::Result<String> {
    let e = endpoint.trim();
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        anyhow::bail!(
            "--otlp-endpoint: `{e}` is not an http:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)"
        );
    }
    if e.starts_with("https://") {
        anyhow::bail!(
            "--otlp-endpoint: https is not supported; send to a collector on the same host or network over http://"
        );
    }
    Ok(if e.trim_end_matches('/').ends_with("/v1/traces") {
        e.trim_end_matches('/').to_string()
    } else {
        format!("{}/v1/traces", e.trim_end_matches('/'))
    })
}

/// A tracer provider exporting to `endpoint`, its spans naming this node.
pub(crate) fn provider(endpoint: &str, node_id: u64) -> anyhow::Result<SdkTracerProvider> {
    let url = traces_url(endpoint)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Blocking::new()?)
        .with_endpoint(url)
        .with_timeout(std::time::Duration::from_secs(10))
        .build()
        .context("--otlp-endpoint: cannot build the span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("muster")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node_id.to_string(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The `tracing` layer that hands `muster_trace` spans to `provider`.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("muster"))
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("muster_trace", tracing::Level::TRACE),
        )
}

/// reqwest's blocking client as the exporter's HTTP client. The batch processor calls it from
/// its own thread (outside any async runtime), where blocking is what it expects.
#[derive(Debug)]
struct Blocking(reqwest::blocking::Client);

impl Blocking {
    fn new() -> anyhow::Result<Blocking> {
        // Built on a plain thread: the blocking client starts a runtime of its own, which must
        // not happen inside the node's.
        std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the OTLP client could not be built"))?
        .context("the OTLP client could not be built")
        .map(Blocking)
    }
}

#[tonic::async_trait]
impl HttpClient for Blocking {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let answer = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let status = answer.status();
        let headers = answer.headers().clone();
        let body = answer.bytes()?;
        let mut response = Response::builder().status(status).body(body)?;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::traces_url;

    #[test]
    fn endpoints_become_the_traces_url() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap(),
            "http://c:4318/v1/traces"
        );
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("https://c:4318").is_err());
    }
}
