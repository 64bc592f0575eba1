//! The workload: concurrent clients sending job, twin and read operations to random nodes over
//! gRPC, each recorded with its invocation and completion time and its outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::pb;
use serde_json::json;
use tokio::time::Instant;

use super::history::{Op, OpKind, Outcome, Seen};
use super::schedule::Rng;
use crate::AuthChannel;

/// How long a client waits for one answer before recording it as indeterminate.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the clients share: the history, and the jobs created so far (for control ops).
#[derive(Debug, Default)]
pub struct Shared {
    pub history: Vec<Op>,
    pub jobs: Vec<String>,
    next_id: u64,
}

/// One client's setting.
#[derive(Debug)]
pub struct Client {
    pub id: usize,
    /// A channel per node (index 0 is node 1).
    pub channels: Vec<AuthChannel>,
    /// Simulated devices the jobs target.
    pub sim_devices: Vec<String>,
    /// Devices whose tags the workload writes (nobody else touches them).
    pub twin_devices: Vec<String>,
    pub seed: u64,
}

/// The outcome of a gRPC answer: judged and refused, or may-or-may-not.
pub fn outcome_of<T>(
    r: Result<Result<T, tonic::Status>, tokio::time::error::Elapsed>,
    seen: impl FnOnce(T) -> Seen,
) -> Outcome {
    match r {
        Err(_) => Outcome::Unknown(format!("no answer within {OP_TIMEOUT:?}")),
        Ok(Ok(v)) => Outcome::Ok(seen(v)),
        Ok(Err(s)) => {
            use tonic::Code::*;
            let text = format!("{:?}: {}", s.code(), s.message());
            match s.code() {
                InvalidArgument | NotFound | AlreadyExists | FailedPrecondition
                | PermissionDenied | Unauthenticated | OutOfRange | Unimplemented
                | ResourceExhausted => Outcome::Refused(text),
                _ => Outcome::Unknown(text),
            }
        }
    }
}

