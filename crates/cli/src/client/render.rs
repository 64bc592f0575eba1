//! Printing API messages: one JSON document for scripts (`--output json`), tables and key/value
//! lines for people.
//!
//! The JSON uses lowerCamelCase names, enum values as lower-case words (`timedOut`), times as
//! RFC 3339 strings and JSON documents (tags, payloads) as JSON values rather than text, so that
//! `jq` works on them directly. A job's `spec` is muster's JobSpec as JSON, the very form
//! `muster job create --file` reads back.

use muster_domain::JobSpec;
use muster_proto::pb;
use muster_types::Timestamp;
use serde_json::{json, Map, Value};

pub fn job_status(raw: i32) -> &'static str {
    match pb::JobStatus::try_from(raw) {
        Ok(pb::JobStatus::Scheduled) => "scheduled",
        Ok(pb::JobStatus::Pending) => "pending",
        Ok(pb::JobStatus::Running) => "running",
        Ok(pb::JobStatus::Stopped) => "stopped",
        Ok(pb::JobStatus::Paused) => "paused",
        Ok(pb::JobStatus::Completed) => "completed",
        Ok(pb::JobStatus::Failed) => "failed",
        Ok(pb::JobStatus::Cancelled) => "cancelled",
        Ok(pb::JobStatus::Unspecified) | Err(_) => "unknown",
    }
}

fn job_type(raw: i32) -> &'static str {
    match pb::JobType::try_from(raw) {
        Ok(pb::JobType::Method) => "method",
        Ok(pb::JobType::Twin) => "twin",
        Ok(pb::JobType::Unspecified) | Err(_) => "unknown",
    }
}

fn device_status(raw: i32) -> &'static str {
    match pb::DeviceStatus::try_from(raw) {
        Ok(pb::DeviceStatus::Pending) => "pending",
        Ok(pb::DeviceStatus::Running) => "running",
        Ok(pb::DeviceStatus::Succeeded) => "succeeded",
        Ok(pb::DeviceStatus::Failed) => "failed",
        Ok(pb::DeviceStatus::TimedOut) => "timedOut",
        Ok(pb::DeviceStatus::Cancelled) => "cancelled",
        Ok(pb::DeviceStatus::Unspecified) | Err(_) => "unknown",
    }
}

fn connection(raw: i32) -> &'static str {
    match pb::ConnectionState::try_from(raw) {
        Ok(pb::ConnectionState::Connected) => "connected",
        Ok(pb::ConnectionState::Disconnected) => "disconnected",
        Ok(pb::ConnectionState::Unknown | pb::ConnectionState::Unspecified) | Err(_) => "unknown",
    }
}

fn time(ms: i64) -> String {
    Timestamp::from_millis(ms).to_rfc3339()
}

fn opt_time(m: &mut Map<String, Value>, key: &str, ms: Option<i64>) {
    if let Some(ms) = ms {
        m.insert(key.into(), Value::String(time(ms)));
    }
}

/// JSON text from the server as a value; text that does not parse (it always should) is kept as
/// a string rather than lost.
fn json_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub fn stats_json(s: Option<&pb::JobStats>) -> Value {
    let d = pb::JobStats::default();
    let s = s.unwrap_or(&d);
    json!({
        "total": s.total, "pending": s.pending, "running": s.running,
        "succeeded": s.succeeded, "failed": s.failed, "timedOut": s.timed_out,
        "cancelled": s.cancelled,
    })
}

