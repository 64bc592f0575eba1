//! `muster.v1.JobService`.

use std::pin::Pin;

use futures::Stream;
use muster_cluster::{now, Cluster};
use muster_domain::{Command, JobSpec, Principal, State};
use muster_proto::pb;
use muster_types::{JobId, RerunId, RunId};
use tonic::{Request, Response, Status};

use super::convert::{self, Detail};
use super::{
    after, bad_token, caller, cluster_status, id_token, listed, next_token, page_size, parse_id,
    read_barrier, take_page,
};
use crate::watch::{self, WatchEnd};
use muster_domain::page_token::Listing;

/// What `ListJobs` page tokens are sealed for ([`muster_domain::page_token`]).
const LIST_JOBS: &str = "grpc JobService.ListJobs";
/// What `ListJobDevices` page tokens (a position in the run's device list) are sealed for.
const LIST_JOB_DEVICES: &str = "grpc JobService.ListJobDevices";

/// Default response timeout of a method call whose request left it at 0: IoT Hub's default.
const DEFAULT_RESPONSE_TIMEOUT_SECS: u32 = 30;

/// The job service over a cluster handle.
#[derive(Debug, Clone)]
pub struct JobApi {
    cluster: Cluster,
}

impl JobApi {
    pub fn new(cluster: Cluster) -> Self {
        JobApi { cluster }
    }

    /// Writes a command about one job on behalf of `who` and answers with the job as it is
    /// after the command.
    async fn write_then_get(
        &self,
        who: Principal,
        id: &JobId,
        command: Command,
    ) -> Result<pb::Job, Status> {
        self.cluster
            .write_as(who, command)
            .await
            .map_err(cluster_status)?;
        // `write` returns once the command is applied here, so the state already has its effect.
        self.cluster
            .reader()
            .read(|s| s.jobs.get(id).map(|j| convert::job(j, Detail::Full)))
            .ok_or_else(|| Status::not_found(format!("job {id} does not exist")))
    }
}

/// Fills in what a hand-written request may leave out, so that `{"job_id": "j", "spec":
/// {"target": ..., "operations": [...]}}` is a complete request (see the conventions at the top of
/// jobs.proto), then converts with the persisted format's checks. The domain's own validation
/// runs later in `decide`, with the same messages the REST API gives.
pub(crate) fn spec_from_request(id: &JobId, mut spec: pb::JobSpec) -> Result<JobSpec, Status> {
    if spec.display_name.is_empty() {
        spec.display_name = id.to_string();
    }
    spec.schedule.get_or_insert_with(Default::default);
    spec.rollout.get_or_insert_with(Default::default);
    let retry = spec.retry.get_or_insert_with(Default::default);
    if retry.max_attempts == 0 {
        retry.max_attempts = 1;
    }
    for op in &mut spec.operations {
        if let Some(pb::operation::Kind::InvokeMethod(m)) = &mut op.kind {
            if m.response_timeout_secs == 0 {
                m.response_timeout_secs = DEFAULT_RESPONSE_TIMEOUT_SECS;
            }
            if m.payload_json.is_empty() {
                m.payload_json = "null".into();
            }
        }
    }
    JobSpec::try_from(spec).map_err(|e| Status::invalid_argument(format!("spec.{e}")))
}

