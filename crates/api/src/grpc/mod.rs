//! The gRPC API: `muster.v1.JobService`, `DeviceService` and `GroupService`
//! (`proto/muster/v1/jobs.proto`, `devices.proto`), with tonic health and reflection so that
//! `grpcurl` and health probes work against any node.
//!
//! Every handler follows the same shape: check the request (ids through their constructors, JSON
//! text parsed, enums known), turn it into a domain `Command` stamped with this node's clock and
//! write it through the cluster, or, for a read, ask the cluster for a read index first (unless
//! the caller set `stale_ok`) and answer from the replicated state. Nothing here panics on any
//! input; every refusal is a `Status` whose message says what to fix.

mod auth;
mod cluster;
pub(crate) mod convert;
mod devices;
mod events;
mod jobs;
mod measure;

pub use measure::{Measure, MeasureLayer};
mod query;
mod schedules;

use std::ops::Bound;

use muster_cluster::{Cluster, ClusterError, ErrorKind};
use muster_domain::page_token::{self, Listing};
use muster_domain::Principal;
use tonic::Status;

pub use auth::AuthApi;
pub use cluster::ClusterApi;
pub use devices::{DeviceApi, GroupApi};
pub use events::EventApi;
pub use jobs::JobApi;
pub use schedules::ScheduleApi;

use muster_proto::pb;

/// Largest request a client may send: big enough for an import of ~100k devices or a job listing
/// that many device ids, small enough that one request cannot exhaust memory.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// Puts the [`ClientIdentity`](muster_tls::ClientIdentity) of a caller that presented a
/// verified client certificate (TLS with `--tls-client-ca`) into the request's extensions, where
/// every handler finds it: `request.extensions().get::<muster_api::ClientIdentity>()`. The node
/// serves the client gRPC API behind it (`tower::util::MapRequestLayer::new(identify)`); a
/// request without TLS or without a client certificate passes unchanged.
pub fn identify<B>(mut req: tonic::codegen::http::Request<B>) -> tonic::codegen::http::Request<B> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let identity = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|chain| muster_tls::ClientIdentity::from_chain(&chain));
    match identity {
        Some(id) => {
            req.extensions_mut().insert(id);
        }
        None => {
            // Never trust one that came from anywhere else.
            req.extensions_mut().remove::<muster_tls::ClientIdentity>();
        }
    }
    req
}

/// A request message that does not decode is the caller's error: tonic answers it `INTERNAL`
/// ("failed to decode Protobuf message"), which tells a client to retry or report a server bug.
/// This map on the client gRPC server's responses makes it `INVALID_ARGUMENT` (issue 18). Such
/// an answer is always trailers-only (the handler never ran), so the status is in the headers.
pub fn decode_errors_are_invalid_argument<B>(
    mut resp: tonic::codegen::http::Response<B>,
) -> tonic::codegen::http::Response<B> {
    let h = resp.headers();
    let internal = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13");
    let undecodable = h.get("grpc-message").is_some_and(|v| {
        let m = v.as_bytes();
        m.starts_with(b"failed%20to%20decode%20Protobuf%20message")
            || m.starts_with(b"failed to decode Protobuf message")
    });
    if internal && undecodable {
        resp.headers_mut().insert(
            "grpc-status",
            tonic::codegen::http::HeaderValue::from_static("3"),
        );
    }
    resp
}

/// The services on the client gRPC address, as reflection lists them.
pub(crate) const CLIENT_SERVICES: &[&str] = &[
    "muster.v1.JobService",
    "muster.v1.DeviceService",
    "muster.v1.GroupService",
    "muster.v1.EventService",
    "muster.v1.ClusterService",
    "muster.v1.AuthService",
    "muster.v1.ScheduleService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
];