pub fn job_json(j: &pb::Job) -> Value {
    let mut m = Map::new();
    m.insert("jobId".into(), json!(j.job_id));
    m.insert("displayName".into(), json!(j.display_name));
    m.insert("description".into(), json!(j.description));
    m.insert("type".into(), json!(job_type(j.r#type)));
    m.insert("status".into(), json!(job_status(j.status)));
    if !j.status_reason.is_empty() {
        m.insert("statusReason".into(), json!(j.status_reason));
    }
    m.insert("stats".into(), stats_json(j.stats.as_ref()));
    if let Some(r) = j.rate_per_minute {
        m.insert("ratePerMinute".into(), json!(r));
    }
    if let Some(b) = j.paused_after_batch {
        m.insert("pausedAfterBatch".into(), json!(b));
    }
    if j.detail_expired {
        m.insert("detailExpired".into(), json!(true));
    }
    m.insert("createdAt".into(), json!(time(j.created_at_ms)));
    opt_time(&mut m, "startAt", j.start_at_ms);
    opt_time(&mut m, "startedAt", j.started_at_ms);
    opt_time(&mut m, "endedAt", j.ended_at_ms);
    m.insert("run".into(), json!(j.run));
    if let Some(w) = &j.window {
        let mut wm = Map::new();
        wm.insert(
            "state".into(),
            json!(if w.open { "open" } else { "waiting" }),
        );
        opt_time(&mut wm, "until", w.until_ms);
        m.insert("window".into(), Value::Object(wm));
    }
    if let Some(r) = &j.rerun_id {
        m.insert("rerunId".into(), json!(r));
    }
    if !j.batches.is_empty() {
        let batches: Vec<Value> = j
            .batches
            .iter()
            .map(|b| {
                let mut bm = Map::new();
                bm.insert("index".into(), json!(b.index));
                opt_time(&mut bm, "startedAt", b.started_at_ms);
                bm.insert("stats".into(), stats_json(b.stats.as_ref()));
                Value::Object(bm)
            })
            .collect();
        m.insert("batches".into(), Value::Array(batches));
    }
    if !j.runs.is_empty() {
        let runs: Vec<Value> = j
            .runs
            .iter()
            .map(|r| {
                let mut rm = Map::new();
                rm.insert("run".into(), json!(r.run));
                if let Some(id) = &r.rerun_id {
                    rm.insert("rerunId".into(), json!(id));
                }
                rm.insert("createdAt".into(), json!(time(r.created_at_ms)));
                opt_time(&mut rm, "startedAt", r.started_at_ms);
                rm.insert("stats".into(), stats_json(r.stats.as_ref()));
                Value::Object(rm)
            })
            .collect();
        m.insert("runs".into(), Value::Array(runs));
    }
    if let Some(spec) = &j.spec {
        let spec = JobSpec::try_from(spec.clone())
            .ok()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        m.insert("spec".into(), spec);
    }
    Value::Object(m)
}

pub fn job_device_json(d: &pb::JobDevice) -> Value {
    let mut m = Map::new();
    m.insert("deviceId".into(), json!(d.device_id));
    m.insert("run".into(), json!(d.run));
    m.insert("batch".into(), json!(d.batch));
    m.insert("status".into(), json!(device_status(d.status)));
    m.insert("attempts".into(), json!(d.attempts));
    opt_time(&mut m, "dispatchedAt", d.dispatched_at_ms);
    opt_time(&mut m, "finishedAt", d.finished_at_ms);
    if !d.last_error.is_empty() {
        m.insert("lastError".into(), json!(d.last_error));
    }
    if let Some(status) = d.response_status {
        let payload = d
            .response_payload_json
            .as_deref()
            .map_or(Value::Null, json_value);
        m.insert(
            "response".into(),
            json!({"status": status, "payload": payload}),
        );
    }
    Value::Object(m)
}

pub fn device_json(d: &pb::Device) -> Value {
    let mut m = Map::new();
    m.insert("deviceId".into(), json!(d.device_id));
    m.insert("displayName".into(), json!(d.display_name));
    if let Some(model) = &d.model_id {
        m.insert("modelId".into(), json!(model));
    }
    m.insert("enabled".into(), json!(d.enabled));
    if let Some(r) = &d.status_reason {
        m.insert("statusReason".into(), json!(r));
    }
    m.insert("identityVersion".into(), json!(d.identity_version));
    m.insert("hasKeys".into(), json!(d.has_keys));
    m.insert("connection".into(), json!(connection(d.connection)));
    m.insert("version".into(), json!(d.version));
    m.insert("tags".into(), json_value(&d.tags_json));
    m.insert(
        "properties".into(),
        json!({
            "desired": json_value(&d.desired_json),
            "desiredVersion": d.desired_version,
            "reported": json_value(&d.reported_json),
            "reportedVersion": d.reported_version,
        }),
    );
    m.insert(
        "cloudProperties".into(),
        json_value(&d.cloud_properties_json),
    );
    m.insert("registeredAt".into(), json!(time(d.registered_at_ms)));
    opt_time(&mut m, "lastActivity", d.last_activity_ms);
    Value::Object(m)
}

pub fn group_json(g: &pb::Group) -> Value {
    json!({
        "groupId": g.group_id,
        "displayName": g.display_name,
        "description": g.description,
        "query": g.query,
        "savedAt": time(g.saved_at_ms),
        "etag": g.etag,
    })
}

/// Prints a JSON document, pretty (scripts parse it either way; people may read it).
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Prints a listing: a JSON array of `json(item)` with `-o json`, else the text table.
pub fn print_list<T>(
    output: super::Output,
    items: &[T],
    json: impl Fn(&T) -> Value,
    table: impl Fn(&[T]) -> String,
) {
    match output {
        super::Output::Json => print_json(&Value::Array(items.iter().map(json).collect())),
        super::Output::Text | super::Output::Csv => println!("{}", table(items)),
    }
}

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

/// A plain table: a header and rows, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                let w = widths.get(i).copied().unwrap_or(0);
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn stats_text(s: Option<&pb::JobStats>) -> String {
    let d = pb::JobStats::default();
    let s = s.unwrap_or(&d);
    format!(
        "{} devices: {} pending, {} running, {} succeeded, {} failed, {} timed out, {} cancelled",
        s.total, s.pending, s.running, s.succeeded, s.failed, s.timed_out, s.cancelled
    )
}

pub fn job_text(j: &pb::Job) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
    kv("Job:", j.job_id.clone());
    if j.display_name != j.job_id {
        kv("Name:", j.display_name.clone());
    }
    if !j.description.is_empty() {
        kv("Description:", j.description.clone());
    }
    kv("Type:", job_type(j.r#type).into());
    // The reason, when there is one, starts with the status ("cancelled by a user").
    let status = if j.status_reason.is_empty() {
        job_status(j.status).to_string()
    } else {
        j.status_reason.clone()
    };
    kv("Status:", status);
    kv("Devices:", stats_text(j.stats.as_ref()));
    if j.detail_expired {
        kv(
            "Detail:",
            "device detail expired (retention.finished_jobs); the counts above stay".into(),
        );
    }
    if let Some(r) = j.rate_per_minute {
        kv("Rate:", format!("{r} devices per minute"));
    }
    if j.status == pb::JobStatus::Paused as i32 {
        kv("Next:", format!("muster job continue {}", j.job_id));
    }
    kv("Created:", time(j.created_at_ms));
    if let Some(t) = j.start_at_ms {
        kv("Starts at:", time(t));
    }
    if let Some(t) = j.started_at_ms {
        kv("Started:", time(t));
    }
    if let Some(t) = j.ended_at_ms {
        kv("Ended:", time(t));
    }
    if let Some(w) = &j.window {
        let until = w.until_ms.map(time);
        kv(
            "Window:",
            match (w.open, until) {
                (true, Some(t)) => format!("open until {t}"),
                (true, None) => "open".into(),
                (false, Some(t)) => format!("waiting until {t}"),
                (false, None) => "waiting (the window never opens again)".into(),
            },
        );
    }
    if j.run > 0 {
        kv(
            "Run:",
            format!("{} (rerun {})", j.run, j.rerun_id.as_deref().unwrap_or("-")),
        );
    }
    if !j.batches.is_empty() {
        let rows: Vec<Vec<String>> = j
            .batches
            .iter()
            .map(|b| {
                let d = pb::JobStats::default();
                let s = b.stats.as_ref().unwrap_or(&d);
                vec![
                    b.index.to_string(),
                    b.started_at_ms.map_or("-".into(), time),
                    s.total.to_string(),
                    s.pending.to_string(),
                    s.running.to_string(),
                    s.succeeded.to_string(),
                    (s.failed + s.timed_out).to_string(),
                    s.cancelled.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "BATCH",
                "STARTED",
                "DEVICES",
                "PENDING",
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                "CANCELLED",
            ],
            &rows,
        ));
        out.push('\n');
    }
    out.trim_end().to_string()
}

pub fn jobs_table(jobs: &[pb::Job]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let d = pb::JobStats::default();
            let s = j.stats.as_ref().unwrap_or(&d);
            vec![
                j.job_id.clone(),
                job_type(j.r#type).into(),
                job_status(j.status).into(),
                s.total.to_string(),
                s.succeeded.to_string(),
                (s.failed + s.timed_out).to_string(),
                time(j.created_at_ms),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TYPE",
            "STATUS",
            "DEVICES",
            "SUCCEEDED",
            "FAILED",
            "CREATED",
        ],
        &rows,
    )
}

pub fn job_devices_table(devices: &[pb::JobDevice]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.device_id.clone(),
                d.batch.to_string(),
                device_status(d.status).into(),
                d.attempts.to_string(),
                d.response_status.map_or("-".into(), |s| s.to_string()),
                if d.last_error.is_empty() {
                    "-".into()
                } else {
                    d.last_error.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "DEVICE",
            "BATCH",
            "STATUS",
            "ATTEMPTS",
            "RESPONSE",
            "LAST ERROR",
        ],
        &rows,
    )
}

pub fn device_text(d: &pb::Device) -> String {
    let pretty =
        |t: &str| serde_json::to_string_pretty(&json_value(t)).unwrap_or_else(|_| t.to_string());
    let mut out = String::new();
    out.push_str(&format!("{:<13}{}\n", "Device:", d.device_id));
    out.push_str(&format!("{:<13}{}\n", "Name:", d.display_name));
    if let Some(m) = &d.model_id {
        out.push_str(&format!("{:<13}{}\n", "Model:", m));
    }
    out.push_str(&format!(
        "{:<13}{}\n",
        "Enabled:",
        if d.enabled { "yes" } else { "no" }
    ));
    if let Some(r) = &d.status_reason {
        out.push_str(&format!("{:<13}{}\n", "Reason:", r));
    }
    out.push_str(&format!(
        "{:<13}{}\n",
        "Connection:",
        connection(d.connection)
    ));
    out.push_str(&format!("{:<13}{}\n", "Version:", d.version));
    out.push_str(&format!(
        "{:<13}{}\n",
        "Registered:",
        time(d.registered_at_ms)
    ));
    out.push_str(&format!("Tags:\n{}\n", pretty(&d.tags_json)));
    out.push_str(&format!(
        "Desired (version {}):\n{}\n",
        d.desired_version,
        pretty(&d.desired_json)
    ));
    out.push_str(&format!(
        "Reported (version {}):\n{}",
        d.reported_version,
        pretty(&d.reported_json)
    ));
    out
}

pub fn devices_table(devices: &[pb::Device]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.device_id.clone(),
                d.display_name.clone(),
                if d.enabled { "yes" } else { "no" }.into(),
                connection(d.connection).into(),
                d.version.to_string(),
                d.tags_json.clone(),
            ]
        })
        .collect();
    table(
        &["ID", "NAME", "ENABLED", "CONNECTION", "VERSION", "TAGS"],
        &rows,
    )
}

