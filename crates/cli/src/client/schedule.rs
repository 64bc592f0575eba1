//! `muster schedule`: scheduled (recurring) jobs over `muster.v1.ScheduleService`. The job
//! template takes the flags (or the file) of `muster job create`; the schedule its own flags.

use anyhow::{anyhow, bail};
use clap::Subcommand;
use muster_proto::pb;
use muster_types::Timestamp;
use serde_json::{json, Value};

use super::render::{jobs_table, print_json, print_list, table};
use super::{collect_pages, connect, no_csv, rpc, spec, ClientOpts, Output};

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Create a scheduled job: a job template (the flags of `muster job create`) and when to run
    /// it, e.g. `--group lab --method reboot --start 2026-12-24T02:00:00Z --recurrence daily
    /// --occurrences 7`. Each occurrence creates a job named `ID-N`.
    Create {
        /// The scheduled job's id (at most 48 characters).
        id: String,
        #[command(flatten)]
        when: Box<WhenArgs>,
        #[command(flatten)]
        spec: Box<spec::SpecArgs>,
    },
    /// Replace a scheduled job's template and schedule (same flags as create).
    Update {
        id: String,
        #[command(flatten)]
        when: Box<WhenArgs>,
        #[command(flatten)]
        spec: Box<spec::SpecArgs>,
    },
    /// Show a scheduled job.
    Get { id: String },
    /// List scheduled jobs, ordered by id.
    List,
    /// Delete a scheduled job (the jobs it created stay).
    Delete { id: String },
    /// The jobs a scheduled job created, ordered by job id.
    Jobs { id: String },
}

/// When a scheduled job runs.
#[derive(Debug, clap::Args)]
pub struct WhenArgs {
    /// The first occurrence: an RFC 3339 time, or `now`.
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// Repeat daily, weekly or monthly (in --time-zone's civil time); absent: run once.
    #[arg(long, value_parser = ["daily", "weekly", "monthly"], conflicts_with = "every")]
    pub recurrence: Option<String>,
    /// Repeat every this many seconds (a muster extension, for short periods).
    #[arg(long, value_name = "SECONDS")]
    pub every: Option<u32>,
    /// No occurrence after this time (RFC 3339).
    #[arg(long, value_name = "TIME", conflicts_with = "occurrences")]
    pub end_date: Option<String>,
    /// Stop after this many jobs.
    #[arg(long, value_name = "N")]
    pub occurrences: Option<u32>,
    /// IANA zone the recurrence steps in (e.g. Europe/Berlin); default UTC.
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// Create it disabled (it creates no jobs until updated without this flag).
    #[arg(long)]
    pub disabled: bool,
}