/// Every gRPC service of a node, ready to be served on the client gRPC address. `stop` turning
/// true ends the streams that never end by themselves (event subscriptions), so a graceful
/// shutdown does not wait for their clients.
pub fn routes(
    cluster: Cluster,
    gate: crate::access::Gate,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tonic::service::Routes {
    let events = EventApi::new(cluster.clone()).with_shutdown(stop);
    let cluster_api = ClusterApi::new(cluster.clone());
    let (reporter, health) = tonic_health::server::health_reporter();
    // The reporter's setters are async only because they take a lock; when no runtime is
    // running (never the case in `muster serve`) the services stay UNKNOWN instead of failing.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            reporter
                .set_serving::<pb::job_service_server::JobServiceServer<JobApi>>()
                .await;
            reporter
                .set_serving::<pb::device_service_server::DeviceServiceServer<DeviceApi>>()
                .await;
            reporter
                .set_serving::<pb::group_service_server::GroupServiceServer<GroupApi>>()
                .await;
            reporter
                .set_serving::<pb::event_service_server::EventServiceServer<EventApi>>()
                .await;
            reporter
                .set_serving::<pb::cluster_service_server::ClusterServiceServer<ClusterApi>>()
                .await;
            reporter
                .set_serving::<pb::auth_service_server::AuthServiceServer<AuthApi>>()
                .await;
            reporter
                .set_serving::<pb::schedule_service_server::ScheduleServiceServer<ScheduleApi>>()
                .await;
        });
    }
    let mut routes = tonic::service::Routes::new(health)
        .add_service(
            pb::job_service_server::JobServiceServer::new(JobApi::new(cluster.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::device_service_server::DeviceServiceServer::new(DeviceApi::new(cluster.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(pb::group_service_server::GroupServiceServer::new(
            GroupApi::new(cluster.clone()),
        ));
    routes = routes.add_service(pb::event_service_server::EventServiceServer::new(events));
    routes = routes.add_service(pb::cluster_service_server::ClusterServiceServer::new(
        cluster_api,
    ));
    routes = routes.add_service(
        pb::schedule_service_server::ScheduleServiceServer::new(ScheduleApi::new(cluster.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    );
    routes = routes.add_service(pb::auth_service_server::AuthServiceServer::new(
        AuthApi::new(cluster.clone(), gate),
    ));
    // Reflection lists the services served here, not the peer-only RaftService that shares the
    // descriptor set.
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(muster_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for name in CLIENT_SERVICES {
        reflection = reflection.with_service_name(*name);
    }
    match reflection.build_v1() {
        Ok(reflection) => routes = routes.add_service(reflection),
        // Only a descriptor set that does not decode gets here, and it is compiled in: serve the
        // API without reflection rather than not at all.
        Err(e) => tracing::error!("gRPC reflection is off: {e}"),
    }
    routes
}

/// Who a request is from: the [`Principal`] the authentication layer put into the request's
/// extensions, or [`Principal::Anonymous`] when there is none (no authentication in front).
/// The only place the gRPC edge looks the caller up; every handler that writes a command
/// writes it with `Cluster::write_as(caller(&request), ...)`.
pub(crate) fn caller<T>(request: &tonic::Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or(Principal::Anonymous)
}

/// The gRPC status for a failed write or read index.
///
/// Rejections carry the domain's message, which names the field and says what to change. Storage
/// and Raft failures are logged here and answered with a generic text: their details are about
/// the server, not about the request.
pub(crate) fn cluster_status(e: ClusterError) -> Status {
    match e {
        ClusterError::Rejected(c) => match c.kind {
            ErrorKind::Invalid | ErrorKind::TooLarge => Status::invalid_argument(c.message),
            ErrorKind::NotFound => Status::not_found(c.message),
            ErrorKind::AlreadyExists => Status::already_exists(c.message),
            ErrorKind::Conflict => Status::failed_precondition(c.message),
            // A failed test-and-set: the client should read again and retry (gRPC's guidance
            // for ABORTED), which FAILED_PRECONDITION would tell it not to do.
            ErrorKind::VersionMismatch => Status::aborted(c.message),
        },
        e @ (ClusterError::NotLeader { .. } | ClusterError::Unavailable(_)) => {
            Status::unavailable(e.to_string())
        }
        ClusterError::Membership(message) => Status::failed_precondition(message),
        e @ ClusterError::DiskFull { .. } => {
            tracing::warn!("write refused: {e}");
            Status::resource_exhausted(e.to_string())
        }
        // A stopped core never serves again (the node exits for its supervisor): the caller
        // should go to another member, which is what UNAVAILABLE tells a client.
        ClusterError::Fatal(detail) => {
            tracing::error!("gRPC request not served: the Raft core has stopped: {detail}");
            Status::unavailable(crate::NODE_STOPPED)
        }
        e @ ClusterError::Store(_) => {
            tracing::error!("gRPC request failed: {e}");
            Status::internal("internal error on the server; the server log has the details")
        }
    }
}

/// Waits for a read index unless the caller accepts a possibly stale answer, so that a read sees
/// every write acknowledged before it was sent, whichever node answers it.
pub(crate) async fn read_barrier(cluster: &Cluster, stale_ok: bool) -> Result<(), Status> {
    if stale_ok {
        return Ok(());
    }
    cluster.linearizable().await.map_err(cluster_status)
}

/// Items per page: 0 means the default.
pub(crate) fn page_size(requested: u32) -> usize {
    const DEFAULT: usize = 100;
    const MAX: usize = 1000;
    match requested {
        0 => DEFAULT,
        n => (n as usize).min(MAX),
    }
}

/// Where a page over an id-ordered map starts: after the id in the token.
pub(crate) fn after<T>(token: Option<T>) -> (Bound<T>, Bound<T>) {
    match token {
        Some(t) => (Bound::Excluded(t), Bound::Unbounded),
        None => (Bound::Unbounded, Bound::Unbounded),
    }
}

/// Reads a page token of `listing` ([`muster_domain::page_token`]) holding the last id of the
/// previous page; empty is the first page. A token of another listing (another list, filter,
/// job, query) is INVALID_ARGUMENT saying so.
pub(crate) fn id_token<T>(listing: &Listing, token: &str) -> Result<Option<T>, Status>
where
    T: TryFrom<String>,
{
    if token.is_empty() {
        return Ok(None);
    }
    let position = page_token::open(listing, token).map_err(refused_token)?;
    T::try_from(position).map(Some).map_err(|_| bad_token())
}

/// The `next_page_token` of a page of `listing` that ended at `last`: empty unless `more`.
pub(crate) fn next_token(listing: &Listing, more: bool, last: Option<&str>) -> String {
    match (more, last) {
        (true, Some(last)) => page_token::seal(listing, last),
        _ => String::new(),
    }
}

pub(crate) fn bad_token() -> Status {
    refused_token(page_token::Refused::NotIssued)
}

fn refused_token(why: page_token::Refused) -> Status {
    Status::invalid_argument(format!("page_token: {}", why.message()))
}

/// Repeated enum values of a list filter, as a listing option.
pub(crate) fn listed(values: &[i32]) -> String {
    values
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A validated id from a request field, or INVALID_ARGUMENT naming the field.
pub(crate) fn parse_id<T>(field: &str, value: &str) -> Result<T, Status>
where
    T: TryFrom<String, Error = muster_types::IdError>,
{
    T::try_from(value.to_string()).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// JSON text from a `_json` field, or INVALID_ARGUMENT naming the field.
pub(crate) fn parse_json(field: &str, text: &str) -> Result<serde_json::Value, Status> {
    let value = serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("{field}: not valid JSON text: {e}")))?;
    match crate::json::duplicate_key(text) {
        Some(path) => Err(Status::invalid_argument(format!(
            "{field}: {path} appears more than once in the same object; give each field once"
        ))),
        None => Ok(value),
    }
}

/// Takes up to `size` items and says whether more follow, so `next_page_token` is empty exactly
/// on the last page.
pub(crate) fn take_page<I: Iterator>(iter: I, size: usize) -> (Vec<I::Item>, bool) {
    let mut iter = iter.peekable();
    let page: Vec<_> = iter.by_ref().take(size).collect();
    let more = iter.peek().is_some();
    (page, more)
}

#[cfg(test)]
mod caller_tests {
    use super::*;

    #[test]
    fn a_page_token_of_another_listing_is_invalid_argument_saying_so() {
        let devices =
            |job: &str| Listing::new("grpc JobService.ListJobDevices").with("job_id", job);
        let t = next_token(&devices("j1"), true, Some("40"));
        assert_eq!(
            id_token::<String>(&devices("j1"), &t).unwrap().as_deref(),
            Some("40")
        );
        let e = id_token::<String>(&devices("j2"), &t).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .starts_with("page_token: belongs to another listing"),
            "{e:?}"
        );
        let e = id_token::<String>(&devices("j1"), "40").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message()
                .contains("is not a page token this service issued"),
            "{e:?}"
        );
        assert_eq!(next_token(&devices("j1"), false, Some("40")), "");
    }

    #[test]
    fn the_caller_is_the_extensions_principal_or_anonymous() {
        let mut request = tonic::Request::new(());
        assert_eq!(caller(&request), Principal::Anonymous);
        request
            .extensions_mut()
            .insert(Principal::Policy("iothubowner".into()));
        assert_eq!(caller(&request), Principal::Policy("iothubowner".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18: a stopped Raft core is `UNAVAILABLE` (a client retries on another member),
    /// not `INTERNAL`, and its cause stays in the log.
    #[test]
    fn a_stopped_core_is_unavailable_without_its_cause() {
        let s = cluster_status(ClusterError::Fatal(
            "storage error: sled: No space left on device".into(),
        ));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("another member"), "{}", s.message());
        assert!(!s.message().contains("sled"), "{}", s.message());
    }
}
