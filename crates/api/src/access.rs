//! The one authentication check in front of every REST route and gRPC method.
//!
//! [`Gate::check`] reads the caller's `Authorization` value, verifies it against the credentials
//! in the replicated state (through `muster_domain::auth`, where the rules live) and answers
//! with the caller's [`Principal`] or why it is refused. Each route and method names the one
//! [`Permission`] it needs: REST in its route declaration (`rest::Routes`), gRPC in
//! [`GRPC_ACCESS`]. A method missing from the table is refused (fail closed), and a test walks
//! both tables.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use muster_cluster::Cluster;
use muster_domain::auth::{authenticate, AuthFailure, Authenticated, Grants, Permission, Role};
use muster_domain::Principal;

/// What a route or method needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credential: liveness and readiness probes only.
    Open,
    /// A valid credential that grants this permission.
    Need(Permission),
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credential, or one that is malformed, expired, unknown or wrongly signed: the answer
    /// is the same for all of them, so a caller learns nothing about which names exist.
    Unauthenticated,
    /// A valid credential without the permission.
    Forbidden(Permission),
}

impl Denied {
    pub fn message(self) -> String {
        match self {
            Denied::Unauthenticated => "a valid credential is required: send `Authorization: SharedAccessSignature sr=...&sig=...&se=...&skn=...` (an IoT Hub SAS token or an API token; `muster serve` wrote an administrator's connection string to DATA_DIR/admin.credential)".into(),
            Denied::Forbidden(p) => format!(
                "this credential lacks the permission {p}; ask an administrator for a role or policy that grants it"
            ),
        }
    }
}

/// Verified credentials kept until they expire or the credentials change, so a busy client is
/// not verified again on every call.
const CACHE_ENTRIES: usize = 4096;

/// The authentication check of one node.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Option<Cluster>,
    /// This service's host name as clients address it (SAS tokens are signed for it).
    host: String,
    /// `--insecure`: every caller is `anonymous` with every permission.
    insecure: bool,
    cache: Mutex<HashMap<String, (Authenticated, u64)>>,
    /// The role of a caller identified by a verified client certificate alone (`--tls-client-role`).
    certificate_role: Option<Role>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("host", &self.inner.host)
            .field("insecure", &self.inner.insecure)
            .finish_non_exhaustive()
    }
}

impl Gate {
    /// Checks credentials against `cluster`'s state; SAS tokens must be signed for `host`.
    pub fn new(cluster: Cluster, host: impl Into<String>) -> Gate {
        Gate::build(Some(cluster), host.into(), false)
    }

    /// Lets every caller in as `anonymous` (`muster serve --insecure`).
    pub fn insecure() -> Gate {
        Gate::build(None, String::new(), true)
    }

    fn build(cluster: Option<Cluster>, host: String, insecure: bool) -> Gate {
        Gate {
            inner: Arc::new(Inner {
                cluster,
                host,
                insecure,
                cache: Mutex::new(HashMap::new()),
                certificate_role: None,
            }),
        }
    }

    /// Lets a caller without an `Authorization` header in on a verified client certificate,
    /// as `cert:SUBJECT` with `role`'s permissions. Call before the gate is shared.
    #[must_use]
    pub fn with_certificate_role(mut self, role: Role) -> Gate {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.certificate_role = Some(role);
        }
        self
    }

    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// Who the caller is, if `access` lets them in. `None` for open routes. `certificate` is the
    /// subject of the client certificate the TLS handshake verified, if any: it counts only
    /// without an `Authorization` header and with a certificate role configured.
    pub fn check(
        &self,
        header: Option<&[u8]>,
        certificate: Option<&str>,
        access: Access,
    ) -> Result<Option<Principal>, Denied> {
        let Access::Need(need) = access else {
            return Ok(None);
        };
        let Some(cluster) = self.inner.cluster.as_ref().filter(|_| !self.inner.insecure) else {
            return Ok(Some(Principal::Anonymous));
        };
        if let (None, Some(subject), Some(role)) =
            (header, certificate, self.inner.certificate_role)
        {
            return if role.grants().allows(need) {
                Ok(Some(Principal::Certificate(subject.to_string())))
            } else {
                Err(Denied::Forbidden(need))
            };
        }
        let header = header
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or(Denied::Unauthenticated)?;
        let now = now_ms();
        let caller = self.verify(cluster, header, now).map_err(|e| {
            // The kind of failure, never the credential: the log must not hold a secret.
            tracing::debug!("refused a credential: {e}");
            Denied::Unauthenticated
        })?;
        if caller.grants.allows(need) {
            Ok(Some(caller.principal))
        } else {
            Err(Denied::Forbidden(need))
        }
    }

    /// Who the caller is and everything its credential grants, for `GET /api/me` (the console
    /// hides what the caller may not do; every route still checks for itself).
    pub fn whoami(
        &self,
        header: Option<&[u8]>,
        certificate: Option<&str>,
    ) -> Result<(Principal, Grants), Denied> {
        let Some(cluster) = self.inner.cluster.as_ref().filter(|_| !self.inner.insecure) else {
            return Ok((Principal::Anonymous, Grants::all()));
        };
        if let (None, Some(subject), Some(role)) =
            (header, certificate, self.inner.certificate_role)
        {
            return Ok((Principal::Certificate(subject.to_string()), role.grants()));
        }
        let header = header
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or(Denied::Unauthenticated)?;
        let caller = self
            .verify(cluster, header, now_ms())
            .map_err(|_| Denied::Unauthenticated)?;
        Ok((caller.principal, caller.grants))
    }

    fn verify(
        &self,
        cluster: &Cluster,
        header: &str,
        now: i64,
    ) -> Result<Authenticated, AuthFailure> {
        if header.len() > muster_domain::auth::MAX_TOKEN_BYTES {
            return Err(AuthFailure::Malformed("too long"));
        }
        let version = cluster.reader().read(|s| s.auth.version);
        if let Ok(cache) = self.inner.cache.lock() {
            if let Some((a, v)) = cache.get(header) {
                if *v == version && a.expires_at_ms > now {
                    return Ok(a.clone());
                }
            }
        }
        let mut hosts = cluster.member_addresses();
        hosts.push(self.inner.host.clone());
        let (verified, version) = cluster
            .reader()
            .read(|s| (authenticate(&s.auth, header, &hosts, now), s.auth.version));
        let verified = verified?;
        if let Ok(mut cache) = self.inner.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(header.to_string(), (verified.clone(), version));
        }
        Ok(verified)
    }
}

