//! `muster query "SELECT ..."` (`DeviceService.Query`, IoT Hub's query language over `devices`
//! and `devices.jobs`) and `muster device jobs DEVICE` (`JobService.ListDeviceJobs`).

use muster_proto::pb;
use muster_types::Timestamp;
use serde_json::{json, Value};

use super::render::{print_json, table};
use super::{collect_pages, connect, no_csv, rpc, ClientOpts, Output};

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The query, e.g. `SELECT * FROM devices.jobs WHERE devices.jobs.jobId = 'fw-1'` or
    /// `SELECT tags.site AS site, COUNT() AS n FROM devices GROUP BY tags.site`.
    pub query: String,
    /// Stop after this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
}

pub async fn query(opts: &ClientOpts, args: QueryArgs) -> anyhow::Result<()> {
    no_csv(opts, "muster query")?;
    let mut client = pb::device_service_client::DeviceServiceClient::new(connect(opts).await?)
        .max_decoding_message_size(usize::MAX);
    let mut item_type = String::new();
    let rows = collect_pages(args.limit, args.page_size, async |page_size, page_token| {
        let page = client
            .query(pb::QueryRequest {
                query: args.query.clone(),
                page_size,
                page_token,
                stale_ok: false,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        item_type = page.item_type;
        let rows = page
            .items_json
            .iter()
            .map(|text| serde_json::from_str(text).unwrap_or(Value::String(text.clone())))
            .collect::<Vec<Value>>();
        Ok((rows, page.next_page_token))
    })
    .await?;
    match opts.output {
        Output::Json => print_json(&json!({"itemType": item_type, "items": rows})),
        Output::Text | Output::Csv => match item_type.as_str() {
            "deviceJob" => print!("{}", device_jobs_table(&rows)),
            "twin" => {
                for row in &rows {
                    println!("{}", row["deviceId"].as_str().unwrap_or_default());
                }
            }
            _ => {
                for row in &rows {
                    println!("{row}");
                }
            }
        },
    }
    Ok(())
}

/// `muster device jobs DEVICE`.
pub async fn device_jobs(
    opts: &ClientOpts,
    device: String,
    limit: Option<usize>,
    page_size: u32,
) -> anyhow::Result<()> {
    let mut client = pb::job_service_client::JobServiceClient::new(connect(opts).await?)
        .max_decoding_message_size(usize::MAX);
    let jobs = collect_pages(limit, page_size, async |page_size, page_token| {
        let page = client
            .list_device_jobs(pb::ListDeviceJobsRequest {
                device_id: device.clone(),
                page_size,
                page_token,
                stale_ok: false,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        Ok((page.jobs, page.next_page_token))
    })
    .await?;
    let rows: Vec<Value> = jobs.iter().map(device_job_json).collect();
    match opts.output {
        Output::Json => print_json(&Value::Array(rows)),
        Output::Text | Output::Csv => print!("{}", device_jobs_table(&rows)),
    }
    Ok(())
}

/// A `DeviceJob` in the shape of IoT Hub's `devices.jobs` rows (what `muster query` prints).
fn device_job_json(j: &pb::DeviceJob) -> Value {
    let time = |ms: i64| Timestamp::from_millis(ms).to_rfc3339();
    let mut row = json!({
        "deviceId": j.device_id,
        "jobId": j.job_id,
        "jobType": j.job_type,
        "status": j.status,
        "startTimeUtc": time(j.start_time_ms),
        "createdDateTimeUtc": time(j.created_time_ms),
        "lastUpdatedDateTimeUtc": time(j.last_updated_time_ms),
        "outcome": {"deviceMethodResponse": j.method_status.map(|status| json!({
            "status": status,
            "payload": serde_json::from_str::<Value>(&j.method_payload_json).unwrap_or(Value::Null),
        }))},
    });
    if let (Some(end), Some(map)) = (j.end_time_ms, row.as_object_mut()) {
        map.insert("endTimeUtc".into(), Value::String(time(end)));
    }
    if let (false, Some(map)) = (j.error_code.is_empty(), row.as_object_mut()) {
        map.insert(
            "error".into(),
            json!({"code": j.error_code, "description": j.error_description}),
        );
    }
    row
}

fn device_jobs_table(rows: &[Value]) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let response = &r["outcome"]["deviceMethodResponse"];
            vec![
                text(&r["jobId"]),
                text(&r["deviceId"]),
                text(&r["jobType"]),
                text(&r["status"]),
                response["status"]
                    .as_i64()
                    .map_or_else(String::new, |s| s.to_string()),
                text(&r["error"]["code"]),
                text(&r["lastUpdatedDateTimeUtc"]),
            ]
        })
        .collect();
    table(
        &[
            "JOB", "DEVICE", "TYPE", "STATUS", "ANSWER", "ERROR", "UPDATED",
        ],
        &lines,
    )
}
