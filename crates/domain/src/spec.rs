//! What an operator asks for: the job spec, and the checks that make a bad one fail early with the
//! field named.
//!
//! A spec is validated once, in `decide` for `CreateJob`; everything after trusts it. Limits here
//! are about keeping one entry of the replicated log bounded, not about capping what users can do.

use muster_types::{DeviceId, GroupId, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DomainError;
use crate::query::Query;
use crate::rollout::{AbortCriterion, Backoff, ExponentialRate, Gate};

/// IoT Hub's limit for a direct method payload.
pub const MAX_METHOD_PAYLOAD_BYTES: usize = 128 * 1024;
/// A twin patch travels in one log entry and to the device in one MQTT message.
pub const MAX_PATCH_BYTES: usize = 32 * 1024;
/// Nesting depth IoT Hub allows in twin documents.
pub const MAX_PATCH_DEPTH: usize = 10;
pub const MAX_OPERATIONS: usize = 16;
pub const MAX_ATTEMPTS: u32 = 10;
/// The longest maximum execution time, in seconds (IoT Hub's `maxExecutionTimeInSeconds` is a
/// 32-bit number; about 136 years). Larger values would overflow the deadline arithmetic.
pub const MAX_EXECUTION_SECS: u64 = u32::MAX as u64;
/// The explicit device list is stored in the `JobCreated` entry; larger fleets use a group or query.
pub const MAX_EXPLICIT_DEVICES: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub display_name: String,
    pub description: String,
    pub target: Target,
    pub operations: Vec<Operation>,
    pub schedule: Schedule,
    pub rollout: Rollout,
    pub cancellation: Option<CancellationThreshold>,
    pub retry: RetryPolicy,
}