fn now_ms() -> i64 {
    muster_cluster::now().millis()
}

/// The permission of every gRPC method on the client port, by its path. Health checks are open;
/// reflection needs any valid credential.
pub const GRPC_ACCESS: &[(&str, Access)] = {
    use Access::{Need, Open};
    use Permission::*;
    &[
        ("/grpc.health.v1.Health/Check", Open),
        ("/grpc.health.v1.Health/Watch", Open),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Need(Authenticated),
        ),
        ("/muster.v1.JobService/CreateJob", Need(JobsWrite)),
        ("/muster.v1.JobService/GetJob", Need(JobsRead)),
        ("/muster.v1.JobService/ListJobs", Need(JobsRead)),
        ("/muster.v1.JobService/StopJob", Need(JobsWrite)),
        ("/muster.v1.JobService/ResumeJob", Need(JobsWrite)),
        ("/muster.v1.JobService/ContinueJob", Need(JobsWrite)),
        ("/muster.v1.JobService/CancelJob", Need(JobsWrite)),
        ("/muster.v1.JobService/RerunJob", Need(JobsWrite)),
        ("/muster.v1.JobService/ListJobDevices", Need(JobsRead)),
        ("/muster.v1.JobService/ListDeviceJobs", Need(JobsRead)),
        ("/muster.v1.JobService/WatchJob", Need(JobsRead)),
        ("/muster.v1.ScheduleService/CreateSchedule", Need(JobsWrite)),
        ("/muster.v1.ScheduleService/GetSchedule", Need(JobsRead)),
        ("/muster.v1.ScheduleService/UpdateSchedule", Need(JobsWrite)),
        ("/muster.v1.ScheduleService/DeleteSchedule", Need(JobsWrite)),
        ("/muster.v1.ScheduleService/ListSchedules", Need(JobsRead)),
        (
            "/muster.v1.ScheduleService/ListScheduleJobs",
            Need(JobsRead),
        ),
        (
            "/muster.v1.DeviceService/RegisterDevice",
            Need(DevicesWrite),
        ),
        ("/muster.v1.DeviceService/ImportDevices", Need(DevicesWrite)),
        ("/muster.v1.DeviceService/GetDevice", Need(DevicesRead)),
        ("/muster.v1.DeviceService/ListDevices", Need(DevicesRead)),
        ("/muster.v1.DeviceService/QueryDevices", Need(DevicesRead)),
        ("/muster.v1.DeviceService/Query", Need(DevicesRead)),
        ("/muster.v1.DeviceService/UpdateTwin", Need(TwinsWrite)),
        (
            "/muster.v1.DeviceService/SetDeviceStatus",
            Need(DevicesWrite),
        ),
        (
            "/muster.v1.DeviceService/RotateDeviceKeys",
            Need(DevicesWrite),
        ),
        ("/muster.v1.DeviceService/DeleteDevice", Need(DevicesWrite)),
        ("/muster.v1.DeviceService/InvokeMethod", Need(MethodsInvoke)),
        ("/muster.v1.GroupService/PutGroup", Need(GroupsWrite)),
        ("/muster.v1.GroupService/GetGroup", Need(DevicesRead)),
        ("/muster.v1.GroupService/ListGroups", Need(DevicesRead)),
        ("/muster.v1.GroupService/DeleteGroup", Need(GroupsWrite)),
        ("/muster.v1.EventService/Subscribe", Need(EventsRead)),
        ("/muster.v1.ClusterService/Status", Need(ClusterRead)),
        ("/muster.v1.ClusterService/AddLearner", Need(ClusterManage)),
        ("/muster.v1.ClusterService/Promote", Need(ClusterManage)),
        ("/muster.v1.ClusterService/Remove", Need(ClusterManage)),
        ("/muster.v1.AuthService/CreateToken", Need(AuthManage)),
        ("/muster.v1.AuthService/ListTokens", Need(AuthManage)),
        ("/muster.v1.AuthService/DeleteToken", Need(AuthManage)),
        ("/muster.v1.AuthService/SavePolicy", Need(AuthManage)),
        ("/muster.v1.AuthService/ListPolicies", Need(AuthManage)),
        ("/muster.v1.AuthService/DeletePolicy", Need(AuthManage)),
    ]
};