pub fn groups_table(groups: &[pb::Group]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group_id.clone(), g.display_name.clone(), g.query.clone()])
        .collect();
    table(&["ID", "NAME", "QUERY"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["ID", "STATUS"],
            &[
                vec!["a-long-id".into(), "ok".into()],
                vec!["b".into(), "failed".into()],
            ],
        );
        assert_eq!(t, "ID         STATUS\na-long-id  ok\nb          failed");
    }
}

// ---------------------------------------------------------------------------------------------
// CSV (RFC 4180)
// ---------------------------------------------------------------------------------------------

/// One CSV field: quoted when it holds a comma, a quote, CR or LF (quotes doubled), or
/// surrounding spaces that a spreadsheet would otherwise trim.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// One CSV record, CRLF-terminated as RFC 4180 has it.
fn csv_record<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f.as_ref()))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// The short name of why a device's last attempt failed (`lastError` says it in words).
fn failure_code(r: Option<&pb::FailureReason>) -> &'static str {
    use pb::failure_reason::Kind;
    match r.and_then(|r| r.kind.as_ref()) {
        None => "",
        Some(Kind::DeviceError(_)) => "deviceError",
        Some(Kind::Timeout(_)) => "timeout",
        Some(Kind::NotConnected(_)) => "notConnected",
        Some(Kind::DeviceNotFound(_)) => "deviceNotFound",
        Some(Kind::DeviceDisabled(_)) => "deviceDisabled",
        Some(Kind::DispatchFailed(_)) => "dispatchFailed",
    }
}