fn time(flag: &str, s: &str) -> anyhow::Result<i64> {
    if s == "now" {
        return Ok(now_ms());
    }
    Timestamp::parse_rfc3339(s)
        .map(|t| t.millis())
        .map_err(|e| anyhow!("{flag}: {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn build(id: &str, when: WhenArgs, args: spec::SpecArgs) -> anyhow::Result<pb::ScheduledJobSpec> {
    if args.start_at.is_some() {
        bail!("--start-at is for jobs; a scheduled job starts at --start");
    }
    let template = spec::build(id, args)?;
    let (recurrence, interval_secs) = match (when.recurrence.as_deref(), when.every) {
        (Some("daily"), _) => (pb::Recurrence::Daily, 0),
        (Some("weekly"), _) => (pb::Recurrence::Weekly, 0),
        (Some("monthly"), _) => (pb::Recurrence::Monthly, 0),
        (_, Some(s)) => (pb::Recurrence::Interval, s),
        _ => (pb::Recurrence::Once, 0),
    };
    let end = match (when.end_date, when.occurrences) {
        (Some(d), _) => Some(pb::job_schedule::End::EndDateMs(time("--end-date", &d)?)),
        (None, Some(k)) => Some(pb::job_schedule::End::EndOccurrences(k)),
        (None, None) => None,
    };
    Ok(pb::ScheduledJobSpec {
        template: Some(template),
        schedule: Some(pb::JobSchedule {
            start_ms: time("--start", &when.start)?,
            recurrence: recurrence as i32,
            interval_secs,
            end,
            time_zone: when.time_zone.unwrap_or_default(),
        }),
        enabled: !when.disabled,
    })
}

fn when_json(s: Option<&pb::JobSchedule>) -> Value {
    let Some(s) = s else { return Value::Null };
    let recurrence = match pb::Recurrence::try_from(s.recurrence) {
        Ok(pb::Recurrence::Daily) => json!("daily"),
        Ok(pb::Recurrence::Weekly) => json!("weekly"),
        Ok(pb::Recurrence::Monthly) => json!("monthly"),
        Ok(pb::Recurrence::Interval) => json!(format!("every {}s", s.interval_secs)),
        _ => Value::Null,
    };
    let end = match s.end {
        Some(pb::job_schedule::End::EndDateMs(d)) => {
            json!({"date": Timestamp::from_millis(d).to_rfc3339()})
        }
        Some(pb::job_schedule::End::EndOccurrences(k)) => json!({"occurrences": k}),
        None => Value::Null,
    };
    json!({
        "start": Timestamp::from_millis(s.start_ms).to_rfc3339(),
        "recurrence": recurrence,
        "end": end,
        "timeZone": if s.time_zone.is_empty() { "UTC" } else { s.time_zone.as_str() },
    })
}

fn schedule_json(s: &pb::ScheduledJob) -> Value {
    let spec = s.spec.as_ref();
    json!({
        "id": s.id,
        "displayName": spec.and_then(|p| p.template.as_ref()).map(|t| t.display_name.clone()),
        "schedule": when_json(spec.and_then(|p| p.schedule.as_ref())),
        "enabled": spec.is_some_and(|p| p.enabled),
        "completed": s.completed,
        "created": s.created,
        "nextAt": s.next_at_ms.map(|t| Timestamp::from_millis(t).to_rfc3339()),
        "version": s.version,
    })
}

fn schedules_table(list: &[pb::ScheduledJob]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            let v = schedule_json(s);
            let when = &v["schedule"];
            vec![
                s.id.clone(),
                when["recurrence"].as_str().unwrap_or("once").to_string(),
                when["start"].as_str().unwrap_or("").to_string(),
                if s.completed {
                    "completed".into()
                } else if v["enabled"] == json!(true) {
                    "enabled".into()
                } else {
                    "disabled".into()
                },
                s.created.to_string(),
                v["nextAt"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    table(
        &["ID", "RECURRENCE", "START", "STATE", "JOBS", "NEXT"],
        &rows,
    )
}

/// A command with its spec built, so a bad flag is reported before connecting.
enum Ready {
    Create(String, pb::ScheduledJobSpec),
    Update(String, pb::ScheduledJobSpec),
    Other(ScheduleCmd),
}

pub async fn schedule(opts: &ClientOpts, cmd: ScheduleCmd) -> anyhow::Result<()> {
    no_csv(opts, "muster schedule")?;
    let ready = match cmd {
        ScheduleCmd::Create { id, when, spec } => {
            let s = build(&id, *when, *spec)?;
            Ready::Create(id, s)
        }
        ScheduleCmd::Update { id, when, spec } => {
            let s = build(&id, *when, *spec)?;
            Ready::Update(id, s)
        }
        other => Ready::Other(other),
    };
    let mut client = pb::schedule_service_client::ScheduleServiceClient::new(connect(opts).await?);
    let print = |s: &pb::ScheduledJob| match opts.output {
        Output::Json => print_json(&schedule_json(s)),
        Output::Text | Output::Csv => println!("{}", schedules_table(std::slice::from_ref(s))),
    };
    let cmd = match ready {
        Ready::Create(id, spec) => {
            let s = client
                .create_schedule(pb::CreateScheduleRequest {
                    id,
                    spec: Some(spec),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print(&s);
            return Ok(());
        }
        Ready::Update(id, spec) => {
            let s = client
                .update_schedule(pb::UpdateScheduleRequest {
                    id,
                    spec: Some(spec),
                    if_version: None,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print(&s);
            return Ok(());
        }
        Ready::Other(cmd) => cmd,
    };
    match cmd {
        ScheduleCmd::Create { .. } | ScheduleCmd::Update { .. } => {}
        ScheduleCmd::Get { id } => {
            let s = client
                .get_schedule(pb::GetScheduleRequest {
                    id,
                    stale_ok: false,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print(&s);
        }
        ScheduleCmd::List => {
            let all = collect_pages(None, 1000, async |page_size, page_token| {
                let page = client
                    .list_schedules(pb::ListSchedulesRequest {
                        page_size,
                        page_token,
                        stale_ok: false,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                Ok((page.schedules, page.next_page_token))
            })
            .await?;
            print_list(opts.output, &all, schedule_json, schedules_table);
        }
        ScheduleCmd::Delete { id } => {
            client
                .delete_schedule(pb::DeleteScheduleRequest { id: id.clone() })
                .await
                .map_err(rpc)?;
            if matches!(opts.output, Output::Text | Output::Csv) {
                println!("deleted scheduled job {id}");
            }
        }
        ScheduleCmd::Jobs { id } => {
            let jobs = collect_pages(None, 1000, async |page_size, page_token| {
                let page = client
                    .list_schedule_jobs(pb::ListScheduleJobsRequest {
                        id: id.clone(),
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
            print_list(opts.output, &jobs, super::render::job_json, jobs_table);
        }
    }
    Ok(())
}