/// The permission of a gRPC path; `None` for a path missing from [`GRPC_ACCESS`].
pub fn grpc_access(path: &str) -> Option<Access> {
    GRPC_ACCESS
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, a)| *a)
}

/// The client side: adds an `authorization` value to every gRPC call made through a channel
/// wrapped with [`with_credential`] (the CLI, the tests and the benches).
#[derive(Debug, Clone, Default)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A gRPC channel whose calls carry a credential.
pub type AuthChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// Wraps `channel` so its calls carry `authorization` (`None`, or a value a header cannot carry:
/// no credential).
pub fn with_credential(
    channel: tonic::transport::Channel,
    authorization: Option<&str>,
) -> AuthChannel {
    let value = authorization.and_then(|a| tonic::metadata::MetadataValue::try_from(a).ok());
    tonic::service::interceptor::InterceptedService::new(channel, Bearer(value))
}

/// The gate as a tower layer for the client gRPC server: every call passes [`Gate::check`] with
/// its method's entry in [`GRPC_ACCESS`] before any service sees it, and the caller's
/// [`Principal`] travels on in the request's extensions.
#[derive(Debug, Clone)]
pub struct GrpcGate(pub Gate);

impl<S> tower::Layer<S> for GrpcGate {
    type Service = GrpcGuard<S>;

    fn layer(&self, inner: S) -> GrpcGuard<S> {
        GrpcGuard {
            inner,
            gate: self.0.clone(),
        }
    }
}

/// See [`GrpcGate`].
#[derive(Debug, Clone)]
pub struct GrpcGuard<S> {
    inner: S,
    gate: Gate,
}

impl<S, B> tower::Service<axum::http::Request<B>> for GrpcGuard<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
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

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let refuse = |status: tonic::Status| -> Self::Future {
            Box::pin(futures::future::ready(Ok(status.into_http())))
        };
        let Some(access) = grpc_access(req.uri().path()) else {
            // Fail closed: a method added without a permission is refused (and a test fails).
            return refuse(tonic::Status::permission_denied(
                "this method has no permission assigned; it is refused",
            ));
        };
        let header = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .map(axum::http::HeaderValue::as_bytes);
        let subject = req
            .extensions()
            .get::<muster_tls::ClientIdentity>()
            .map(|c| c.subject.as_str());
        match self.gate.check(header, subject, access) {
            Ok(principal) => {
                if let Some(p) = principal {
                    req.extensions_mut().insert(p);
                }
                Box::pin(self.inner.call(req))
            }
            Err(d @ Denied::Unauthenticated) => refuse(tonic::Status::unauthenticated(d.message())),
            Err(d @ Denied::Forbidden(_)) => refuse(tonic::Status::permission_denied(d.message())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of every service on the client port, as the compiled descriptors list them,
    /// has exactly one entry in the table, and the table names no method that does not exist.
    #[test]
    fn every_grpc_method_has_a_permission() {
        use prost::Message;
        let mut served = Vec::new();
        for set in [
            muster_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(set).unwrap_or_default();
            for file in set.file {
                let package = file.package.unwrap_or_default();
                for svc in file.service {
                    let full = format!("{package}.{}", svc.name.unwrap_or_default());
                    if !crate::grpc::CLIENT_SERVICES.contains(&full.as_str()) {
                        continue;
                    }
                    for m in svc.method {
                        served.push(format!("/{full}/{}", m.name.unwrap_or_default()));
                    }
                }
            }
        }
        served.push("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
        assert!(served.len() > 20, "descriptors not read: {served:?}");
        for m in &served {
            assert!(grpc_access(m).is_some(), "{m} has no entry in GRPC_ACCESS");
        }
        for (p, _) in GRPC_ACCESS {
            assert!(
                served.iter().any(|m| m == p),
                "{p} is in GRPC_ACCESS but not served"
            );
            assert_eq!(
                GRPC_ACCESS.iter().filter(|(q, _)| q == p).count(),
                1,
                "{p} twice"
            );
        }
        // Only health is open.
        for (p, a) in GRPC_ACCESS {
            assert_eq!(*a == Access::Open, p.starts_with("/grpc.health.v1."), "{p}");
        }
    }
}
