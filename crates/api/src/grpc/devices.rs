//! `muster.v1.DeviceService` and `muster.v1.GroupService`.

use muster_cluster::{now, Cluster};
use muster_domain::query::Query;
use muster_domain::{Command, DeviceIdentity, DeviceKeys, DeviceRegistration, IdentityCondition};
use muster_proto::pb;
use muster_types::{DeviceId, GroupId};
use tonic::{Request, Response, Status};

use super::convert;
use super::{
    after, caller, cluster_status, id_token, next_token, page_size, parse_id, parse_json,
    read_barrier, take_page,
};
use muster_domain::page_token::Listing;

/// What the lists' page tokens are sealed for ([`muster_domain::page_token`]).
const LIST_DEVICES: &str = "grpc DeviceService.ListDevices";
const QUERY_DEVICES: &str = "grpc DeviceService.QueryDevices";
const LIST_GROUPS: &str = "grpc GroupService.ListGroups";

/// The device service over a cluster handle.
#[derive(Debug, Clone)]
pub struct DeviceApi {
    cluster: Cluster,
}

impl DeviceApi {
    pub fn new(cluster: Cluster) -> Self {
        DeviceApi { cluster }
    }

    fn device_now(&self, id: &DeviceId) -> Result<pb::Device, Status> {
        self.cluster
            .reader()
            .read(|s| s.registry.devices.get(id).map(convert::device))
            .ok_or_else(|| Status::not_found(format!("device {id} is not registered")))
    }
}

/// A registration from the API's `NewDevice`, with its defaults (enabled, display name = id,
/// no tags); `field` prefixes every error's field name.
fn registration(field: &str, d: pb::NewDevice) -> Result<DeviceRegistration, Status> {
    let id: DeviceId = parse_id(&format!("{field}.device_id"), &d.device_id)?;
    let tags = if d.tags_json.is_empty() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        let tags = parse_json(&format!("{field}.tags_json"), &d.tags_json)?;
        if !tags.is_object() {
            return Err(Status::invalid_argument(format!(
                "{field}.tags_json: must be a JSON object such as {{\"site\": \"b43\"}}"
            )));
        }
        tags
    };
    Ok(DeviceRegistration {
        display_name: if d.display_name.is_empty() {
            id.to_string()
        } else {
            d.display_name
        },
        id,
        model_id: d.model_id.filter(|m| !m.is_empty()),
        enabled: d.enabled.unwrap_or(true),
        tags: tags.into(),
    })
}

