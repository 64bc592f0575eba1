//! `muster audit`: read a node's event log offline (verify, export, replay, timeline).
//!
//! Each command opens the data directory with `muster_store::audit::AuditLog`. sled has no
//! read-only mode and locks the directory, so the node that owns it must be stopped first (or
//! run the command on a copy); otherwise the command says the directory is in use. Nothing is
//! written.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use muster_domain::{Event, Job, State};
use muster_store::audit::{
    self as store_audit, AuditLog, ExportFilter, Outcomes, ReplayTo, Replayed, TimelineEntry,
};
use muster_types::{JobId, Timestamp};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Debug, clap::Args)]
struct DirArg {
    /// The node's data directory. The node must not be running on it.
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
enum ExportFormat {
    #[default]
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
enum ReplayOutput {
    #[default]
    Table,
    Json,
}

#[derive(Debug, clap::Subcommand)]
enum AuditCmd {
    /// Check the hash chain over the event log and that replaying the log reproduces the stored
    /// snapshot. Exits non-zero with the first bad sequence number.
    Verify {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Print events, one a line: seq, time, type, job, device, principal (who the command was
    /// written on behalf of) and body (the whole event; JSON Lines also carry each event's chain
    /// hash, and `replay --from-export` reads them back).
    Export {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
        #[arg(long)]
        to_seq: Option<u64>,
        /// Only this job's events.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        format: ExportFormat,
    },
    /// Rebuild the state from the log alone and print the jobs as they were.
    Replay {
        /// The node's data directory. The node must not be running on it.
        #[arg(long, required_unless_present = "from_export")]
        data_dir: Option<PathBuf>,
        /// Replay a complete JSON Lines export (`muster audit export`) instead of a data
        /// directory; its hash chain is checked on the way.
        #[arg(long, conflicts_with = "data_dir")]
        from_export: Option<PathBuf>,
        /// Stop after this sequence number.
        #[arg(long, conflicts_with = "at")]
        to_seq: Option<u64>,
        /// Stop after the last event stamped at or before this time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: ReplayOutput,
    },
    /// One job's history, in order, for people, each job-level event with who caused it.
    Timeline {
        #[command(flatten)]
        dir: DirArg,
        #[arg(long)]
        job: String,
    },
}

fn open(dir: &DirArg) -> anyhow::Result<AuditLog> {
    AuditLog::open(&dir.data_dir).with_context(|| format!("opening {}", dir.data_dir.display()))
}

pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    match args.cmd {
        AuditCmd::Verify { dir } => verify(&open(&dir)?),
        AuditCmd::Export {
            dir,
            from_seq,
            to_seq,
            job,
            format,
        } => export(
            &open(&dir)?,
            from_seq,
            to_seq.unwrap_or(u64::MAX),
            job.as_deref(),
            format,
        ),
        AuditCmd::Replay {
            data_dir,
            from_export,
            to_seq,
            at,
            output,
        } => {
            let to = match (to_seq, at) {
                (Some(n), _) => ReplayTo::Seq(n),
                (None, Some(t)) => ReplayTo::Time(
                    Timestamp::parse_rfc3339(&t).with_context(|| format!("--at {t:?}"))?,
                ),
                (None, None) => ReplayTo::End,
            };
            let r = match (from_export, data_dir) {
                (Some(file), _) => {
                    let f = std::fs::File::open(&file)
                        .with_context(|| format!("opening {}", file.display()))?;
                    let r = store_audit::replay_export(BufReader::new(f), to)
                        .with_context(|| format!("replaying {}", file.display()))?;
                    match r.chain_head {
                        Some(h) => eprintln!(
                            "export: {} hashes checked, {} credential events taken as written \
                             (their secrets are redacted), chain head {} (compare with `muster \
                             audit verify` on the node)",
                            r.hashes_checked,
                            r.redacted,
                            muster_store::chain::to_hex(&h)
                        ),
                        None => eprintln!("export: rows without hashes, the chain was not checked"),
                    }
                    r.replayed
                }
                (None, Some(data_dir)) => open(&DirArg { data_dir })?.replay(to)?,
                (None, None) => bail!("give --data-dir or --from-export"),
            };
            replay(&r, output)
        }
        AuditCmd::Timeline { dir, job } => timeline(&open(&dir)?, &job),
    }
}

fn verify(log: &AuditLog) -> anyhow::Result<()> {
    let v = log.verify()?;
    for note in &v.notes {
        println!("note: {note}");
    }
    if let Some(b) = v.failure {
        bail!(
            "verification failed at seq {}: {} ({} records checked before it)",
            b.seq,
            b.reason,
            v.checked
        );
    }
    println!(
        "ok: seqs {}..={} ({} records), chain head {}",
        v.info.first_seq,
        v.info.last_seq,
        v.checked,
        muster_store::chain::to_hex(&v.info.chain_head)
    );
    Ok(())
}

fn export(
    log: &AuditLog,
    from: u64,
    to: u64,
    job: Option<&str>,
    format: ExportFormat,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    let filter = ExportFilter {
        from_seq: from,
        to_seq: Some(to),
        job: job.map(str::to_owned),
    };
    let format = match format {
        ExportFormat::Jsonl => store_audit::ExportFormat::Jsonl,
        ExportFormat::Csv => store_audit::ExportFormat::Csv,
    };
    log.export(&filter, format, &mut out)?;
    out.flush()?;
    Ok(())
}

fn job_json(job: &Job) -> serde_json::Value {
    json!({
        "id": job.id.as_str(),
        "display_name": job.spec.display_name,
        "status": job.status.as_str(),
        "run": job.current_run().number.0,
        "created_at": job.created_at.to_rfc3339(),
        "started_at": job.started_at.map(Timestamp::to_rfc3339),
        "ended_at": job.ended_at.map(Timestamp::to_rfc3339),
        "stats": job.stats(),
    })
}

fn replay(r: &Replayed, output: ReplayOutput) -> anyhow::Result<()> {
    if let Some(seq) = r.clock_went_back {
        eprintln!(
            "warning: replay stopped at the first event stamped after --at, but seq {seq} later \
             in the log is stamped at or before it again (a leader's clock was behind); it is \
             not included"
        );
    }
    let State { jobs, registry, .. } = &r.state;
    match output {
        ReplayOutput::Json => {
            let doc = json!({
                "base_seq": r.base_seq,
                "last_seq": r.last_seq,
                "last_event_at": r.last_at.map(Timestamp::to_rfc3339),
                "devices": registry.devices.len(),
                "groups": registry.groups.len(),
                "jobs": jobs.values().map(job_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        ReplayOutput::Table => {
            println!(
                "replayed seqs {}..={} (last event at {}); {} devices, {} groups, {} jobs",
                r.base_seq + 1,
                r.last_seq,
                r.last_at.map_or_else(|| "-".into(), Timestamp::to_rfc3339),
                registry.devices.len(),
                registry.groups.len(),
                jobs.len()
            );
            println!(
                "{:<32} {:<10} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                "JOB",
                "STATUS",
                "RUN",
                "DEVICES",
                "PENDING",
                "RUNNING",
                "OK",
                "FAILED",
                "TIMEOUT",
                "CANCELLED"
            );
            for job in jobs.values() {
                let s = job.stats();
                println!(
                    "{:<32} {:<10} {:>4} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
                    job.id.as_str(),
                    job.status.as_str(),
                    job.current_run().number.0,
                    s.devices,
                    s.pending,
                    s.running,
                    s.succeeded,
                    s.failed,
                    s.timed_out,
                    s.cancelled
                );
            }
        }
    }
    Ok(())
}

fn outcomes_line(out: &mut impl Write, o: &Outcomes) -> io::Result<()> {
    writeln!(
        out,
        "{}  #{:<8} devices: {} dispatched, {} succeeded, {} failed ({} to retry)",
        o.first_at.to_rfc3339(),
        o.first_seq,
        o.dispatched,
        o.succeeded,
        o.failed,
        o.retrying
    )
}

fn event_line(event: &Event) -> String {
    match event {
        Event::JobCreated { spec, devices, .. } => {
            format!(
                "created {:?} on {} devices",
                spec.display_name,
                devices.len()
            )
        }
        Event::JobScheduled { start_at, .. } => {
            format!("scheduled to start at {}", start_at.to_rfc3339())
        }
        Event::JobStarted { run, .. } => format!("run {} started", run.0),
        Event::BatchStarted { run, batch, .. } => {
            format!("batch {} of run {} started", batch + 1, run.0)
        }
        Event::DevicesJoined { run, devices, .. } => {
            format!("{} devices joined run {}", devices.len(), run.0)
        }
        Event::JobStopped { .. } => "stopped".into(),
        Event::JobResumed { .. } => "resumed".into(),
        Event::JobCancelled { reason, .. } => format!("cancelled: {}", reason.describe()),
        Event::JobPaused { batch, reason, .. } => {
            format!("paused after batch {}: {}", batch + 1, reason.describe())
        }
        Event::JobContinued { .. } => "continued by an operator".into(),
        Event::RateChanged { per_minute, .. } => {
            format!("rollout rate rose to {per_minute} devices per minute")
        }
        Event::WindowOpened { since, until, .. } => format!(
            "maintenance window open since {} until {}",
            since.to_rfc3339(),
            until.to_rfc3339()
        ),
        Event::WindowClosed { next_open, .. } => match next_open {
            Some(t) => format!(
                "maintenance window closed; waiting until {}",
                t.to_rfc3339()
            ),
            None => "maintenance window closed; it never opens again".into(),
        },
        Event::JobCompleted { .. } => "completed".into(),
        Event::JobFailed { reason, .. } => format!("failed: {reason:?}"),
        Event::JobDetailExpired { .. } => {
            "device detail expired (retention.finished_jobs); the summary stays".into()
        }
        Event::JobExpired { .. } => {
            "removed by retention (retention.jobs); its events stay in this log".into()
        }
        Event::RerunStarted {
            run,
            rerun_id,
            devices,
            ..
        } => format!(
            "rerun {} started as run {} on {} devices",
            rerun_id.as_str(),
            run.0,
            devices.len()
        ),
        other => other.kind().to_owned(),
    }
}

fn timeline(log: &AuditLog, job: &str) -> anyhow::Result<()> {
    let Ok(id) = JobId::new(job) else {
        bail!("no events for job {job:?}");
    };
    let t = log.timeline(&id)?;
    if t.entries.is_empty() {
        bail!("no events for job {job:?}");
    }
    let mut out = BufWriter::new(io::stdout().lock());
    for entry in &t.entries {
        match entry {
            TimelineEntry::Devices(o) => outcomes_line(&mut out, o)?,
            TimelineEntry::Event {
                seq,
                event,
                principal,
            } => writeln!(
                out,
                "{}  #{seq:<8} {}  (by {principal})",
                event.at().to_rfc3339(),
                event_line(event)
            )?,
        }
    }
    out.flush()?;
    Ok(())
}
