//! The web console's routes: its static files under `/ui` (open: they hold no data), and the
//! muster extensions the page reads with the caller's credential.
//!
//! * `GET /api/me`: who the credential is and what it may do, so the page hides or disables
//!   what the caller's role may not do (every route still checks for itself).
//! * `GET /api/jobs/{id}/watch`: the job's progress as server-sent events (`text/event-stream`),
//!   fed by [`crate::watch::follow`], the loop behind gRPC `WatchJob`.
//! * `GET /api/cluster`: the members, their state and the leader, as `ClusterService.Status`.
//!
//! All three take `api-version` like the IoT Central routes beside them.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use muster_domain::auth::Permission;
use muster_proto::pb;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::central::version;
use super::extract::{Params, PathParams};
use super::guard::{denied, Routes};
use super::{ok_json, path_id, App};
use crate::access::Access::{Need, Open};
use crate::access::Gate;
use crate::console;
use crate::error::ApiError;
use crate::watch::{self, WatchEnd};

/// How often the event stream sends at most one snapshot: a 100,000-device job applies
/// results many times a second, and a browser redrawing each would fall behind. The newest
/// snapshot always wins; the final one is always sent.
const SNAPSHOT_INTERVAL: Duration = Duration::from_millis(250);

/// A comment line after this much silence, so proxies and browsers keep the stream open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Ends open event streams when the node shuts down (the node adds it as a router extension),
/// so a graceful shutdown does not wait for watchers.
#[derive(Debug, Clone)]
pub struct Stop(pub tokio::sync::watch::Receiver<bool>);

pub(super) fn routes() -> Routes {
    use Permission::*;
    Routes::new()
        .get("/ui", Open, index)
        .get("/ui/", Open, index)
        .get("/ui/{file}", Open, asset)
        .get("/api/me", Need(Authenticated), me)
        .get("/api/cluster", Need(ClusterRead), cluster_status)
        .get("/api/jobs/{id}/watch", Need(JobsRead), watch_job)
}

async fn index() -> Response {
    asset(PathParams("index.html".to_string())).await
}

/// One of the console's files, compiled into the binary. `no-cache`: a browser revalidates
/// them, so a new build's page is never mixed with an old script.
async fn asset(PathParams(file): PathParams<String>) -> Response {
    match console::asset(&file) {
        Some((content_type, body)) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'",
                ),
            ],
            body,
        )
            .into_response(),
        None => ApiError::new(
            404,
            "NotFound",
            format!(
                "the console has no file {}; open /ui",
                crate::json::quote(&file)
            ),
        )
        .into_response(),
    }
}

/// `GET /api/me`: the caller's principal and permissions.
async fn me(
    Extension(gate): Extension<Gate>,
    identity: Option<Extension<muster_tls::ClientIdentity>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let header = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let subject = identity.as_ref().map(|Extension(c)| c.subject.as_str());
    match gate.whoami(header, subject) {
        Ok((principal, grants)) => Ok(ok_json(json!({
            "principal": principal.to_string(),
            "permissions": grants
                .iter()
                .map(Permission::name)
                .collect::<Vec<_>>(),
        }))),
        Err(d) => Ok(denied(d)),
    }
}

/// `GET /api/cluster`: the members as the node asked sees them (an unreachable one shows as
/// such), and the leader.
async fn cluster_status(State(app): State<App>, q: Params) -> Result<Response, ApiError> {
    version(&q)?;
    let s = app.cluster.status().await;
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "role": m.role.as_str(),
                "state": m.state,
                "reachable": m.reachable,
                "isLeader": s.leader == Some(m.id),
                "httpAddr": m.node.http_addr,
                "grpcAddr": m.node.grpc_addr,
                "peerAddr": m.node.peer_addr,
                "lastLogIndex": m.last_log_index,
                "lastApplied": m.last_applied,
                "lag": m.lag,
            })
        })
        .collect();
    Ok(ok_json(json!({
        "answeredBy": s.answered_by,
        "leader": s.leader,
        "term": s.term,
        "members": members,
    })))
}