/// Which devices a job runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub selector: TargetSelector,
    /// Devices that start matching while the job is active join it (a group or query target only).
    pub continuous: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TargetSelector {
    Devices(Vec<DeviceId>),
    /// Resolved to the group's filter when the job is created; later edits of the group do not
    /// change a job that already exists.
    Group(GroupId),
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    /// A direct method, answered by the device over MQTT.
    InvokeMethod(MethodCall),
    /// Merge-patch of the desired properties; recorded in the registry and pushed to the device.
    PatchDesired { patch: Value },
    /// Merge-patch of the service-side tags.
    PatchTags { patch: Value },
    /// A cloud property lives only in muster (IoT Central's `CloudPropertyJobData`).
    SetCloudProperty { name: String, value: Value },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodCall {
    pub name: String,
    pub payload: Value,
    /// How long the device has to answer once the request is sent.
    pub response_timeout_secs: u32,
    /// How long to wait for an offline device to come online; 0 fails offline devices at once.
    pub connect_timeout_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Schedule {
    pub start_at: Option<Timestamp>,
    pub max_execution_secs: Option<u64>,
    /// Devices are dispatched only while this window is open (`None`: always).
    #[serde(default)]
    pub window: Option<crate::window::MaintenanceWindow>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rollout {
    /// `None` puts every device in one batch.
    pub batch: Option<BatchSize>,
    pub max_devices_per_minute: Option<u32>,
    /// A rate that rises as devices are notified or succeed (see `rollout::rate`).
    #[serde(default)]
    pub exponential: Option<ExponentialRate>,
    /// A condition between batches (see `rollout::gate`).
    #[serde(default)]
    pub gate: Option<Gate>,
    /// Criteria that cancel the job (see `rollout::abort`); the first one crossed wins.
    #[serde(default)]
    pub abort: Vec<AbortCriterion>,
}

impl Rollout {
    /// Whether dispatches are counted per minute (a fixed or an exponential rate).
    pub fn rate_limited(&self) -> bool {
        self.max_devices_per_minute.is_some() || self.exponential.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BatchSize {
    Percentage(u32),
    Count(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancellationThreshold {
    pub limit: Threshold,
    /// Counted within each batch instead of over the whole run.
    pub per_batch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Threshold {
    Percentage(u32),
    Count(u32),
}

impl Threshold {
    /// "Stop if more than 10% fail": crossed when failures strictly exceed the limit, for counts
    /// and percentages alike. Integer arithmetic keeps it exact.
    pub fn crossed(self, failures: u64, population: u64) -> bool {
        match self {
            Threshold::Count(c) => failures > u64::from(c),
            Threshold::Percentage(p) => failures * 100 > u64::from(p) * population,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Total attempts per device, the first included (1 = no retry).
    pub max_attempts: u32,
    pub retry_failed: bool,
    pub retry_timed_out: bool,
    /// Delay before retrying a failed device; `None` retries at once.
    #[serde(default)]
    pub backoff_failed: Option<Backoff>,
    /// Delay before retrying a timed-out device; `None` retries at once.
    #[serde(default)]
    pub backoff_timed_out: Option<Backoff>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            retry_failed: false,
            retry_timed_out: false,
            backoff_failed: None,
            backoff_timed_out: None,
        }
    }
}

impl BatchSize {
    /// Devices per batch for a run of `total` devices; never 0, so every run makes progress.
    pub fn per_batch(self, total: usize) -> usize {
        let n = match self {
            BatchSize::Count(c) => c as usize,
            BatchSize::Percentage(p) => (total * p as usize).div_ceil(100),
        };
        n.max(1)
    }
}

impl JobSpec {
    pub fn methods(&self) -> impl Iterator<Item = &MethodCall> {
        self.operations.iter().filter_map(|op| match op {
            Operation::InvokeMethod(m) => Some(m),
            _ => None,
        })
    }

    /// Whether devices must be reached over MQTT (and so be online) for the job to do its work.
    pub fn needs_device(&self) -> bool {
        self.methods().next().is_some()
    }

    /// How long a device may take to answer all of the job's methods, which run one after another.
    pub fn response_window_ms(&self) -> i64 {
        self.methods()
            .map(|m| i64::from(m.response_timeout_secs) * 1000)
            .sum()
    }

    /// How long an offline device is waited for.
    pub fn connect_window_ms(&self) -> i64 {
        self.methods()
            .map(|m| i64::from(m.connect_timeout_secs) * 1000)
            .max()
            .unwrap_or(0)
    }

    /// Checks everything that can be checked without the registry. Returns the compiled query of a
    /// query target so the caller does not parse it twice.
    pub fn validate(&self) -> Result<Option<Query>, DomainError> {
        check_text("displayName", &self.display_name, 256)?;
        check_text("description", &self.description, 4096)?;
        let query = match &self.target.selector {
            TargetSelector::Devices(ids) => {
                if ids.is_empty() {
                    return Err(invalid("target.devices", "list at least one device id"));
                }
                if ids.len() > MAX_EXPLICIT_DEVICES {
                    return Err(invalid(
                        "target.devices",
                        format!(
                            "{} device ids given; at most {MAX_EXPLICIT_DEVICES} may be listed, use a group or query for more",
                            ids.len()
                        ),
                    ));
                }
                if self.target.continuous {
                    return Err(invalid(
                        "target.continuous",
                        "only a group or query target can be continuous",
                    ));
                }
                None
            }
            TargetSelector::Group(_) => None,
            TargetSelector::Query(q) => {
                Some(Query::parse(q).map_err(|e| DomainError::Invalid {
                    field: "target.query".into(),
                    message: e.to_string(),
                })?)
            }
        };
        if self.operations.is_empty() {
            return Err(invalid(
                "operations",
                "give at least one operation (a method, a desired-property patch, a tags patch or a cloud property)",
            ));
        }
        if self.operations.len() > MAX_OPERATIONS {
            return Err(invalid(
                "operations",
                format!("at most {MAX_OPERATIONS} operations per job"),
            ));
        }
        for (i, op) in self.operations.iter().enumerate() {
            validate_operation(i, op)?;
        }
        if let Some(t) = self.schedule.start_at {
            if !t.in_rfc3339_range() {
                return Err(invalid(
                    "schedule.startTime",
                    format!(
                        "must be between {} and {}, got {} ms since the epoch",
                        Timestamp::RFC3339_MIN.to_rfc3339(),
                        Timestamp::RFC3339_MAX.to_rfc3339(),
                        t.millis()
                    ),
                ));
            }
        }
        if let Some(secs) = self.schedule.max_execution_secs {
            if secs == 0 || secs > MAX_EXECUTION_SECS {
                return Err(invalid(
                    "schedule.maxExecutionTimeInSeconds",
                    format!("must be between 1 and {MAX_EXECUTION_SECS} seconds, got {secs}"),
                ));
            }
        }
        if let Some(w) = &self.schedule.window {
            w.validate("maintenanceWindow")?;
        }
        match self.rollout.batch {
            Some(BatchSize::Percentage(p)) if p == 0 || p > 100 => {
                return Err(invalid(
                    "batch.value",
                    format!("batch percentage must be between 1 and 100, got {p}"),
                ))
            }
            Some(BatchSize::Count(0)) => {
                return Err(invalid(
                    "batch.value",
                    "batch size must be at least 1 device",
                ))
            }
            _ => {}
        }
        if self.rollout.max_devices_per_minute == Some(0) {
            return Err(invalid(
                "rollout.maxDevicesPerMinute",
                "must be at least 1 (leave it out for no limit)",
            ));
        }
        if let Some(e) = &self.rollout.exponential {
            e.validate()?;
        }
        if let Some(g) = &self.rollout.gate {
            g.validate()?;
        }
        crate::rollout::abort::validate(&self.rollout.abort)?;
        if let Some(b) = &self.retry.backoff_failed {
            b.validate("retry.backoffFailed")?;
        }
        if let Some(b) = &self.retry.backoff_timed_out {
            b.validate("retry.backoffTimedOut")?;
        }
        if let Some(t) = self.cancellation {
            match t.limit {
                Threshold::Percentage(p) if p == 0 || p > 100 => {
                    return Err(invalid(
                        "cancellationThreshold.value",
                        format!("threshold percentage must be between 1 and 100, got {p}"),
                    ))
                }
                Threshold::Count(0) => {
                    return Err(invalid(
                        "cancellationThreshold.value",
                        "threshold count must be at least 1",
                    ))
                }
                _ => {}
            }
        }
        if self.retry.max_attempts == 0 || self.retry.max_attempts > MAX_ATTEMPTS {
            return Err(invalid(
                "retry.maxAttempts",
                format!(
                    "must be between 1 and {MAX_ATTEMPTS} (1 means no retry), got {}",
                    self.retry.max_attempts
                ),
            ));
        }
        Ok(query)
    }
}

fn invalid(field: &str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), DomainError> {
    let len = s.chars().count();
    if len > max {
        return Err(invalid(
            field,
            format!("{len} characters; at most {max} are allowed"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn validate_operation(i: usize, op: &Operation) -> Result<(), DomainError> {
    let field = |name: &str| format!("operations[{i}].{name}");
    match op {
        Operation::InvokeMethod(m) => {
            check_name(&field("methodName"), &m.name, 128)?;
            let size = serialized_len(&m.payload);
            if size > MAX_METHOD_PAYLOAD_BYTES {
                return Err(DomainError::TooLarge {
                    field: field("payload"),
                    size,
                    max: MAX_METHOD_PAYLOAD_BYTES,
                });
            }
            if m.response_timeout_secs == 0 || m.response_timeout_secs > 3600 {
                return Err(invalid(
                    &field("responseTimeoutInSeconds"),
                    format!(
                        "must be between 1 and 3600 seconds, got {}",
                        m.response_timeout_secs
                    ),
                ));
            }
            if m.connect_timeout_secs > 3600 {
                return Err(invalid(
                    &field("connectTimeoutInSeconds"),
                    format!(
                        "must be between 0 and 3600 seconds, got {}",
                        m.connect_timeout_secs
                    ),
                ));
            }
        }
        Operation::PatchDesired { patch } => check_patch(&field("patch"), patch)?,
        Operation::PatchTags { patch } => check_patch(&field("patch"), patch)?,
        Operation::SetCloudProperty { name, value } => {
            check_name(&field("path"), name, 128)?;
            let size = serialized_len(value);
            if size > MAX_PATCH_BYTES {
                return Err(DomainError::TooLarge {
                    field: field("value"),
                    size,
                    max: MAX_PATCH_BYTES,
                });
            }
        }
    }
    Ok(())
}

/// Method and property names go into MQTT topics and query paths: the IoT Hub seed's rule
/// (printable US-ASCII without separators) keeps them safe there.
pub(crate) fn check_name(field: &str, name: &str, max: usize) -> Result<(), DomainError> {
    if name.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > max {
        return Err(invalid(
            field,
            format!("{} characters; at most {max} are allowed", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_graphic() || "$()<>@,;:\\\"/[]?={}".contains(*c))
    {
        return Err(invalid(
            field,
            format!("{name:?} contains {c:?}; names are printable US-ASCII without spaces or any of $ ( ) < > @ , ; : \\ \" / [ ] ? = {{ }}"),
        ));
    }
    Ok(())
}

/// A twin patch must be a JSON object with valid property names, bounded in size and depth.
pub(crate) fn check_patch(field: &str, patch: &Value) -> Result<(), DomainError> {
    let Value::Object(map) = patch else {
        return Err(invalid(
            field,
            "must be a JSON object such as {\"fw\": \"1.2\"}",
        ));
    };
    if map.is_empty() {
        return Err(invalid(field, "must set at least one property"));
    }
    let size = serialized_len(patch);
    if size > MAX_PATCH_BYTES {
        return Err(DomainError::TooLarge {
            field: field.to_string(),
            size,
            max: MAX_PATCH_BYTES,
        });
    }
    check_keys(field, patch, 1)
}

fn check_keys(field: &str, v: &Value, depth: usize) -> Result<(), DomainError> {
    if let Value::Object(map) = v {
        if depth > MAX_PATCH_DEPTH {
            return Err(invalid(
                field,
                format!("nested deeper than {MAX_PATCH_DEPTH} levels"),
            ));
        }
        for (k, child) in map {
            check_name(&format!("{field}.{k}"), k, 128)?;
            check_keys(field, child, depth + 1)?;
        }
    }
    Ok(())
}

pub(crate) fn serialized_len(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> JobSpec {
        JobSpec {
            display_name: "reboot".into(),
            description: String::new(),
            target: Target {
                selector: TargetSelector::Query("SELECT * FROM devices".into()),
                continuous: false,
            },
            operations: vec![Operation::InvokeMethod(MethodCall {
                name: "reboot".into(),
                payload: json!({}),
                response_timeout_secs: 30,
                connect_timeout_secs: 0,
            })],
            schedule: Schedule::default(),
            rollout: Rollout::default(),
            cancellation: None,
            retry: RetryPolicy::default(),
        }
    }

    fn field_of(spec: &JobSpec) -> String {
        match spec.validate() {
            Err(DomainError::Invalid { field, .. }) => field,
            Err(DomainError::TooLarge { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        assert!(base().validate().is_ok());
    }

    /// Issue 18: `max_execution_secs` >= 2^63 wrapped negative and failed the job at once; a
    /// start of i64::MAX rendered as a year past 9999.
    #[test]
    fn schedule_numbers_have_checked_ranges() {
        for secs in [0, MAX_EXECUTION_SECS + 1, 1 << 63, u64::MAX] {
            let mut s = base();
            s.schedule.max_execution_secs = Some(secs);
            assert_eq!(field_of(&s), "schedule.maxExecutionTimeInSeconds", "{secs}");
        }
        let mut s = base();
        s.schedule.max_execution_secs = Some(MAX_EXECUTION_SECS);
        assert!(s.validate().is_ok());
        for ms in [i64::MIN, i64::MAX, Timestamp::RFC3339_MAX.millis() + 1] {
            let mut s = base();
            s.schedule.start_at = Some(Timestamp::from_millis(ms));
            assert_eq!(field_of(&s), "schedule.startTime", "{ms}");
        }
        for t in [Timestamp::RFC3339_MIN, Timestamp::RFC3339_MAX] {
            let mut s = base();
            s.schedule.start_at = Some(t);
            assert!(s.validate().is_ok());
            let text = t.to_rfc3339();
            assert_eq!(Timestamp::parse_rfc3339(&text), Ok(t), "{text}");
        }
    }

    #[test]
    fn bad_batch_percentages_name_the_field() {
        for p in [0, 101, 1000] {
            let mut s = base();
            s.rollout.batch = Some(BatchSize::Percentage(p));
            assert_eq!(field_of(&s), "batch.value");
        }
        let mut s = base();
        s.rollout.batch = Some(BatchSize::Count(0));
        assert_eq!(field_of(&s), "batch.value");
    }

    #[test]
    fn empty_operations_are_rejected() {
        let mut s = base();
        s.operations.clear();
        assert_eq!(field_of(&s), "operations");
    }

    #[test]
    fn oversized_payload_is_too_large() {
        let mut s = base();
        s.operations = vec![Operation::InvokeMethod(MethodCall {
            name: "fw".into(),
            payload: json!({"blob": "x".repeat(MAX_METHOD_PAYLOAD_BYTES)}),
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })];
        let err = s.validate().unwrap_err();
        assert!(
            matches!(err, DomainError::TooLarge { ref field, .. } if field == "operations[0].payload")
        );
        assert!(err.to_string().contains("operations[0].payload"));
    }

    #[test]
    fn malformed_query_is_rejected_with_the_field() {
        let mut s = base();
        s.target.selector = TargetSelector::Query("SELECT * FROM devices WHERE".into());
        assert_eq!(field_of(&s), "target.query");
    }

    #[test]
    fn bad_method_name_and_patch() {
        let mut s = base();
        s.operations = vec![Operation::InvokeMethod(MethodCall {
            name: "a/b".into(),
            payload: json!(null),
            response_timeout_secs: 30,
            connect_timeout_secs: 0,
        })];
        assert_eq!(field_of(&s), "operations[0].methodName");
        s.operations = vec![Operation::PatchDesired { patch: json!(3) }];
        assert_eq!(field_of(&s), "operations[0].patch");
        s.operations = vec![Operation::PatchDesired {
            patch: json!({"bad key": 1}),
        }];
        assert_eq!(field_of(&s), "operations[0].patch.bad key");
    }

    #[test]
    fn threshold_and_retry_limits() {
        let mut s = base();
        s.cancellation = Some(CancellationThreshold {
            limit: Threshold::Percentage(0),
            per_batch: false,
        });
        assert_eq!(field_of(&s), "cancellationThreshold.value");
        let mut s = base();
        s.retry.max_attempts = 0;
        assert_eq!(field_of(&s), "retry.maxAttempts");
    }

    #[test]
    fn threshold_is_strictly_more_than() {
        assert!(!Threshold::Percentage(10).crossed(4, 40));
        assert!(Threshold::Percentage(10).crossed(5, 40));
        assert!(Threshold::Percentage(10).crossed(1, 4));
        assert!(!Threshold::Count(3).crossed(3, 100));
        assert!(Threshold::Count(3).crossed(4, 100));
    }

    #[test]
    fn batch_sizes_round_up() {
        assert_eq!(BatchSize::Percentage(25).per_batch(4), 1);
        assert_eq!(BatchSize::Percentage(25).per_batch(40), 10);
        assert_eq!(BatchSize::Percentage(25).per_batch(41), 11);
        assert_eq!(BatchSize::Percentage(1).per_batch(3), 1);
        assert_eq!(BatchSize::Count(7).per_batch(3), 7);
    }
}
