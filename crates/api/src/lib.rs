//! muster's REST shapes: the pure JSON mapping between the two Azure APIs users already script
//! against and muster's domain types. No HTTP here; the gateway calls these functions.
//!
//! * [`central`]: IoT Central's `/api/jobs`, `/api/deviceGroups` and `/api/devices`.
//! * [`hub`]: IoT Hub's `/jobs/v2`; [`hub_devices`]: its `/devices` and `/twins`.
//! * [`error`]: [`ApiError`], the `{"error": {"code", "message"}}` answer with its HTTP status.
//! * [`history`]: event filters and the JSON of one event, for `GET /api/jobs/{id}/events` and
//!   `muster.v1.EventService`.
//!
//! Every parser here takes untrusted text and returns either a value the domain accepts or an
//! [`ApiError`] naming the field to fix; none of them panics, whatever the input.

pub mod access;
pub mod central;
pub mod central_filter;
pub mod central_rollout;
pub mod central_schedule;
pub mod console;
pub mod credentials;
pub mod error;
pub mod grpc;
pub mod history;
pub mod hub;
pub mod hub_devices;
mod json;
pub mod methods;
pub mod rest;
pub mod watch;
pub mod window;

pub use central::{
    central_device_group_json, central_device_json, central_device_status, central_job,
    central_job_device_json, central_job_json, central_page, central_status, check_api_version,
    device_group_from_central, device_registration_from_central, job_request_from_central,
    job_spec_from_central, job_template, next_link, CentralDeviceGroup, CentralJob,
    CentralJobRequest, CENTRAL_API_VERSIONS,
};
pub use error::ApiError;
pub use hub::{
    device_identity_from_hub, etag_version, hub_device_json, hub_job_json, hub_job_status,
    hub_job_type, hub_twin_json, job_spec_from_hub, page_size, twin_patch_from_hub,
    twin_replace_from_hub, HubJobFilter, HUB_API_VERSIONS,
};
pub use json::MAX_BODY_BYTES;
/// Who a verified client certificate says the caller is; a request extension in REST and gRPC
/// handlers (see `muster_api::grpc::identify` and the node's TLS listener).
pub use muster_tls::ClientIdentity;

/// What REST (503) and gRPC (`UNAVAILABLE`) answer once this node's Raft core, or the leader's
/// it forwarded to, has stopped: that node will not serve again until it is restarted, so the
/// caller should use another member. The cause is in the server log, not in the answer.
pub(crate) const NODE_STOPPED: &str = "the cluster node serving this request has stopped (its Raft core ended) and cannot serve; send the request to another member of the cluster";
