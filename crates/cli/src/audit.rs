//! `muster audit`: read a node's event log offline (verify, export, replay, timeline).
//!
//! Each command opens the data directory with `muster_store::audit::AuditLog`. sled has no
//! read-only mode and locks the directory, so the node that owns it must be stopped first (or
//! run the command on a copy); otherwise the command says the directory is in use. Nothing is
//! written.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use muster_domain::{Event, Job, State};
use muster_store::audit::{AuditLog, ReplayTo};
use muster_types::Timestamp;
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
    /// Print events, one a line: seq, time, type, job, device and body.
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
        #[command(flatten)]
        dir: DirArg,
        /// Stop after this sequence number.
        #[arg(long, conflicts_with = "at")]
        to_seq: Option<u64>,
        /// Stop after the last event stamped at or before this time (RFC 3339).
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value_t)]
        output: ReplayOutput,
    },
    /// One job's history, in order, for people.
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
            dir,
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
            replay(&open(&dir)?, to, output)
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

/// One event as an export row.
fn row(seq: u64, event: &Event) -> anyhow::Result<serde_json::Value> {
    Ok(json!({
        "seq": seq,
        "time": event.at().to_rfc3339(),
        "type": event.kind(),
        "job": event.job().map(|j| j.as_str()),
        "device": event.device().map(|d| d.as_str()),
        "body": serde_json::to_value(event)?,
    }))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn export(
    log: &AuditLog,
    from: u64,
    to: u64,
    job: Option<&str>,
    format: ExportFormat,
) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    if format == ExportFormat::Csv {
        writeln!(out, "seq,time,type,job,device,body")?;
    }
    for item in log.events(from, to)? {
        let (seq, event) = item?;
        if job.is_some_and(|j| event.job().map(|x| x.as_str()) != Some(j)) {
            continue;
        }
        match format {
            ExportFormat::Jsonl => {
                serde_json::to_writer(&mut out, &row(seq, &event)?)?;
                writeln!(out)?;
            }
            ExportFormat::Csv => writeln!(
                out,
                "{seq},{},{},{},{},{}",
                event.at().to_rfc3339(),
                event.kind(),
                csv_field(event.job().map_or("", |j| j.as_str())),
                csv_field(event.device().map_or("", |d| d.as_str())),
                csv_field(&serde_json::to_string(&event)?)
            )?,
        }
    }
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

fn replay(log: &AuditLog, to: ReplayTo, output: ReplayOutput) -> anyhow::Result<()> {
    let r = log.replay(to)?;
    let State { jobs, registry } = &r.state;
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

/// Device outcomes between two job-level events, summed.
#[derive(Debug, Default)]
struct Outcomes {
    first: Option<(u64, Timestamp)>,
    dispatched: u64,
    succeeded: u64,
    failed: u64,
    retrying: u64,
}

impl Outcomes {
    fn add(&mut self, seq: u64, at: Timestamp) {
        self.first.get_or_insert((seq, at));
    }

    fn flush(&mut self, out: &mut impl Write) -> io::Result<()> {
        if let Some((seq, at)) = self.first {
            writeln!(
                out,
                "{}  #{seq:<8} devices: {} dispatched, {} succeeded, {} failed ({} to retry)",
                at.to_rfc3339(),
                self.dispatched,
                self.succeeded,
                self.failed,
                self.retrying
            )?;
        }
        *self = Outcomes::default();
        Ok(())
    }
}

fn timeline(log: &AuditLog, job: &str) -> anyhow::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    let mut pending = Outcomes::default();
    let mut found = false;
    for item in log.events(1, u64::MAX)? {
        let (seq, event) = item?;
        if event.job().map(|j| j.as_str()) != Some(job) {
            continue;
        }
        found = true;
        let line = match &event {
            Event::DeviceDispatched { .. } => {
                pending.add(seq, event.at());
                pending.dispatched += 1;
                continue;
            }
            Event::DeviceSucceeded { .. } => {
                pending.add(seq, event.at());
                pending.succeeded += 1;
                continue;
            }
            Event::DeviceFailed { retry, .. } => {
                pending.add(seq, event.at());
                pending.failed += 1;
                pending.retrying += u64::from(*retry);
                continue;
            }
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
            Event::JobCancelled { reason, .. } => format!("cancelled: {reason:?}"),
            Event::JobCompleted { .. } => "completed".into(),
            Event::JobFailed { reason, .. } => format!("failed: {reason:?}"),
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
        };
        pending.flush(&mut out)?;
        writeln!(out, "{}  #{seq:<8} {line}", event.at().to_rfc3339())?;
    }
    pending.flush(&mut out)?;
    out.flush()?;
    if !found {
        bail!("no events for job {job:?}");
    }
    Ok(())
}
