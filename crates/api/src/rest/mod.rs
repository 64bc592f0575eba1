//! The REST gateway: IoT Central's and IoT Hub's jobs APIs over axum, so scripts written for
//! them work by changing the host.
//!
//! * [`central`]: `/api/jobs`, `/api/deviceGroups`, `/api/devices`.
//! * [`hub`]: `/jobs/v2`, `/twins`; [`query`]: `POST /devices/query`.
//! * `GET /healthz` (the process answers) and `GET /readyz` (a leader is known: writes and
//!   linearizable reads can be served).
//! * `GET /metrics`: the node's Prometheus metrics (`cluster.read`), see [`measure`].
//! * `GET /openapi.json`: an OpenAPI 3.0 description of all of the above, built from the same
//!   route table as the router (see [`openapi`]); any valid credential may read it.
//!
//! Every handler is a thin translation: check `api-version`, check the ids in the path, parse
//! the body with the pure mappings in [`crate::central`] / [`crate::hub`], then either propose
//! **one** command (so a request is applied whole or not at all) or read the state after
//! [`Cluster::linearizable`] (a read sees every write acknowledged before it began). Lists page
//! through the state's ordered maps from the token, so a page never copies the whole state.
//!
//! Every error is `{"error": {"code", "message"}}` (see [`errors`]), including axum's own:
//! unknown routes (404), wrong methods (405), bodies over [`MAX_BODY_BYTES`] (413).

mod central;
mod console;
mod errors;
mod extract;
mod guard;
mod hub;
mod measure;
mod methods;
mod openapi;
mod query;
mod tokens;

pub use console::Stop;
pub use errors::refused_request;
pub use guard::RouteAccess;

use std::collections::BTreeMap;
use std::ops::Bound;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::{middleware, Json, Router};
use muster_cluster::Cluster;
use muster_domain::{page_token, Command, CowMap, State as DomainState};
use serde_json::{json, Value};

use crate::access::{Access, Gate};
use crate::error::ApiError;
use crate::json::MAX_BODY_BYTES;
use errors::{cluster_error, Codes};
use extract::Caller;

/// How long a request body may take to arrive.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Every route with its permission; `router` serves exactly these.
fn routes() -> guard::Routes {
    guard::Routes::new()
        .get("/healthz", Access::Open, healthz)
        .get("/readyz", Access::Open, readyz)
        .get(
            "/metrics",
            Access::Need(muster_domain::auth::Permission::ClusterRead),
            measure::metrics,
        )
        .get(
            "/openapi.json",
            Access::Need(muster_domain::auth::Permission::Authenticated),
            openapi::document,
        )
        .merge(central::routes())
        .merge(hub::routes())
        .merge(query::routes())
        .merge(methods::routes())
        .merge(tokens::routes())
        .merge(console::routes())
}

/// The permission table of the REST gateway: each method of each route and what it needs.
pub fn route_table() -> Vec<RouteAccess> {
    routes().into_parts().1
}

/// The REST routes of a node, ready to be served on the REST address. `gate` checks every
/// caller against the route's permission before its handler runs.
pub fn router(cluster: Cluster, gate: Gate) -> Router {
    let app = App {
        cluster: cluster.clone(),
        host: gate.host().to_string(),
    };
    let (routes, _) = routes().into_parts();
    routes
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn(errors::shape_errors))
        // Outside the JSON error mapping, so the status recorded is the one the client sees.
        .layer(middleware::from_fn_with_state(
            cluster.telemetry().clone(),
            measure::measure,
        ))
        // A body over the limit is refused while it is read, before it is buffered.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // A client that announces a body and never sends it does not hold a connection for ever.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            BODY_READ_TIMEOUT,
        ))
        .layer(axum::Extension(gate))
        .with_state(app)
}

/// What every handler needs: the node's cluster handle.
#[derive(Clone, Debug)]
struct App {
    cluster: Cluster,
    /// The host name tokens are made for (`HostName=` / `sr=`).
    host: String,
}

impl App {
    /// Reads the state after confirming this node leads and has applied everything committed
    /// before the call (a linearizable read). `f` runs under the state's read lock: it builds
    /// the answer (a page, one job) and must not copy more than that.
    async fn read<T>(&self, f: impl FnOnce(&DomainState) -> T) -> Result<T, ApiError> {
        self.cluster
            .linearizable()
            .await
            .map_err(|e| cluster_error(e, errors::JOB))?;
        Ok(self.cluster.reader().read(f))
    }