fn job_or_404(state: &State, id: &JobId, detail: Detail) -> Result<pb::Job, Status> {
    state
        .jobs
        .get(id)
        .map(|j| convert::job(j, detail))
        .ok_or_else(|| Status::not_found(format!("job {id} does not exist")))
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::JobProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: JobId = parse_id("job_id", &req.job_id)?;
        let spec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("spec: give the job's spec"))?;
        let spec = spec_from_request(&id, spec)?;
        let command = Command::CreateJob {
            id: id.clone(),
            spec,
            at: now(),
        };
        self.write_then_get(who, &id, command)
            .await
            .map(Response::new)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let req = request.into_inner();
        let id: JobId = parse_id("job_id", &req.job_id)?;
        read_barrier(&self.cluster, req.stale_ok).await?;
        self.cluster
            .reader()
            .read(|s| job_or_404(s, &id, Detail::Full))
            .map(Response::new)
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let listing = Listing::new(LIST_JOBS)
            .with("types", &listed(&req.types))
            .with("statuses", &listed(&req.statuses));
        let token: Option<JobId> = id_token(&listing, &req.page_token)?;
        let types = req
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| convert::job_type_filter(&format!("types[{i}]"), *t))
            .collect::<Result<Vec<_>, _>>()?;
        let statuses = req
            .statuses
            .iter()
            .enumerate()
            .map(|(i, s)| convert::job_status_filter(&format!("statuses[{i}]"), *s))
            .collect::<Result<Vec<_>, _>>()?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (jobs, more) = self.cluster.reader().read(|s| {
            let matching = s.jobs.range(after(token)).map(|(_, j)| j).filter(|j| {
                (types.is_empty() || types.contains(&convert::job_type(&j.spec)))
                    && (statuses.is_empty() || statuses.contains(&j.status))
            });
            let (page, more) = take_page(matching, size);
            let jobs: Vec<pb::Job> = page
                .into_iter()
                .map(|j| convert::job(j, Detail::Summary))
                .collect();
            (jobs, more)
        });
        let next_page_token = next_token(&listing, more, jobs.last().map(|j| j.job_id.as_str()));
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn stop_job(
        &self,
        request: Request<pb::StopJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let id: JobId = parse_id("job_id", &request.into_inner().job_id)?;
        let command = Command::StopJob {
            id: id.clone(),
            at: now(),
        };
        self.write_then_get(who, &id, command)
            .await
            .map(Response::new)
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let id: JobId = parse_id("job_id", &request.into_inner().job_id)?;
        let command = Command::ResumeJob {
            id: id.clone(),
            at: now(),
        };
        self.write_then_get(who, &id, command)
            .await
            .map(Response::new)
    }

    async fn continue_job(
        &self,
        request: Request<pb::ContinueJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let id: JobId = parse_id("job_id", &request.into_inner().job_id)?;
        let command = Command::ContinueJob {
            id: id.clone(),
            at: now(),
        };
        self.write_then_get(who, &id, command)
            .await
            .map(Response::new)
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let id: JobId = parse_id("job_id", &request.into_inner().job_id)?;
        let command = Command::CancelJob {
            id: id.clone(),
            at: now(),
        };
        self.write_then_get(who, &id, command)
            .await
            .map(Response::new)
    }

    async fn rerun_job(
        &self,
        request: Request<pb::RerunJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: JobId = parse_id("job_id", &req.job_id)?;
        let rerun_id: RerunId = parse_id("rerun_id", &req.rerun_id)?;
        let command = Command::RerunJob {
            id: id.clone(),
            rerun_id,
            at: now(),
        };
        self.write_then_get(who, &id, command)
            .await
            .map(Response::new)
    }

    async fn list_device_jobs(
        &self,
        request: Request<pb::ListDeviceJobsRequest>,
    ) -> Result<Response<pb::ListDeviceJobsResponse>, Status> {
        super::query::list_device_jobs(&self.cluster, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_job_devices(
        &self,
        request: Request<pb::ListJobDevicesRequest>,
    ) -> Result<Response<pb::ListJobDevicesResponse>, Status> {
        let req = request.into_inner();
        let id: JobId = parse_id("job_id", &req.job_id)?;
        let status = convert::device_status_filter("status", req.status)?;
        // A position in the run's device list: devices are only ever appended to a run, so a
        // position stays valid between pages.
        let listing = Listing::new(LIST_JOB_DEVICES)
            .with("job_id", id.as_str())
            .with("run", &req.run.map(|r| r.to_string()).unwrap_or_default())
            .with("status", &req.status.to_string());
        let start: usize = id_token::<String>(&listing, &req.page_token)?
            .map_or(Ok(0), |position| position.parse().map_err(|_| bad_token()))?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (devices, next) = self.cluster.reader().read_cold(|s, cold| {
            let job = s
                .jobs
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("job {id} does not exist")))?;
            if job.detail_expired {
                return Err(Status::failed_precondition(format!(
                    "job {id}: device detail expired under the retention limit (retention.finished_jobs); its summary is still in GetJob and its history in the audit log"
                )));
            }
            let run = match req.run {
                None => job.current_run(),
                Some(n) => job.run(RunId(n)).ok_or_else(|| {
                    Status::not_found(format!(
                        "job {id} has no run {n}; its runs are 0 to {}",
                        job.runs.len().saturating_sub(1)
                    ))
                })?,
            };
            // A finished run's rows are in the cold tier, in the same run order.
            let mut devices = Vec::new();
            let mut last = None;
            let mut more = false;
            let from = u32::try_from(start).unwrap_or(u32::MAX);
            run.scan_by_position(&id, cold, from, &mut |pos, d| {
                if status.is_some_and(|st| d.status != st) {
                    return true;
                }
                if devices.len() == size {
                    more = true;
                    return false;
                }
                devices.push(convert::job_device(run, &d));
                last = Some(pos);
                true
            })
            .map_err(|e| {
                tracing::error!(error = %e, "reading a finished run's devices");
                Status::internal("could not read the run's devices; see the node's log")
            })?;
            let next = next_token(
                &listing,
                more,
                last.map(|pos| (pos as usize + 1).to_string()).as_deref(),
            );
            Ok::<_, Status>((devices, next))
        })?;
        Ok(Response::new(pb::ListJobDevicesResponse {
            devices,
            next_page_token: next,
        }))
    }

    type WatchJobStream = ProgressStream;

    /// Follows the job through [`crate::watch::follow`], the loop the console's event stream
    /// uses too, so `muster job watch` and the console show the same snapshots.
    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id: JobId = parse_id("job_id", &request.into_inner().job_id)?;
        read_barrier(&self.cluster, false).await?;
        let rx = watch::follow(self.cluster.reader().clone(), id).map_err(watch_status)?;
        let stream =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |m| {
                m.map_err(watch_status)
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn watch_status(end: WatchEnd) -> Status {
    match end {
        WatchEnd::NotFound(_) => Status::not_found(end.message()),
        WatchEnd::ShuttingDown => Status::unavailable(end.message()),
    }
}