#[tonic::async_trait]
impl pb::device_service_server::DeviceService for DeviceApi {
    async fn register_device(
        &self,
        request: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let device = req
            .device
            .ok_or_else(|| Status::invalid_argument("device: give the device to register"))?;
        let reg = registration("device", device)?;
        let id = reg.id.clone();
        self.cluster
            .write_as(
                who,
                Command::RegisterDevices {
                    devices: vec![reg],
                    upsert: req.upsert,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        self.device_now(&id).map(Response::new)
    }

    async fn import_devices(
        &self,
        request: Request<pb::ImportDevicesRequest>,
    ) -> Result<Response<pb::ImportDevicesResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        if req.devices.is_empty() {
            return Err(Status::invalid_argument(
                "devices: give at least one device to import",
            ));
        }
        let devices = req
            .devices
            .into_iter()
            .enumerate()
            .map(|(i, d)| registration(&format!("devices[{i}]"), d))
            .collect::<Result<Vec<_>, _>>()?;
        let count = devices.len() as u64;
        // One command: the import is all or nothing, and one Raft entry however many devices.
        self.cluster
            .write_as(
                who,
                Command::RegisterDevices {
                    devices,
                    upsert: true,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::ImportDevicesResponse { count }))
    }

    async fn get_device(
        &self,
        request: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let req = request.into_inner();
        let id: DeviceId = parse_id("device_id", &req.device_id)?;
        read_barrier(&self.cluster, req.stale_ok).await?;
        self.device_now(&id).map(Response::new)
    }

    async fn list_devices(
        &self,
        request: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let req = request.into_inner();
        let listing = Listing::new(LIST_DEVICES);
        let token: Option<DeviceId> = id_token(&listing, &req.page_token)?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (devices, more) = self.cluster.reader().read(|s| {
            let (page, more) = take_page(s.registry.devices.range(after(token)), size);
            let devices: Vec<pb::Device> =
                page.into_iter().map(|(_, d)| convert::device(d)).collect();
            (devices, more)
        });
        let next_page_token =
            next_token(&listing, more, devices.last().map(|d| d.device_id.as_str()));
        Ok(Response::new(pb::ListDevicesResponse {
            devices,
            next_page_token,
        }))
    }

    async fn query_devices(
        &self,
        request: Request<pb::QueryDevicesRequest>,
    ) -> Result<Response<pb::QueryDevicesResponse>, Status> {
        let req = request.into_inner();
        let query = Query::parse(&req.query)
            .map_err(|e| Status::invalid_argument(format!("query: {e}")))?;
        let listing = Listing::new(QUERY_DEVICES).with("query", req.query.trim());
        let token: Option<DeviceId> = id_token(&listing, &req.page_token)?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (device_ids, devices, more) = self.cluster.reader().read(|s| {
            let matching = s
                .registry
                .devices
                .range(after(token))
                .map(|(_, d)| d)
                .filter(|d| query.matches(&d.query_document(query.names_metadata())));
            let (page, more) = take_page(matching, size);
            let ids: Vec<String> = page.iter().map(|d| d.id.to_string()).collect();
            let devices: Vec<pb::Device> = if req.ids_only {
                Vec::new()
            } else {
                page.into_iter().map(convert::device).collect()
            };
            (ids, devices, more)
        });
        let next_page_token = next_token(&listing, more, device_ids.last().map(String::as_str));
        Ok(Response::new(pb::QueryDevicesResponse {
            device_ids,
            devices,
            next_page_token,
        }))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        super::query::query(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_twin(
        &self,
        request: Request<pb::UpdateTwinRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: DeviceId = parse_id("device_id", &req.device_id)?;
        let tags = req
            .tags_json
            .as_deref()
            .map(|t| parse_json("tags_json", t))
            .transpose()?;
        let desired = req
            .desired_json
            .as_deref()
            .map(|t| parse_json("desired_json", t))
            .transpose()?;
        if tags.is_none() && desired.is_none() {
            return Err(Status::invalid_argument(
                "tags_json, desired_json: give at least one of them to change",
            ));
        }
        self.cluster
            .write_as(
                who,
                Command::UpdateTwin {
                    device: id.clone(),
                    tags,
                    desired,
                    if_version: req.if_version,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        self.device_now(&id).map(Response::new)
    }

    async fn set_device_status(
        &self,
        request: Request<pb::SetDeviceStatusRequest>,
    ) -> Result<Response<pb::Device>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: DeviceId = parse_id("device_id", &req.device_id)?;
        let current = self.identity_now(&id)?;
        let identity = DeviceIdentity {
            enabled: req.enabled,
            status_reason: req.status_reason.filter(|r| !r.is_empty()),
            ..current.identity
        };
        self.put_identity(who, identity, req.if_identity_version, current.version)
            .await?;
        self.device_now(&id).map(Response::new)
    }

    async fn rotate_device_keys(
        &self,
        request: Request<pb::RotateDeviceKeysRequest>,
    ) -> Result<Response<pb::DeviceKeys>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: DeviceId = parse_id("device_id", &req.device_id)?;
        let keys =
            match (req.primary_key.is_empty(), req.secondary_key.is_empty()) {
                (true, true) => fresh_keys()?,
                (false, false) => DeviceKeys {
                    primary: req.primary_key,
                    secondary: req.secondary_key,
                },
                _ => return Err(Status::invalid_argument(
                    "primary_key, secondary_key: give both keys, or neither to have them generated",
                )),
            };
        let current = self.identity_now(&id)?;
        let identity = DeviceIdentity {
            keys: Some(keys),
            ..current.identity
        };
        self.put_identity(who, identity, None, current.version)
            .await?;
        let keys = self
            .cluster
            .reader()
            .read(|s| s.registry.devices.get(&id).and_then(|d| d.keys.clone()))
            .ok_or_else(|| Status::not_found(format!("device {id} is not registered")))?;
        Ok(Response::new(pb::DeviceKeys {
            device_id: id.to_string(),
            primary_key: keys.primary,
            secondary_key: keys.secondary,
        }))
    }

    async fn delete_device(
        &self,
        request: Request<pb::DeleteDeviceRequest>,
    ) -> Result<Response<pb::DeleteDeviceResponse>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: DeviceId = parse_id("device_id", &req.device_id)?;
        self.cluster
            .write_as(
                who,
                Command::DeleteDevice {
                    device: id,
                    if_version: req.if_identity_version,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::DeleteDeviceResponse {}))
    }

    async fn invoke_method(
        &self,
        request: Request<pb::InvokeMethodRequest>,
    ) -> Result<Response<pb::InvokeMethodResponse>, Status> {
        use crate::methods::{invoke, new_invocation_id, InvokeError};
        let who = caller(&request);
        let req = request.into_inner();
        let device: DeviceId = parse_id("device_id", &req.device_id)?;
        let payload = if req.payload_json.trim().is_empty() {
            serde_json::Value::Null
        } else {
            parse_json("payload_json", &req.payload_json)?
        };
        let call = muster_domain::Invocation {
            id: new_invocation_id().map_err(|e| Status::internal(e.message))?,
            device: device.clone(),
            method: req.method,
            payload,
            response_timeout_secs: match req.response_timeout_secs {
                0 => muster_domain::invocation::DEFAULT_RESPONSE_TIMEOUT_SECS,
                n => n,
            },
            connect_timeout_secs: req.connect_timeout_secs,
        };
        muster_domain::invocation::check(&call).map_err(|e| {
            let field = |f: &str| {
                match f {
                    "methodName" => "method",
                    "payload" => "payload_json",
                    "responseTimeoutInSeconds" => "response_timeout_secs",
                    "connectTimeoutInSeconds" => "connect_timeout_secs",
                    other => other,
                }
                .to_string()
            };
            match e {
                muster_domain::DomainError::Invalid { field: f, message } => {
                    Status::invalid_argument(format!("{}: {message}", field(&f)))
                }
                muster_domain::DomainError::TooLarge {
                    field: f,
                    size,
                    max,
                } => Status::invalid_argument(format!(
                    "{} is {size} bytes; at most {max} are allowed",
                    field(&f)
                )),
                other => Status::invalid_argument(other.to_string()),
            }
        })?;
        let id = call.id.clone();
        let (connect, response) = (call.connect_timeout_secs, call.response_timeout_secs);
        match invoke(&self.cluster, who, call, now()).await {
            Ok((status, payload)) => Ok(Response::new(pb::InvokeMethodResponse {
                invocation_id: id.to_string(),
                status,
                payload_json: payload.to_string(),
            })),
            Err(InvokeError::Cluster(e)) => Err(cluster_status(e)),
            Err(InvokeError::NotOnline { .. }) => Err(Status::failed_precondition(format!(
                "device {device} is not connected (waited {connect} s for it to connect); retry when it is online, or give a longer connect_timeout_secs"
            ))),
            Err(InvokeError::Timeout { .. }) => Err(Status::deadline_exceeded(format!(
                "device {device} did not answer within {response} s; give a longer response_timeout_secs or check the device"
            ))),
            Err(InvokeError::NotSent(why)) => Err(Status::unavailable(format!(
                "the method could not be sent to device {device}: {why}"
            ))),
            Err(InvokeError::Unknown(why)) => {
                tracing::warn!("direct method end not seen: {why}");
                Err(Status::unavailable(
                    "the node lost track of the invocation before it ended; its outcome is in the event log",
                ))
            }
        }
    }
}

/// A device's identity as it is now, with the version it was read at.
struct CurrentIdentity {
    identity: DeviceIdentity,
    version: u64,
}

fn fresh_keys() -> Result<DeviceKeys, Status> {
    let key = || {
        crate::credentials::random_key().map_err(|_| Status::internal("no randomness for a key"))
    };
    Ok(DeviceKeys {
        primary: key()?,
        secondary: key()?,
    })
}

impl DeviceApi {
    fn identity_now(&self, id: &DeviceId) -> Result<CurrentIdentity, Status> {
        self.cluster
            .reader()
            .read(|s| {
                s.registry.devices.get(id).map(|d| CurrentIdentity {
                    identity: DeviceIdentity {
                        id: d.id.clone(),
                        enabled: d.enabled,
                        status_reason: d.status_reason.clone(),
                        keys: None,
                        iot_edge: d.iot_edge,
                    },
                    version: d.identity_version,
                })
            })
            .ok_or_else(|| Status::not_found(format!("device {id} is not registered")))
    }

    /// Writes an identity built from one read of the device: conditional on the version that
    /// read saw (or the caller's), so a change in between is ABORTED instead of overwritten.
    async fn put_identity(
        &self,
        who: muster_domain::Principal,
        identity: DeviceIdentity,
        if_version: Option<u64>,
        read_version: u64,
    ) -> Result<(), Status> {
        self.cluster
            .write_as(
                who,
                Command::PutDeviceIdentity {
                    identity,
                    condition: IdentityCondition::Version(if_version.unwrap_or(read_version)),
                    fresh_keys: fresh_keys()?,
                    at: now(),
                },
            )
            .await
            .map(|_| ())
            .map_err(cluster_status)
    }
}

/// The group service over a cluster handle.
#[derive(Debug, Clone)]
pub struct GroupApi {
    cluster: Cluster,
}

impl GroupApi {
    pub fn new(cluster: Cluster) -> Self {
        GroupApi { cluster }
    }

    fn group_now(&self, id: &GroupId) -> Result<pb::Group, Status> {
        self.cluster
            .reader()
            .read(|s| s.registry.groups.get(id).map(convert::group))
            .ok_or_else(|| Status::not_found(format!("device group {id} does not exist")))
    }
}

#[tonic::async_trait]
impl pb::group_service_server::GroupService for GroupApi {
    async fn put_group(
        &self,
        request: Request<pb::PutGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: GroupId = parse_id("group_id", &req.group_id)?;
        // Checked here too, so the error names this API's field (`decide` calls it `filter`,
        // IoT Central's name).
        Query::parse(&req.query).map_err(|e| Status::invalid_argument(format!("query: {e}")))?;
        let display_name = if req.display_name.is_empty() {
            id.to_string()
        } else {
            req.display_name
        };
        let if_version = crate::hub_devices::etag_version(Some(&req.etag)).map_err(|_| {
            Status::invalid_argument(
                "etag: is not an etag of this service; send the etag from the last GetGroup, or leave it empty",
            )
        })?;
        let description = match req.description {
            Some(d) => d,
            // Not given: a save keeps the description it has.
            None => self
                .cluster
                .reader()
                .read(|s| s.registry.groups.get(&id).map(|g| g.description.clone()))
                .unwrap_or_default(),
        };
        self.cluster
            .write_as(
                who,
                Command::SaveGroup {
                    id: id.clone(),
                    display_name,
                    description,
                    query: req.query,
                    if_version,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        self.group_now(&id).map(Response::new)
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::Group>, Status> {
        let req = request.into_inner();
        let id: GroupId = parse_id("group_id", &req.group_id)?;
        read_barrier(&self.cluster, req.stale_ok).await?;
        self.group_now(&id).map(Response::new)
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let req = request.into_inner();
        let listing = Listing::new(LIST_GROUPS);
        let token: Option<GroupId> = id_token(&listing, &req.page_token)?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (groups, more) = self.cluster.reader().read(|s| {
            let (page, more) = take_page(s.registry.groups.range(after(token)), size);
            let groups: Vec<pb::Group> = page.into_iter().map(|(_, g)| convert::group(g)).collect();
            (groups, more)
        });
        let next_page_token =
            next_token(&listing, more, groups.last().map(|g| g.group_id.as_str()));
        Ok(Response::new(pb::ListGroupsResponse {
            groups,
            next_page_token,
        }))
    }

    async fn delete_group(
        &self,
        request: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let who = caller(&request);
        let id: GroupId = parse_id("group_id", &request.into_inner().group_id)?;
        self.cluster
            .write_as(who, Command::DeleteGroup { id, at: now() })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::DeleteGroupResponse {}))
    }
}