    /// Like [`read`](Self::read), with the cold tier that holds finished runs' device rows.
    async fn read_cold<T>(
        &self,
        f: impl FnOnce(&DomainState, &dyn muster_domain::RunRows) -> T,
    ) -> Result<T, ApiError> {
        self.cluster
            .linearizable()
            .await
            .map_err(|e| cluster_error(e, errors::JOB))?;
        Ok(self.cluster.reader().read_cold(f))
    }

    /// Proposes one command on behalf of `caller`; `Ok` once it is committed and applied on
    /// this node.
    async fn write(&self, caller: &Caller, command: Command, codes: Codes) -> Result<(), ApiError> {
        self.cluster
            .write_as(caller.0.clone(), command)
            .await
            .map(|_| ())
            .map_err(|e| cluster_error(e, codes))
    }

    /// Reads the state right after this node applied a write (no second leadership round-trip:
    /// the write itself proved it).
    fn read_applied<T>(&self, f: impl FnOnce(&DomainState) -> T) -> T {
        self.cluster.reader().read(f)
    }

    /// [`read_applied`](Self::read_applied) with the cold tier.
    fn read_applied_cold<T>(
        &self,
        f: impl FnOnce(&DomainState, &dyn muster_domain::RunRows) -> T,
    ) -> T {
        self.cluster.reader().read_cold(f)
    }
}

/// 200 with a JSON body.
/// Parses an id taken from the URL path with its type's constructor; a bad one is a 400 naming
/// `field` and saying which id of the URL it was, so both shapes word it alike.
fn path_id<T, E: std::fmt::Display>(
    s: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
    field: &str,
    what: &str,
) -> Result<T, ApiError> {
    parse(s).map_err(|e| ApiError::bad_request(field, format!("{e} (the {what} in the URL)")))
}

fn ok_json(v: Value) -> Response {
    Json(v).into_response()
}

/// `GET /healthz`: the process is up and answering. Says nothing about Raft, so a supervisor
/// does not restart a node that is merely waiting for an election.
async fn healthz() -> Response {
    ok_json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when a leader is known (this node or another), so writes and reads can be
/// served; 503 (JSON error) while there is none, e.g. during an election or a partition.
async fn readyz(State(app): State<App>) -> Response {
    // A stopped core keeps its last view of the leader, but answers nothing any more.
    if let Some(why) = app.cluster.core_stopped() {
        tracing::error!("readyz: the Raft core has stopped: {why}");
        return ApiError::new(
            503,
            "NotReady",
            "this node's Raft core has stopped and it cannot serve; it is exiting (restart it, and see its log for why; meanwhile use another member of the cluster)",
        )
        .into_response();
    }
    // Reads would still be served, but every write would answer 507: out of rotation until an
    // operator frees space (healthz stays 200, so a supervisor does not restart it for this).
    if let Err(e) = app.cluster.disk_below_reserve() {
        return ApiError::new(503, "NotReady", e.to_string()).into_response();
    }
    // Credentials are created by the first leader right after it is elected: until this node
    // has applied them it could only answer 401, so it is not ready yet.
    let credentials = app.cluster.reader().read(|s| s.auth.initialized);
    match app.cluster.leader().filter(|_| credentials) {
        Some((id, _)) => ok_json(json!({
            "status": "ready",
            "node": app.cluster.id(),
            "leader": id,
            "isLeader": app.cluster.is_leader(),
        })),
        None => ApiError::new(
            503,
            "NotReady",
            "this node knows no leader yet, or has not yet applied the cluster's credentials (an election is running, or the node is cut off from the cluster); retry shortly",
        )
        .into_response(),
    }
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        404,
        "NotFound",
        format!(
            "no route {method} {}; the routes are /api/jobs, /api/deviceGroups, /api/devices (IoT Central), /jobs/v2, /twins, /devices/query (IoT Hub), /healthz, /readyz and /metrics; GET /openapi.json describes them all",
            crate::json::quote(uri.path()).trim_matches('"')
        ),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        405,
        "MethodNotAllowed",
        format!(
            "{} does not take {method}; the Allow header lists the methods it takes",
            crate::json::quote(uri.path()).trim_matches('"')
        ),
    )
}

/// A map that [`page`] walks in key order: the state's copy-on-write maps and the ordered
/// maps a handler builds for one response.
pub(crate) trait Ordered<K, V> {
    fn after<'a>(&'a self, lower: Bound<&'a K>) -> Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
}

impl<K: Ord, V> Ordered<K, V> for BTreeMap<K, V> {
    fn after<'a>(&'a self, lower: Bound<&'a K>) -> Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a> {
        Box::new(self.range((lower, Bound::Unbounded)))
    }
}

