//! `DeviceService.Query` and `JobService.ListDeviceJobs`: the query statement of
//! `POST /devices/query` over gRPC, with the same rows (`SELECT * FROM devices` rendered by the
//! one twin rendering, [`crate::hub::hub_twin_json`]) and the same opaque page tokens.

use muster_cluster::Cluster;
use muster_domain::query::{Cursor, Row, Source, Statement};
use muster_proto::pb;
use muster_types::{DeviceId, Timestamp};
use serde_json::Value;
use tonic::Status;

use super::{page_size, parse_id, read_barrier};
use crate::hub::hub_twin_json;

/// One page of a statement's rows as JSON, and the next page's token ("" on the last page).
async fn run(
    cluster: &Cluster,
    statement: &Statement,
    text: &str,
    page_token: &str,
    size: u32,
    stale_ok: bool,
) -> Result<(Vec<Value>, String), Status> {
    let cursor = if page_token.is_empty() {
        None
    } else {
        Some(
            Cursor::decode(page_token, text)
                .map_err(|e| Status::invalid_argument(format!("page_token: {e}")))?,
        )
    };
    let size = page_size(size);
    read_barrier(cluster, stale_ok).await?;
    cluster.reader().read_cold(|s, cold| {
        let page = statement
            .page(s, cold, cursor.as_ref(), size)
            .map_err(|e| Status::invalid_argument(format!("page_token: {e}")))?;
        let rows = page
            .rows
            .into_iter()
            .map(|row| match row {
                Row::Twin(device) => hub_twin_json(device),
                Row::Document(doc) => doc,
            })
            .collect();
        Ok((rows, page.next.map(|c| c.encode(text)).unwrap_or_default()))
    })
}

pub(super) async fn query(
    cluster: &Cluster,
    req: pb::QueryRequest,
) -> Result<pb::QueryResponse, Status> {
    let statement = Statement::parse(&req.query)
        .map_err(|e| Status::invalid_argument(format!("query: {e}")))?;
    let (rows, next_page_token) = run(
        cluster,
        &statement,
        &req.query,
        &req.page_token,
        req.page_size,
        req.stale_ok,
    )
    .await?;
    let item_type = match (statement.source(), statement.selects_documents()) {
        (Source::Devices, true) => "twin",
        (Source::DeviceJobs, true) => "deviceJob",
        (_, false) => "raw",
    };
    Ok(pb::QueryResponse {
        item_type: item_type.into(),
        items_json: rows.iter().map(Value::to_string).collect(),
        next_page_token,
    })
}

pub(super) async fn list_device_jobs(
    cluster: &Cluster,
    req: pb::ListDeviceJobsRequest,
) -> Result<pb::ListDeviceJobsResponse, Status> {
    let device: DeviceId = parse_id("device_id", &req.device_id)?;
    // A device id may hold `'` but never `"`.
    let quoted = if device.as_str().contains('\'') {
        format!("\"{device}\"")
    } else {
        format!("'{device}'")
    };
    let text = format!("SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = {quoted}");
    let statement =
        Statement::parse(&text).map_err(|e| Status::invalid_argument(format!("device_id: {e}")))?;
    let (rows, next_page_token) = run(
        cluster,
        &statement,
        &text,
        &req.page_token,
        req.page_size,
        req.stale_ok,
    )
    .await?;
    Ok(pb::ListDeviceJobsResponse {
        jobs: rows.iter().map(device_job).collect(),
        next_page_token,
    })
}

/// A `devices.jobs` row as the typed message.
fn device_job(row: &Value) -> pb::DeviceJob {
    let text = |key: &str| row[key].as_str().unwrap_or_default().to_string();
    let millis = |key: &str| {
        row[key]
            .as_str()
            .and_then(|t| Timestamp::parse_rfc3339(t).ok())
            .map(Timestamp::millis)
    };
    let response = &row["outcome"]["deviceMethodResponse"];
    pb::DeviceJob {
        device_id: text("deviceId"),
        job_id: text("jobId"),
        job_type: text("jobType"),
        status: text("status"),
        start_time_ms: millis("startTimeUtc").unwrap_or_default(),
        end_time_ms: millis("endTimeUtc"),
        created_time_ms: millis("createdDateTimeUtc").unwrap_or_default(),
        last_updated_time_ms: millis("lastUpdatedDateTimeUtc").unwrap_or_default(),
        method_status: response["status"]
            .as_i64()
            .and_then(|s| i32::try_from(s).ok()),
        method_payload_json: match response.get("payload") {
            Some(payload) => payload.to_string(),
            None => String::new(),
        },
        error_code: row["error"]["code"].as_str().unwrap_or_default().into(),
        error_description: row["error"]["description"]
            .as_str()
            .unwrap_or_default()
            .into(),
    }
}