/// `GET /api/jobs/{id}/watch`: `text/event-stream` of `progress` events (the JSON of
/// [`watch::progress_json`], `id:` the seq it reflects), at most one per
/// [`SNAPSHOT_INTERVAL`], ending after the final status. A failure mid-stream is an `error`
/// event with the usual `{"error": {"code", "message"}}` body.
async fn watch_job(
    State(app): State<App>,
    stop: Option<Extension<Stop>>,
    PathParams(id): PathParams<String>,
    q: Params,
) -> Result<Response, ApiError> {
    version(&q)?;
    let id = path_id(&id, |s: &str| muster_types::JobId::new(s), "id", "job id")?;
    app.read(|_| ()).await?;
    let rx = watch::follow(app.cluster.reader().clone(), id.clone()).map_err(|_| {
        ApiError::new(
            404,
            "JobNotFound",
            format!(
                "job {id} does not exist; check the id in the URL (GET /api/jobs lists the jobs)"
            ),
        )
    })?;
    let (tx, body) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    let stop = stop.map(|Extension(s)| s.0);
    tokio::spawn(pump(rx, tx, stop));
    let mut resp = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(body),
    ));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-like proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Resolves once the node is stopping (never without a stop signal).
async fn stopped(stop: &Option<tokio::sync::watch::Receiver<bool>>) {
    match stop.clone() {
        Some(mut s) => {
            let _ = s.wait_for(|v| *v).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// One server-sent event.
fn frame(event: &str, id: Option<u64>, data: &Value) -> Bytes {
    let mut s = String::new();
    if let Some(id) = id {
        s.push_str(&format!("id: {id}\n"));
    }
    s.push_str(&format!("event: {event}\ndata: {data}\n\n"));
    Bytes::from(s)
}

/// Moves snapshots from the watch to the HTTP body: coalesces to the newest one per interval,
/// keeps the connection alive, and stops at the final status, an error, the client leaving or
/// the node stopping.
async fn pump(
    mut rx: mpsc::Receiver<Result<pb::JobProgress, WatchEnd>>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) {
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = tokio::time::sleep(SNAPSHOT_INTERVAL) => {}
                () = stopped(&stop) => break,
                () = tx.closed() => return,
            }
        }
        first = false;
        let next = tokio::select! {
            m = tokio::time::timeout(KEEP_ALIVE, rx.recv()) => m,
            () = stopped(&stop) => break,
            () = tx.closed() => return,
        };
        let mut latest = match next {
            Err(_) => {
                if tx
                    .send(Ok(Bytes::from_static(b": keep-alive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Ok(None) => return,
            Ok(Some(m)) => m,
        };
        // Skip to the newest snapshot already waiting.
        while let Ok(m) = rx.try_recv() {
            latest = m;
            if latest.is_err() {
                break;
            }
        }
        let (bytes, done) = match latest {
            Ok(p) => (
                frame("progress", Some(p.seq), &watch::progress_json(&p)),
                watch::is_final(&p),
            ),
            Err(end) => {
                let code = match end {
                    WatchEnd::NotFound(_) => "JobNotFound",
                    WatchEnd::ShuttingDown => "ServiceUnavailable",
                };
                (
                    frame(
                        "error",
                        None,
                        &json!({"error": {"code": code, "message": end.message()}}),
                    ),
                    true,
                )
            }
        };
        if tx.send(Ok(bytes)).await.is_err() || done {
            return;
        }
    }
    let end = WatchEnd::ShuttingDown;
    let _ = tx
        .send(Ok(frame(
            "error",
            None,
            &json!({"error": {"code": "ServiceUnavailable", "message": end.message()}}),
        )))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_server_sent_events() {
        let f = frame("progress", Some(12), &json!({"a": 1}));
        assert_eq!(&f[..], b"id: 12\nevent: progress\ndata: {\"a\":1}\n\n");
    }
}