/// A job's devices as a CSV file with a header row: what IoT Central's results log offers, plus
/// the reason of each failure and the device's answer.
pub fn job_devices_csv(devices: &[pb::JobDevice]) -> String {
    let mut out = csv_record(&[
        "deviceId",
        "run",
        "batch",
        "status",
        "attempts",
        "dispatchedAt",
        "finishedAt",
        "failureReason",
        "lastError",
        "responseStatus",
        "responseBody",
    ]);
    for d in devices {
        out.push_str(&csv_record(&[
            d.device_id.clone(),
            d.run.to_string(),
            d.batch.to_string(),
            device_status(d.status).to_string(),
            d.attempts.to_string(),
            d.dispatched_at_ms.map(time).unwrap_or_default(),
            d.finished_at_ms.map(time).unwrap_or_default(),
            failure_code(d.last_error_reason.as_ref()).to_string(),
            d.last_error.clone(),
            d.response_status.map(|s| s.to_string()).unwrap_or_default(),
            d.response_payload_json.clone().unwrap_or_default(),
        ]));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// A streamed event as one JSON object (`muster events follow --output json` prints one a line).
pub fn event_json(e: &pb::StreamedEvent) -> Value {
    let mut m = Map::new();
    m.insert("seq".into(), json!(e.seq));
    m.insert("time".into(), json!(time(e.at_ms)));
    m.insert("type".into(), json!(e.r#type));
    if !e.job_id.is_empty() {
        m.insert("jobId".into(), json!(e.job_id));
    }
    if !e.device_id.is_empty() {
        m.insert("deviceId".into(), json!(e.device_id));
    }
    if !e.hash.is_empty() {
        m.insert("hash".into(), json!(hex(&e.hash)));
    }
    if !e.principal.is_empty() {
        m.insert("principal".into(), json!(e.principal));
    }
    m.insert("body".into(), json_value(&e.body_json));
    Value::Object(m)
}

/// A streamed event as one line for people: seq, time, type, job, device, principal (who the
/// command was written on behalf of; `-` from a server that does not say).
pub fn event_line(e: &pb::StreamedEvent) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{:>8}  {}  {:<18} {:<20} {:<20} {}",
        e.seq,
        time(e.at_ms),
        e.r#type,
        dash(&e.job_id),
        dash(&e.device_id),
        dash(&e.principal)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod csv_tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
        assert_eq!(csv_field(" padded"), "\" padded\"");
    }

    #[test]
    fn a_device_row_has_every_column() {
        let d = pb::JobDevice {
            device_id: "d1".into(),
            run: 0,
            batch: 1,
            status: pb::DeviceStatus::Failed as i32,
            attempts: 2,
            dispatched_at_ms: Some(0),
            finished_at_ms: None,
            last_error: "device answered 500".into(),
            last_error_reason: Some(pb::FailureReason {
                kind: Some(pb::failure_reason::Kind::DeviceError(
                    pb::failure_reason::DeviceError { status: 500 },
                )),
            }),
            response_status: Some(500),
            response_payload_json: Some(r#"{"error":"disk full, retry"}"#.into()),
        };
        let csv = job_devices_csv(&[d]);
        let lines: Vec<&str> = csv.split("\r\n").collect();
        assert_eq!(lines.len(), 3, "{csv:?}");
        assert!(lines[0].starts_with("deviceId,run,batch,status,attempts,"));
        assert_eq!(
            lines[1],
            r#"d1,0,1,failed,2,1970-01-01T00:00:00.000Z,,deviceError,device answered 500,500,"{""error"":""disk full, retry""}""#
        );
        assert_eq!(lines[2], "");
    }
}
