//! `muster job create`: the job spec from flags (the common case) or from a file.
//!
//! Flags are checked only for their syntax here (`25%` or `10`, JSON that parses); the server
//! checks the spec itself, with the same messages for every client.

use anyhow::{anyhow, bail, Context};
use muster_domain::JobSpec;
use muster_proto::pb;
use serde_json::Value;

/// How `job create` is told what to do.
#[derive(Debug, clap::Args)]
pub struct SpecArgs {
    /// A spec file (`-` for stdin): either an IoT Central job body (`{"group": "G",
    /// "data": [{"type": "CommandJobData", "path": "reboot", "value": {...}}], "batch": ...,
    /// "cancellationThreshold": ...}`), or the `spec` that `muster job get ID --output json`
    /// prints (muster's own JobSpec as JSON, every field present). Other flags are not allowed
    /// with --file.
    #[arg(long, value_name = "PATH", conflicts_with_all = [
        "method", "payload", "desired", "tags", "devices", "group", "query", "batch", "threshold",
        "per_batch", "continuous", "response_timeout", "connect_timeout", "max_attempts",
        "display_name", "description", "start_at", "max_execution_time", "rate",
        "window_cron", "window_duration", "window_tz", "rate_base", "rate_factor",
        "rate_increase_after", "rate_max", "abort", "backoff", "backoff_failed",
        "backoff_timed_out", "gate_success", "gate_on_failure", "pause_after_each_batch",
    ])]
    pub file: Option<String>,

    /// Call this direct method on every device.
    #[arg(long)]
    pub method: Option<String>,
    /// The method's payload, JSON text (default: null).
    #[arg(long, value_name = "JSON", requires = "method")]
    pub payload: Option<String>,
    /// Merge-patch the devices' desired properties with this JSON object (a twin job).
    #[arg(long, value_name = "JSON")]
    pub desired: Option<String>,
    /// Merge-patch the devices' tags with this JSON object (a twin job).
    #[arg(long, value_name = "JSON")]
    pub tags: Option<String>,

    /// Target these devices (comma-separated ids).
    #[arg(long, value_delimiter = ',', value_name = "IDS", conflicts_with_all = ["group", "query"])]
    pub devices: Vec<String>,
    /// Target the devices of this device group.
    #[arg(long, conflicts_with = "query")]
    pub group: Option<String>,
    /// Target the devices matching this query: a full `SELECT * FROM devices WHERE ...` or just
    /// the condition after WHERE.
    #[arg(long)]
    pub query: Option<String>,
    /// Devices that start matching the group or query later join the job while it runs.
    #[arg(long)]
    pub continuous: bool,

    /// Roll out in batches: a percentage of the devices (`25%`) or a count (`10`).
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<String>,
    /// Cancel the job when more than this many devices fail: a percentage (`10%`) or a count.
    #[arg(long, value_name = "N|P%")]
    pub threshold: Option<String>,
    /// Count the threshold within each batch instead of over the whole job.
    #[arg(long, requires = "threshold")]
    pub per_batch: bool,
    /// At most this many devices are started per minute.
    #[arg(long, value_name = "DEVICES_PER_MINUTE")]
    pub rate: Option<u32>,

    /// Seconds a device has to answer the method.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub response_timeout: u32,
    /// Seconds to wait for an offline device to connect (0: offline devices fail at once).
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub connect_timeout: u32,
    /// Attempts per device, the first included; failures and timeouts are retried up to it.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub max_attempts: u32,

    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Start at this time (RFC 3339, e.g. 2030-01-01T00:00:00Z) instead of at once.
    #[arg(long, value_name = "TIME")]
    pub start_at: Option<String>,
    /// Fail the job if it runs longer than this many seconds.
    #[arg(long, value_name = "SECS")]
    pub max_execution_time: Option<u64>,
    /// Dispatch devices only inside a maintenance window opening at each occurrence of this cron
    /// expression (5 fields, or 6 with seconds first), e.g. "0 1 * * *" for 01:00 every night.
    #[arg(long, value_name = "CRON", requires = "window_duration")]
    pub window_cron: Option<String>,
    /// How long each maintenance window stays open, in seconds.
    #[arg(long, value_name = "SECS", requires = "window_cron")]
    pub window_duration: Option<u32>,
    /// The IANA time zone the window's cron is read in.
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    pub window_tz: String,

    #[command(flatten)]
    pub rollout: super::rollout::RolloutArgs,
}

/// The spec to send for job `id`.
pub fn build(id: &str, args: SpecArgs) -> anyhow::Result<pb::JobSpec> {
    match &args.file {
        Some(path) => from_file(id, path),
        None => from_flags(args),
    }
}

fn from_file(id: &str, path: &str) -> anyhow::Result<pb::JobSpec> {
    let text = super::read_input(path)?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("{path} is not valid JSON"))?;
    // muster's own spec always has `operations`; an IoT Central body never does (it has `data`).
    if value.get("operations").is_some() {
        let spec: JobSpec = serde_json::from_value(value)
            .with_context(|| format!("{path} is not a muster job spec"))?;
        Ok(pb::JobSpec::from(&spec))
    } else {
        let req = muster_api::job_request_from_central(&text, id)
            .map_err(|e| anyhow!("{path}: {}", e.message))?;
        Ok(pb::JobSpec::from(&req.spec))
    }
}