impl<K: Ord, V> Ordered<K, V> for CowMap<K, V> {
    fn after<'a>(&'a self, lower: Bound<&'a K>) -> Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a> {
        Box::new(self.range((lower, Bound::Unbounded)))
    }
}

/// One page of `map` in key order, starting after `after`: up to `size` values that `render`
/// keeps (it returns `None` to skip a filtered-out entry), and the key to continue after when
/// at least one more entry would be kept.
fn page<K, V, T>(
    map: &impl Ordered<K, V>,
    after: Option<&K>,
    size: usize,
    mut render: impl FnMut(&K, &V) -> Option<T>,
) -> (Vec<T>, Option<String>)
where
    K: Ord + std::fmt::Display,
{
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut items = Vec::new();
    let mut last: Option<&K> = None;
    for (k, v) in map.after(lower) {
        if items.len() == size {
            // Only hand out a token when another kept entry exists, so the last page has none.
            if render(k, v).is_some() {
                return (items, last.map(ToString::to_string));
            }
            continue;
        }
        if let Some(t) = render(k, v) {
            items.push(t);
            last = Some(k);
        }
    }
    (items, None)
}

/// [`page`] over a run's devices in id order, hot or cold: the same items and tokens either way.
fn page_rows<T>(
    job: &muster_types::JobId,
    run: &muster_domain::Run,
    cold: &dyn muster_domain::RunRows,
    after: Option<&muster_types::DeviceId>,
    size: usize,
    mut render: impl FnMut(&muster_domain::DeviceRun) -> Option<T>,
) -> Result<(Vec<T>, Option<String>), muster_domain::DomainError> {
    let mut items = Vec::new();
    let mut last: Option<muster_types::DeviceId> = None;
    let mut more = false;
    run.scan_by_id(job, cold, after, &mut |d| {
        let Some(t) = render(&d) else {
            return true;
        };
        if items.len() == size {
            // Only hand out a token when another kept row exists, so the last page has none.
            more = true;
            return false;
        }
        items.push(t);
        last = Some(d.device.clone());
        true
    })?;
    Ok((items, last.filter(|_| more).map(|d| d.to_string())))
}