fn method_job(devices: Vec<String>) -> pb::JobSpec {
    pb::JobSpec {
        display_name: "nemesis".into(),
        target: Some(pb::Target {
            selector: Some(pb::target::Selector::Devices(pb::DeviceList {
                device_ids: devices,
            })),
            continuous: false,
        }),
        operations: vec![pb::Operation {
            kind: Some(pb::operation::Kind::InvokeMethod(pb::MethodCall {
                name: "reboot".into(),
                payload_json: json!({"delay": 0}).to_string(),
                response_timeout_secs: 5,
                connect_timeout_secs: 0,
            })),
        }],
        rollout: Some(pb::Rollout {
            batch: Some(pb::BatchSize {
                kind: Some(pb::batch_size::Kind::Count(2)),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn timeout<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(OP_TIMEOUT, f)
}

/// Runs client operations until `until`, appending each to `shared`.
pub async fn run(client: Client, shared: Arc<Mutex<Shared>>, start: Instant, until: Instant) {
    let mut rng = Rng::new(client.seed ^ (client.id as u64).wrapping_mul(0x1234_5678_9ABC));
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let node = 1 + rng.below(client.channels.len() as u64) as usize;
        let ch = client.channels[node - 1].clone();
        let mut jobs = pb::job_service_client::JobServiceClient::new(ch.clone());
        let mut devices = pb::device_service_client::DeviceServiceClient::new(ch);
        let known_job = {
            let s = shared.lock().map(|s| s.jobs.clone()).unwrap_or_default();
            if s.is_empty() {
                None
            } else {
                Some(s[rng.below(s.len() as u64) as usize].clone())
            }
        };
        let roll = rng.below(100);
        let kind = match (roll, known_job) {
            (0..15, _) | (15..37, None) | (82.., None) => OpKind::CreateJob {
                job: format!("nem-c{}-{seq}", client.id),
            },
            (15..22, Some(job)) => OpKind::StopJob { job },
            (22..29, Some(job)) => OpKind::ResumeJob { job },
            (29..33, Some(job)) => OpKind::CancelJob { job },
            (33..37, Some(job)) => OpKind::RerunJob {
                job,
                rerun: format!("r-c{}-{seq}", client.id),
            },
            (37..62, _) => OpKind::TwinWrite {
                device: client.twin_devices[rng.below(client.twin_devices.len() as u64) as usize]
                    .clone(),
                key: format!("c{}o{seq}", client.id),
            },
            (62..82, _) => OpKind::ReadTwin {
                device: client.twin_devices[rng.below(client.twin_devices.len() as u64) as usize]
                    .clone(),
            },
            (_, Some(job)) => OpKind::ReadJob { job },
        };
        let invoked = start.elapsed().as_micros() as u64;
        let outcome = match &kind {
            OpKind::CreateJob { job } => {
                let n = 3 + rng.below(4) as usize;
                let targets = (0..n)
                    .map(|_| {
                        client.sim_devices[rng.below(client.sim_devices.len() as u64) as usize]
                            .clone()
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let req = pb::CreateJobRequest {
                    job_id: job.clone(),
                    spec: Some(method_job(targets)),
                };
                outcome_of(timeout(jobs.create_job(req)).await, |_| Seen::Nothing)
            }
            OpKind::StopJob { job } => {
                let req = pb::StopJobRequest {
                    job_id: job.clone(),
                };
                outcome_of(timeout(jobs.stop_job(req)).await, |_| Seen::Nothing)
            }
            OpKind::ResumeJob { job } => {
                let req = pb::ResumeJobRequest {
                    job_id: job.clone(),
                };
                outcome_of(timeout(jobs.resume_job(req)).await, |_| Seen::Nothing)
            }
            OpKind::CancelJob { job } => {
                let req = pb::CancelJobRequest {
                    job_id: job.clone(),
                };
                outcome_of(timeout(jobs.cancel_job(req)).await, |_| Seen::Nothing)
            }
            OpKind::RerunJob { job, rerun } => {
                let req = pb::RerunJobRequest {
                    job_id: job.clone(),
                    rerun_id: rerun.clone(),
                };
                outcome_of(timeout(jobs.rerun_job(req)).await, |_| Seen::Nothing)
            }
            OpKind::TwinWrite { device, key } => {
                let req = pb::UpdateTwinRequest {
                    device_id: device.clone(),
                    tags_json: Some(json!({ key.as_str(): true }).to_string()),
                    ..Default::default()
                };
                outcome_of(timeout(devices.update_twin(req)).await, |_| Seen::Nothing)
            }
            OpKind::ReadTwin { device } => {
                let req = pb::GetDeviceRequest {
                    device_id: device.clone(),
                    stale_ok: false,
                };
                outcome_of(timeout(devices.get_device(req)).await, |r| {
                    Seen::Keys(tag_keys(&r.into_inner().tags_json))
                })
            }
            OpKind::ReadJob { job } => {
                let req = pb::GetJobRequest {
                    job_id: job.clone(),
                    stale_ok: false,
                };
                match timeout(jobs.get_job(req)).await {
                    Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                        Outcome::Ok(Seen::Job(false))
                    }
                    r => outcome_of(r, |_| Seen::Job(true)),
                }
            }
        };
        let completed = start.elapsed().as_micros() as u64;
        let refused = !matches!(outcome, Outcome::Ok(_) | Outcome::Unknown(_));
        if let Ok(mut s) = shared.lock() {
            if let OpKind::CreateJob { job } = &kind {
                if !refused {
                    s.jobs.push(job.clone());
                }
            }
            let id = s.next_id;
            s.next_id += 1;
            s.history.push(Op {
                id,
                client: client.id,
                node,
                kind,
                invoked,
                completed,
                outcome,
            });
        }
        if refused {
            // A refusal is quick: do not spin on a node that refuses everything.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The keys of a tags JSON object (none for anything else).
pub fn tag_keys(tags_json: &str) -> std::collections::BTreeSet<String> {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(tags_json)
        .map(|m| m.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}
