//! `muster.v1.ScheduleService`: scheduled (recurring) jobs, the gRPC face of
//! `/api/scheduledJobs`. The rules (validation, occurrences) are the domain's.

use muster_cluster::{now, Cluster};
use muster_domain::schedule::{ScheduledJob, ScheduledJobSpec};
use muster_domain::{Command, Principal, State};
use muster_proto::pb;
use muster_types::{JobId, ScheduledJobId};
use tonic::{Request, Response, Status};

use super::convert::{self, Detail};
use super::jobs::spec_from_request;
use super::{
    after, caller, cluster_status, id_token, next_token, page_size, parse_id, read_barrier,
    take_page,
};
use muster_domain::page_token::Listing;

/// What the lists' page tokens are sealed for ([`muster_domain::page_token`]).
const LIST_SCHEDULES: &str = "grpc ScheduleService.ListSchedules";
const LIST_SCHEDULE_JOBS: &str = "grpc ScheduleService.ListScheduleJobs";

/// The schedule service over a cluster handle.
#[derive(Debug, Clone)]
pub struct ScheduleApi {
    cluster: Cluster,
}

impl ScheduleApi {
    pub fn new(cluster: Cluster) -> Self {
        ScheduleApi { cluster }
    }

    async fn save(
        &self,
        who: Principal,
        id: &ScheduledJobId,
        spec: ScheduledJobSpec,
        if_version: Option<u64>,
    ) -> Result<pb::ScheduledJob, Status> {
        self.cluster
            .write_as(
                who,
                Command::SaveScheduledJob {
                    id: id.clone(),
                    spec,
                    if_version,
                    at: now(),
                },
            )
            .await
            .map_err(cluster_status)?;
        self.cluster.reader().read(|s| found(s, id))
    }
}

/// The domain's view of a scheduled job as the API shows it.
pub(crate) fn scheduled_job(s: &ScheduledJob) -> pb::ScheduledJob {
    pb::ScheduledJob {
        id: s.id.to_string(),
        spec: Some((&s.spec).into()),
        version: s.version,
        created_at_ms: s.created_at.millis(),
        updated_at_ms: s.updated_at.millis(),
        created: s.created,
        completed: s.completed(),
        next_at_ms: s.upcoming().map(|(_, t)| t.millis()),
    }
}

fn found(s: &State, id: &ScheduledJobId) -> Result<pb::ScheduledJob, Status> {
    s.schedules
        .get(id)
        .map(scheduled_job)
        .ok_or_else(|| Status::not_found(format!("scheduled job {id} does not exist")))
}

/// The request's spec, with the template's gaps filled as CreateJob fills them.
fn spec(
    id: &ScheduledJobId,
    spec: Option<pb::ScheduledJobSpec>,
) -> Result<ScheduledJobSpec, Status> {
    let mut spec =
        spec.ok_or_else(|| Status::invalid_argument("spec: give the scheduled job's spec"))?;
    let template = spec
        .template
        .take()
        .ok_or_else(|| Status::invalid_argument("spec.template: give the job template"))?;
    let job_id =
        JobId::new(id.as_str()).map_err(|e| Status::invalid_argument(format!("id: {e}")))?;
    let template = spec_from_request(&job_id, template).map_err(|s| {
        Status::invalid_argument(s.message().replacen("spec.", "spec.template.", 1))
    })?;
    let schedule = spec.schedule.take().ok_or_else(|| {
        Status::invalid_argument("spec.schedule: give the schedule (start_ms at least)")
    })?;
    let schedule = schedule
        .try_into()
        .map_err(|e| Status::invalid_argument(format!("spec.schedule.{e}")))?;
    Ok(ScheduledJobSpec {
        template,
        schedule,
        enabled: spec.enabled,
    })
}

#[tonic::async_trait]
impl pb::schedule_service_server::ScheduleService for ScheduleApi {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: ScheduledJobId = parse_id("id", &req.id)?;
        let spec = spec(&id, req.spec)?;
        // Version 0: only if it does not exist yet, decided in log order (two creates of one
        // id cannot both succeed).
        self.save(who, &id, spec, Some(0)).await.map(Response::new)
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let req = request.into_inner();
        let id: ScheduledJobId = parse_id("id", &req.id)?;
        read_barrier(&self.cluster, req.stale_ok).await?;
        self.cluster
            .reader()
            .read(|s| found(s, &id))
            .map(Response::new)
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::ScheduledJob>, Status> {
        let who = caller(&request);
        let req = request.into_inner();
        let id: ScheduledJobId = parse_id("id", &req.id)?;
        let spec = spec(&id, req.spec)?;
        read_barrier(&self.cluster, false).await?;
        // Only an existing schedule: its version, unless the caller gave one.
        let current = self.cluster.reader().read(|s| found(s, &id))?.version;
        self.save(who, &id, spec, Some(req.if_version.unwrap_or(current)))
            .await
            .map(Response::new)
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let who = caller(&request);
        let id: ScheduledJobId = parse_id("id", &request.into_inner().id)?;
        self.cluster
            .write_as(who, Command::DeleteScheduledJob { id, at: now() })
            .await
            .map_err(cluster_status)?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let req = request.into_inner();
        let listing = Listing::new(LIST_SCHEDULES);
        let token: Option<ScheduledJobId> = id_token(&listing, &req.page_token)?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (schedules, more) = self.cluster.reader().read(|s| {
            let (page, more) = take_page(s.schedules.range(after(token)).map(|(_, j)| j), size);
            (
                page.into_iter().map(scheduled_job).collect::<Vec<_>>(),
                more,
            )
        });
        let next_page_token = next_token(&listing, more, schedules.last().map(|j| j.id.as_str()));
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules,
            next_page_token,
        }))
    }

    async fn list_schedule_jobs(
        &self,
        request: Request<pb::ListScheduleJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let req = request.into_inner();
        let id: ScheduledJobId = parse_id("id", &req.id)?;
        let listing = Listing::new(LIST_SCHEDULE_JOBS).with("id", id.as_str());
        let token: Option<JobId> = id_token(&listing, &req.page_token)?;
        let size = page_size(req.page_size);
        read_barrier(&self.cluster, req.stale_ok).await?;
        let (jobs, more) = self.cluster.reader().read(|s| {
            let sj = s
                .schedules
                .get(&id)
                .ok_or_else(|| Status::not_found(format!("scheduled job {id} does not exist")))?;
            let mine: std::collections::BTreeSet<&JobId> = sj.jobs.iter().collect();
            let lower = token.as_ref();
            let matching = mine
                .into_iter()
                .filter(|j| lower.is_none_or(|t| *j > t))
                .filter_map(|j| s.jobs.get(j));
            let (page, more) = take_page(matching, size);
            let jobs: Vec<pb::Job> = page
                .into_iter()
                .map(|j| convert::job(j, Detail::Summary))
                .collect();
            Ok::<_, Status>((jobs, more))
        })?;
        let next_page_token = next_token(&listing, more, jobs.last().map(|j| j.job_id.as_str()));
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }
}