/// Reads a page token of `listing` ([`muster_domain::page_token`]): the key the previous page
/// ended with, which `parse` reads. A token not issued, or issued for another listing, is a
/// 400 naming `param` that says which.
fn token<K, E>(
    value: Option<&str>,
    param: &str,
    listing: &page_token::Listing,
    parse: impl Fn(&str) -> Result<K, E>,
) -> Result<Option<K>, ApiError> {
    match value.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => {
            let position = page_token::open(listing, s)
                .map_err(|why| ApiError::bad_request(param, why.message()))?;
            parse(&position)
                .map(Some)
                .map_err(|_| ApiError::bad_request(param, page_token::NOT_ISSUED))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_of_another_listing_is_a_400_saying_so() {
        let jobs = |status: &str| {
            page_token::Listing::new("hub GET /jobs/v2/query").with("jobStatus", status)
        };
        let t = page_token::seal(&jobs("running"), "job-3");
        let parse = |s: &str| muster_types::JobId::new(s);
        assert_eq!(
            token(Some(&t), "continuationToken", &jobs("running"), parse).unwrap(),
            Some(muster_types::JobId::new("job-3").unwrap())
        );
        let e = token(Some(&t), "continuationToken", &jobs("failed"), parse).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .starts_with("continuationToken: belongs to another listing"),
            "{e}"
        );
        assert!(
            e.message.contains("start this listing again without it"),
            "{e}"
        );
        let e = token(Some("job-3"), "continuationToken", &jobs("running"), parse).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .contains("is not a page token this service issued"),
            "{e}"
        );
    }

    #[test]
    fn pages_walk_the_map_and_stop_with_no_token() {
        let map: CowMap<u32, u32> = (0..10).map(|i| (i, i * 10)).collect();
        let (items, next) = page(&map, None, 4, |_, v| Some(*v));
        assert_eq!(items, vec![0, 10, 20, 30]);
        assert_eq!(next.as_deref(), Some("3"));
        let (items, next) = page(&map, Some(&3), 4, |_, v| Some(*v));
        assert_eq!(items, vec![40, 50, 60, 70]);
        let (items, next2) = page(&map, Some(&7), 4, |_, v| Some(*v));
        assert_eq!(items, vec![80, 90]);
        assert_eq!(next.as_deref(), Some("7"));
        assert_eq!(next2, None);
        // Exactly full last page: no token.
        let (items, next) = page(&map, Some(&5), 4, |_, v| Some(*v));
        assert_eq!(items.len(), 4);
        assert_eq!(next, None);
    }

    #[test]
    fn filtered_pages_skip_and_need_a_further_match_for_a_token() {
        let map: CowMap<u32, u32> = (0..10).map(|i| (i, i)).collect();
        let even = |_: &u32, v: &u32| v.is_multiple_of(2).then_some(*v);
        let (items, next) = page(&map, None, 2, even);
        assert_eq!(items, vec![0, 2]);
        assert_eq!(next.as_deref(), Some("2"));
        let (items, next) = page(&map, Some(&6), 2, even);
        assert_eq!(items, vec![8]);
        assert_eq!(next, None);
        let (items, next) = page(&map, None, 3, |_, v| (*v < 3).then_some(*v));
        assert_eq!(items, vec![0, 1, 2]);
        assert_eq!(next, None);
    }

    /// A one-node cluster on `dir`, leading.
    #[allow(clippy::unwrap_used)]
    async fn one_node(dir: &std::path::Path) -> Cluster {
        let cluster = Cluster::start(muster_cluster::ClusterConfig::new(
            1,
            dir.to_path_buf(),
            muster_cluster::MusterNode::default(),
        ))
        .await
        .unwrap();
        cluster
            .wait_for_leader(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        cluster
    }

    /// A write records the caller the gate verified: the policy of a SAS token, `anonymous`
    /// on an insecure node; an unauthenticated write is refused and records nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used)]
    async fn writes_record_the_callers_principal() {
        use axum::body::Body;
        use axum::http::Request;
        use muster_cluster::EventLog;
        use muster_domain::Principal;
        use tower::ServiceExt;

        let dir = tempfile::tempdir().unwrap();
        let cluster = one_node(dir.path()).await;
        const KEY: &str = "q83vEjRWeJASNFZ4kKvN7xI0VniQq83vEjRWeJCrze8=";
        cluster
            .write(Command::InitAuth {
                policies: muster_domain::auth::default_policies(|| KEY.into()),
                at: muster_cluster::now(),
            })
            .await
            .unwrap();
        let secure = router(cluster.clone(), Gate::new(cluster.clone(), "muster.test"));
        let insecure = router(cluster.clone(), Gate::insecure());
        let put = |id: &str| {
            Request::put(format!("/api/devices/{id}?api-version=2022-07-31"))
                .body(Body::from(r#"{"displayName": "a device"}"#))
                .unwrap()
        };
        assert_eq!(
            insecure.clone().oneshot(put("d1")).await.unwrap().status(),
            200
        );
        // A caller's own extension does not count: the gate decides who it is.
        let mut req = put("d3");
        req.extensions_mut().insert(Principal::System);
        assert_eq!(secure.clone().oneshot(req).await.unwrap().status(), 401);
        let token =
            muster_domain::auth::sign("muster.test", KEY, "registryReadWrite", i64::MAX / 1000)
                .unwrap();
        let mut req = put("d2");
        req.headers_mut()
            .insert("authorization", token.parse().unwrap());
        assert_eq!(secure.clone().oneshot(req).await.unwrap().status(), 200);
        let who = Principal::Policy("registryReadWrite".into());

        let records = cluster.reader().read_records(1, usize::MAX).unwrap();
        let of = |device: &str| {
            records
                .iter()
                .find(|r| r.event.device().is_some_and(|d| d.as_str() == device))
                .map(|r| r.principal.clone())
        };
        assert_eq!(of("d1"), Some(Principal::Anonymous));
        assert_eq!(of("d2"), Some(who));
        assert_eq!(of("d3"), None);
        cluster.shutdown().await;
    }

    /// Issue 18: a node whose Raft core stopped is not ready, and its writes answer 503 with
    /// "use another member" (not a 500, not the cause).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::unwrap_used)]
    async fn a_stopped_core_is_not_ready_and_answers_503() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;

        let dir = tempfile::tempdir().unwrap();
        let cluster = one_node(dir.path()).await;
        let app = router(cluster.clone(), Gate::insecure());
        let put = || {
            Request::put("/api/devices/d1?api-version=2022-07-31")
                .body(Body::from(r#"{"displayName": "a device"}"#))
                .unwrap()
        };
        assert_eq!(app.clone().oneshot(put()).await.unwrap().status(), 200);

        cluster.raft().shutdown().await.unwrap();
        let body = |r: Response| async move {
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let ready = app
            .clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        assert!(body(ready).await.contains("Raft core has stopped"));
        let write = app.clone().oneshot(put()).await.unwrap();
        assert_eq!(write.status(), 503);
        let text = body(write).await;
        assert!(text.contains("another member"), "{text}");
    }
}