fn from_flags(a: SpecArgs) -> anyhow::Result<pb::JobSpec> {
    use pb::operation::Kind;
    let rollout = a.rollout.parse()?;
    let mut operations = Vec::new();
    if let Some(name) = a.method {
        operations.push(pb::Operation {
            kind: Some(Kind::InvokeMethod(pb::MethodCall {
                name,
                payload_json: json_flag("--payload", a.payload.as_deref().unwrap_or("null"))?,
                response_timeout_secs: a.response_timeout,
                connect_timeout_secs: a.connect_timeout,
            })),
        });
    }
    if let Some(d) = a.desired {
        operations.push(pb::Operation {
            kind: Some(Kind::PatchDesired(pb::operation::PatchDesired {
                patch_json: json_flag("--desired", &d)?,
            })),
        });
    }
    if let Some(t) = a.tags {
        operations.push(pb::Operation {
            kind: Some(Kind::PatchTags(pb::operation::PatchTags {
                patch_json: json_flag("--tags", &t)?,
            })),
        });
    }
    if operations.is_empty() {
        bail!(
            "say what the job does: --method NAME, --desired JSON or --tags JSON (or give --file)"
        );
    }
    let selector = if !a.devices.is_empty() {
        pb::target::Selector::Devices(pb::DeviceList {
            device_ids: a.devices,
        })
    } else if let Some(g) = a.group {
        pb::target::Selector::GroupId(g)
    } else if let Some(q) = a.query {
        pb::target::Selector::Query(full_query(&q))
    } else {
        bail!("say which devices: --devices a,b, --group G or --query Q");
    };
    let start_at_ms = a
        .start_at
        .map(|t| {
            muster_types::Timestamp::parse_rfc3339(&t)
                .map(|t| t.millis())
                .map_err(|e| anyhow!("--start-at: {e}"))
        })
        .transpose()?;
    let batch = a
        .batch
        .map(|b| {
            amount("--batch", &b).map(|(pct, n)| pb::BatchSize {
                kind: Some(if pct {
                    pb::batch_size::Kind::Percentage(n)
                } else {
                    pb::batch_size::Kind::Count(n)
                }),
            })
        })
        .transpose()?;
    let cancellation = a
        .threshold
        .map(|t| {
            amount("--threshold", &t).map(|(pct, n)| pb::CancellationThreshold {
                limit: Some(pb::Threshold {
                    kind: Some(if pct {
                        pb::threshold::Kind::Percentage(n)
                    } else {
                        pb::threshold::Kind::Count(n)
                    }),
                }),
                per_batch: a.per_batch,
            })
        })
        .transpose()?;
    Ok(pb::JobSpec {
        display_name: a.display_name.unwrap_or_default(),
        description: a.description.unwrap_or_default(),
        target: Some(pb::Target {
            selector: Some(selector),
            continuous: a.continuous,
        }),
        operations,
        schedule: Some(pb::Schedule {
            start_at_ms,
            max_execution_secs: a.max_execution_time,
        }),
        rollout: Some(pb::Rollout {
            batch,
            max_devices_per_minute: a.rate,
            exponential: rollout.exponential,
            gate: rollout.gate,
            abort: rollout.abort,
        }),
        cancellation,
        retry: Some(pb::RetryPolicy {
            max_attempts: a.max_attempts,
            retry_failed: a.max_attempts > 1,
            retry_timed_out: a.max_attempts > 1,
            backoff_failed: rollout.backoff_failed,
            backoff_timed_out: rollout.backoff_timed_out,
        }),
        maintenance_window: a.window_cron.map(|cron| pb::MaintenanceWindow {
            cron,
            duration_secs: a.window_duration.unwrap_or_default(),
            time_zone: a.window_tz,
        }),
    })
}

/// A query flag: the full statement, or just its condition.
pub fn full_query(q: &str) -> String {
    let starts_with_select = q
        .trim_start()
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case("select"));
    if starts_with_select {
        q.to_string()
    } else {
        format!("SELECT * FROM devices WHERE {q}")
    }
}

/// Checks that a flag's value is JSON and returns it compact.
pub fn json_flag(flag: &str, text: &str) -> anyhow::Result<String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| anyhow!("{flag} is not valid JSON: {e}"))?;
    Ok(v.to_string())
}

/// `25%` -> (true, 25); `10` -> (false, 10).
fn amount(flag: &str, text: &str) -> anyhow::Result<(bool, u32)> {
    let (pct, digits) = match text.strip_suffix('%') {
        Some(d) => (true, d),
        None => (false, text),
    };
    let n = digits.trim().parse().map_err(|_| {
        anyhow!("{flag}: expected a count like 10 or a percentage like 25%, got {text:?}")
    })?;
    Ok((pct, n))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(amount("--batch", "25%").unwrap(), (true, 25));
        assert_eq!(amount("--batch", "10").unwrap(), (false, 10));
        assert!(amount("--batch", "ten").is_err());
        assert!(amount("--batch", "-1%").is_err());
    }

    #[test]
    fn queries_may_be_just_the_condition() {
        assert_eq!(
            full_query("tags.site = 'b43'"),
            "SELECT * FROM devices WHERE tags.site = 'b43'"
        );
        assert_eq!(full_query("select * from devices"), "select * from devices");
        assert_eq!(full_query("x"), "SELECT * FROM devices WHERE x");
        assert_eq!(full_query("é = 1"), "SELECT * FROM devices WHERE é = 1");
    }
}
