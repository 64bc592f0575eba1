//! Client subcommands against a node's gRPC API (`muster job|device|group ...`).
//!
//! Each command makes one connection to `--endpoint`, calls the API and prints the answer: text
//! for people, or with `--output json` exactly one JSON document on stdout for scripts. Lists
//! follow `next_page_token` to the end (or to `--limit`). Errors go to stderr as one line that
//! says what failed (`not found: job j1 does not exist`, `cannot reach muster at http://...`)
//! and the exit status is 1.

pub(crate) mod credential;
mod events;
mod query;
mod render;
mod rollout;
mod schedule;
mod spec;

use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use muster_mqtt::credentials::{self, FleetSecret};
use muster_proto::pb;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub(crate) use credential::{Conn, Credential};

use render::print_json;
pub use schedule::{schedule, ScheduleCmd};

pub use events::{events, EventsCmd};
pub use query::{query, QueryArgs};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for scripts (`events follow`: one JSON object a line).
    Json,
    /// CSV with a header row (RFC 4180); only `job devices` offers it.
    Csv,
}

/// Refuses `--output csv` for a command that has no CSV form, before anything is called.
fn no_csv(opts: &ClientOpts, command: &str) -> anyhow::Result<()> {
    if opts.output == Output::Csv {
        bail!("--output csv is offered by `muster job devices` only; use --output text or json with `{command}`");
    }
    Ok(())
}

/// Options every client command takes.
#[derive(Debug, clap::Args)]
pub struct ClientOpts {
    /// The node's gRPC address (`events follow` takes several, comma-separated, and moves on
    /// to the next when one fails).
    #[arg(
        long,
        global = true,
        env = "MUSTER_ENDPOINT",
        default_value = "http://127.0.0.1:9090"
    )]
    pub endpoint: String,
    /// The credential: a token (`SharedAccessSignature sr=...`), a connection string
    /// (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`), or `@FILE` holding one (a
    /// node writes its administrator's to DATA_DIR/admin.credential).
    #[arg(long, global = true, env = "MUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// CA certificate (PEM) that an `https://` endpoint's certificate must chain to (the
    /// `ca.pem` of `muster certs init`); default: the system's trusted roots.
    #[arg(long, global = true, env = "MUSTER_CA_CERT", value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) to present over `https://`, for a node started with
    /// --tls-client-ca.
    #[arg(
        long,
        global = true,
        env = "MUSTER_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "MUSTER_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl ClientOpts {
    /// A channel to `url` (not yet connected): plain for `http://`, TLS for `https://` with
    /// --ca-cert (or the system's roots) and --client-cert/--client-key when given.
    pub(crate) fn endpoint(&self, url: &str) -> anyhow::Result<Endpoint> {
        let endpoint = Channel::from_shared(url.to_string()).map_err(|_| {
            anyhow!("--endpoint {url:?} is not a URL; give one like http://127.0.0.1:9090")
        })?;
        if !url.starts_with("https://") {
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_cert {
            Some(path) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("--ca-cert: cannot read {}", path.display()))?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            let read = |p: &PathBuf, flag: &str| {
                std::fs::read(p).with_context(|| format!("{flag}: cannot read {}", p.display()))
            };
            tls = tls.identity(Identity::from_pem(
                read(cert, "--client-cert")?,
                read(key, "--client-key")?,
            ));
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| anyhow!("TLS settings for {url}: {e}"))
    }
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {
    /// Create a job from flags (e.g. `--method reboot --group lab --batch 25% --threshold 10%`)
    /// or from a file (`--file spec.json`).
    Create {
        /// The new job's id.
        id: String,
        #[command(flatten)]
        spec: Box<spec::SpecArgs>,
    },
    /// Show a job: status, statistics, batches.
    Get { id: String },
    /// List jobs, ordered by id.
    List {
        /// Only jobs in these statuses (comma-separated).
        #[arg(long, value_delimiter = ',', value_enum)]
        status: Vec<JobStatusArg>,
        /// Only jobs of this type.
        #[arg(long = "type", value_enum)]
        job_type: Option<JobTypeArg>,
        /// Stop after this many jobs.
        #[arg(long)]
        limit: Option<usize>,
        /// Jobs fetched per request.
        #[arg(long, default_value_t = 100)]
        page_size: u32,
    },
    /// Halt dispatch of new devices (devices already asked may still answer).
    Stop { id: String },
    /// Continue a stopped job (or a paused one, like `continue`).
    Resume { id: String },
    /// Start the next batch of a job its rollout gate paused between batches.
    Continue { id: String },
    /// End a job; its devices that have not finished end cancelled.
    Cancel { id: String },
    /// Run a finished job again over its failed and timed-out devices.
    Rerun {
        id: String,
        /// Names the rerun (unique within the job); default: `rerun-<unix ms>`.
        rerun_id: Option<String>,
    },
    /// List a job's devices with their status, attempts, last error and response.
    Devices {
        id: String,
        /// Only devices in this status.
        #[arg(long, value_enum)]
        status: Option<DeviceStatusArg>,
        /// The run to show (0 is the original run); default: the latest.
        #[arg(long)]
        run: Option<u32>,
        /// Stop after this many devices.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
    /// Follow a job with a progress bar until it ends, then print it. Exits 0 when the job
    /// completed, 1 when it ended failed or cancelled (so `muster job watch J && next-step`
    /// works). With `--output json` there is no bar, only the final job.
    Watch { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    /// Register one device.
    Register {
        id: String,
        #[arg(long)]
        display_name: Option<String>,
        /// IoT Plug and Play model id / device template.
        #[arg(long)]
        model_id: Option<String>,
        /// Register it disabled (jobs fail on it at once).
        #[arg(long)]
        disabled: bool,
        /// Tags, a JSON object.
        #[arg(long, value_name = "JSON")]
        tags: Option<String>,
        /// Update the device if it is registered already.
        #[arg(long)]
        upsert: bool,
    },
    /// Register (or update) many devices from a file (`-` for stdin): a JSON array, or one JSON
    /// object per line, each like `{"deviceId": "d1", "displayName": "...", "modelId": "...",
    /// "enabled": true, "tags": {"site": "b43"}}` (only deviceId is required).
    Import { file: String },
    /// Show a device and its twin.
    Get { id: String },
    /// List devices, ordered by id.
    List {
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
    /// Devices matching a query: `SELECT * FROM devices WHERE ...`, or just the condition
    /// (`"tags.site = 'b43' AND properties.reported.fw != '1.2'"`).
    Query {
        query: String,
        /// Print only the matching ids.
        #[arg(long)]
        ids_only: bool,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
    /// Write a Mosquitto password file and ACL file: logins for the dispatcher and, with
    /// `--gateway-password-file`, the device gateway (devices that log in with SAS tokens come
    /// through it, so a new device needs no new line); with `--secret-file`, also one login per
    /// registered, enabled device (user name = device id, password = base64(HMAC-SHA256(fleet
    /// secret, device id))), each confined to its own topics. Device logins change when devices
    /// do: run it again after registering devices, then reload Mosquitto (SIGHUP).
    Credentials {
        /// The fleet secret the device passwords are derived from (at least 16 characters;
        /// `muster devsim --credentials-secret-file` takes the same file). Without it no device
        /// logins are written.
        #[arg(long, value_name = "FILE")]
        secret_file: Option<std::path::PathBuf>,
        /// Where to write the password file (Mosquitto's `password_file`), mode 0600.
        #[arg(long, value_name = "FILE")]
        passwd_out: std::path::PathBuf,
        /// Where to write the ACL file (Mosquitto's `acl_file`).
        #[arg(long, value_name = "FILE")]
        acl_out: std::path::PathBuf,
        /// The dispatcher's user name (`muster serve --mqtt-username`).
        #[arg(long, value_name = "NAME", default_value = muster_mqtt::credentials::DEFAULT_DISPATCHER_USER)]
        dispatcher_user: String,
        /// A file holding the dispatcher's password (`muster serve --mqtt-password-file`).
        #[arg(long, value_name = "FILE")]
        dispatcher_password_file: std::path::PathBuf,
        /// The device gateway's user name (`muster serve --device-gateway-user`).
        #[arg(long, value_name = "NAME", default_value = muster_mqtt::credentials::DEFAULT_GATEWAY_USER)]
        gateway_user: String,
        /// A file holding the device gateway's password (`muster serve
        /// --device-gateway-password-file`); without it the gateway gets no login.
        #[arg(long, value_name = "FILE")]
        gateway_password_file: Option<std::path::PathBuf>,
    },
    /// Every job the device is part of, with its outcome in each (IoT Hub's
    /// `SELECT * FROM devices.jobs WHERE devices.jobs.deviceId = '...'`).
    Jobs {
        id: String,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 500)]
        page_size: u32,
    },
    /// Merge-patch a device twin's tags and/or desired properties.
    UpdateTwin {
        id: String,
        #[arg(long, value_name = "JSON")]
        tags: Option<String>,
        #[arg(long, value_name = "JSON")]
        desired: Option<String>,
        /// Apply only if the twin is at this version (from `device get`).
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
    },
    /// Enable a device: jobs dispatch to it again.
    Enable {
        id: String,
        /// Why (shown as IoT Hub's `statusReason`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Disable a device: jobs do not dispatch to it and fail it with the reason DeviceDisabled.
    Disable {
        id: String,
        /// Why (shown as IoT Hub's `statusReason`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Replace a device's SAS keys (generated unless both are given) and print them.
    RotateKeys {
        id: String,
        #[arg(long, requires = "secondary_key")]
        primary_key: Option<String>,
        #[arg(long, requires = "primary_key")]
        secondary_key: Option<String>,
    },
    /// Remove a device and its twin.
    Delete {
        id: String,
        /// Apply only if the identity is at this version (from `device get`).
        #[arg(long, value_name = "VERSION")]
        if_identity_version: Option<u64>,
    },
    /// Invoke a direct method on one device and wait for its answer; prints the status the
    /// device answered and its payload. Exits 1 if the device was offline or did not answer.
    Invoke {
        id: String,
        method: String,
        /// The method's payload, any JSON value.
        #[arg(long, value_name = "JSON")]
        payload: Option<String>,
        /// Seconds to wait for the answer once the device has the request (5 to 300).
        #[arg(long, value_name = "S", default_value_t = 30)]
        response_timeout: u32,
        /// Seconds to wait for an offline device to connect (0 to 300; 0: it must be online).
        #[arg(long, value_name = "S", default_value_t = 0)]
        connect_timeout: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {
    /// Create or replace a device group (a saved query).
    Put {
        id: String,
        /// `SELECT * FROM devices WHERE ...`, or just the condition.
        #[arg(long)]
        query: String,
        #[arg(long)]
        display_name: Option<String>,
        /// A short summary (kept when not given).
        #[arg(long)]
        description: Option<String>,
        /// Save only over this version of the group (the `etag` a get printed).
        #[arg(long)]
        etag: Option<String>,
    },
    /// Show a device group.
    Get { id: String },
    /// List device groups.
    List,
    /// Delete a device group.
    Delete { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum JobStatusArg {
    Scheduled,
    Pending,
    Running,
    Stopped,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum JobTypeArg {
    Method,
    Twin,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DeviceStatusArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

/// Connects to the endpoint, so an unreachable node is reported once, by address, before any
/// call is made.
pub(crate) async fn connect(opts: &ClientOpts) -> anyhow::Result<Conn> {
    let credential = credential::from_arg(opts.token.as_deref())?;
    let channel = connect_to(opts).await?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel, credential,
    ))
}

/// A connected channel to `--endpoint` (TLS for `https://`, see [`ClientOpts::endpoint`]).
async fn connect_to(opts: &ClientOpts) -> anyhow::Result<Channel> {
    let endpoint = opts
        .endpoint(&opts.endpoint)?
        .connect_timeout(Duration::from_secs(10));
    endpoint.connect().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        anyhow!("cannot reach muster at {}: {cause}", opts.endpoint)
    })
}

/// An API error as one line: the status in words and the server's message.
/// Devices per `ImportDevices` call of `muster device import`: one Raft entry each, well below
/// gRPC's 32 MiB message limit (a million devices in one call would exceed it).
const IMPORT_BATCH: usize = 10_000;

pub(crate) fn rpc(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let what = match status.code() {
        Code::InvalidArgument => "invalid request",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::FailedPrecondition => "not allowed now",
        Code::Aborted => "changed meanwhile",
        Code::Unavailable => "unavailable",
        Code::DeadlineExceeded => "timed out",
        Code::Internal => "server error",
        _ => "error",
    };
    anyhow!("{what}: {}", status.message())
}

/// The text of a file, or of stdin for `-`.
fn read_input(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
    }
}

fn job_status_arg(s: JobStatusArg) -> pb::JobStatus {
    match s {
        JobStatusArg::Scheduled => pb::JobStatus::Scheduled,
        JobStatusArg::Pending => pb::JobStatus::Pending,
        JobStatusArg::Running => pb::JobStatus::Running,
        JobStatusArg::Stopped => pb::JobStatus::Stopped,
        JobStatusArg::Paused => pb::JobStatus::Paused,
        JobStatusArg::Completed => pb::JobStatus::Completed,
        JobStatusArg::Failed => pb::JobStatus::Failed,
        JobStatusArg::Cancelled => pb::JobStatus::Cancelled,
    }
}

fn device_status_arg(s: DeviceStatusArg) -> pb::DeviceStatus {
    match s {
        DeviceStatusArg::Pending => pb::DeviceStatus::Pending,
        DeviceStatusArg::Running => pb::DeviceStatus::Running,
        DeviceStatusArg::Succeeded => pb::DeviceStatus::Succeeded,
        DeviceStatusArg::Failed => pb::DeviceStatus::Failed,
        DeviceStatusArg::TimedOut => pb::DeviceStatus::TimedOut,
        DeviceStatusArg::Cancelled => pb::DeviceStatus::Cancelled,
    }
}

/// Prints one job in the chosen form.
fn print_job(opts: &ClientOpts, j: &pb::Job) {
    match opts.output {
        Output::Json => print_json(&render::job_json(j)),
        Output::Text | Output::Csv => println!("{}", render::job_text(j)),
    }
}

/// How many more items to fetch: `None` when `limit` is reached.
fn remaining(limit: Option<usize>, have: usize) -> Option<usize> {
    match limit {
        Some(l) if have >= l => None,
        Some(l) => Some(l - have),
        None => Some(usize::MAX),
    }
}

/// One item of a `QueryDevices` page: an id (`--ids-only`) or a whole device.
enum Found {
    Id(String),
    Device(Box<pb::Device>),
}

/// Follows `next_page_token` until the server has no more or `limit` items are in. `fetch`
/// asks for one page (the page size to ask for, the token) and returns its items and the next
/// token.
async fn collect_pages<T>(
    limit: Option<usize>,
    page_size: u32,
    mut fetch: impl AsyncFnMut(u32, String) -> anyhow::Result<(Vec<T>, String)>,
) -> anyhow::Result<Vec<T>> {
    let mut items = Vec::new();
    let mut token = String::new();
    while let Some(left) = remaining(limit, items.len()) {
        let size = page_size.min(u32::try_from(left).unwrap_or(u32::MAX));
        let (page, next) = fetch(size, token).await?;
        items.extend(page);
        token = next;
        if token.is_empty() {
            break;
        }
    }
    if let Some(l) = limit {
        items.truncate(l);
    }
    Ok(items)
}

pub async fn job(opts: &ClientOpts, cmd: JobCmd) -> anyhow::Result<()> {
    if !matches!(cmd, JobCmd::Devices { .. }) {
        no_csv(opts, "muster job")?;
    }
    if let JobCmd::Create { id, spec } = cmd {
        // Built before connecting, so a bad flag is reported without a server.
        let spec = spec::build(&id, *spec)?;
        let mut client = pb::job_service_client::JobServiceClient::new(connect(opts).await?)
            .max_encoding_message_size(usize::MAX);
        let job = client
            .create_job(pb::CreateJobRequest {
                job_id: id,
                spec: Some(spec),
            })
            .await
            .map_err(rpc)?
            .into_inner();
        print_job(opts, &job);
        return Ok(());
    }
    let mut client = pb::job_service_client::JobServiceClient::new(connect(opts).await?)
        .max_decoding_message_size(usize::MAX);
    match cmd {
        JobCmd::Create { .. } => Ok(()),
        JobCmd::Get { id } => {
            let job = client
                .get_job(pb::GetJobRequest {
                    job_id: id,
                    stale_ok: false,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(opts, &job);
            Ok(())
        }
        JobCmd::List {
            status,
            job_type,
            limit,
            page_size,
        } => {
            let types = job_type
                .map(|t| match t {
                    JobTypeArg::Method => pb::JobType::Method as i32,
                    JobTypeArg::Twin => pb::JobType::Twin as i32,
                })
                .into_iter()
                .collect::<Vec<_>>();
            let statuses: Vec<i32> = status
                .into_iter()
                .map(|s| job_status_arg(s) as i32)
                .collect();
            let jobs = collect_pages(limit, page_size, async |page_size, page_token| {
                let page = client
                    .list_jobs(pb::ListJobsRequest {
                        page_size,
                        page_token,
                        types: types.clone(),
                        statuses: statuses.clone(),
                        stale_ok: false,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                Ok((page.jobs, page.next_page_token))
            })
            .await?;
            match opts.output {
                Output::Json => {
                    print_json(&Value::Array(jobs.iter().map(render::job_json).collect()))
                }
                Output::Text | Output::Csv => println!("{}", render::jobs_table(&jobs)),
            }
            Ok(())
        }
        JobCmd::Stop { id } => {
            let job = client
                .stop_job(pb::StopJobRequest { job_id: id })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(opts, &job);
            Ok(())
        }
        JobCmd::Resume { id } => {
            let job = client
                .resume_job(pb::ResumeJobRequest { job_id: id })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(opts, &job);
            Ok(())
        }
        JobCmd::Continue { id } => {
            let job = client
                .continue_job(pb::ContinueJobRequest { job_id: id })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(opts, &job);
            Ok(())
        }
        JobCmd::Cancel { id } => {
            let job = client
                .cancel_job(pb::CancelJobRequest { job_id: id })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(opts, &job);
            Ok(())
        }
        JobCmd::Rerun { id, rerun_id } => {
            let rerun_id = rerun_id.unwrap_or_else(|| format!("rerun-{}", unix_ms()));
            let job = client
                .rerun_job(pb::RerunJobRequest {
                    job_id: id,
                    rerun_id,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_job(opts, &job);
            Ok(())
        }
        JobCmd::Devices {
            id,
            status,
            run,
            limit,
            page_size,
        } => {
            let status = status.map_or(0, |s| device_status_arg(s) as i32);
            let devices = collect_pages(limit, page_size, async |page_size, page_token| {
                let page = client
                    .list_job_devices(pb::ListJobDevicesRequest {
                        job_id: id.clone(),
                        run,
                        status,
                        page_size,
                        page_token,
                        stale_ok: false,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                Ok((page.devices, page.next_page_token))
            })
            .await?;
            match opts.output {
                Output::Json => print_json(&Value::Array(
                    devices.iter().map(render::job_device_json).collect(),
                )),
                Output::Text => println!("{}", render::job_devices_table(&devices)),
                Output::Csv => print!("{}", render::job_devices_csv(&devices)),
            }
            Ok(())
        }
        JobCmd::Watch { id } => watch(opts, &mut client, id).await,
    }
}

/// Unix milliseconds now, for default names.
fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

async fn watch(
    opts: &ClientOpts,
    client: &mut pb::job_service_client::JobServiceClient<Conn>,
    id: String,
) -> anyhow::Result<()> {
    let mut stream = client
        .watch_job(pb::WatchJobRequest { job_id: id.clone() })
        .await
        .map_err(rpc)?
        .into_inner();
    // The bar goes to stderr and hides itself when stderr is not a terminal; JSON output has none.
    let bar = match opts.output {
        Output::Text | Output::Csv => indicatif::ProgressBar::new(0),
        Output::Json => indicatif::ProgressBar::hidden(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} devices finished  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut last: Option<pb::Job> = None;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) => {
                bar.abandon();
                return Err(rpc(status));
            }
        };
        let Some(job) = message.job else { continue };
        let d = pb::JobStats::default();
        let s = job.stats.as_ref().unwrap_or(&d);
        bar.set_length(s.total);
        // The console's progress bar counts with the same function.
        bar.set_position(muster_api::watch::finished(s));
        bar.set_message(format!(
            "{} · {} succeeded, {} failed, {} timed out, {} cancelled",
            render::job_status(job.status),
            s.succeeded,
            s.failed,
            s.timed_out,
            s.cancelled
        ));
        last = Some(job);
    }
    bar.finish_and_clear();
    let Some(job) = last else {
        bail!("the server ended the watch of job {id} without sending its progress");
    };
    print_job(opts, &job);
    match pb::JobStatus::try_from(job.status) {
        Ok(pb::JobStatus::Completed) => Ok(()),
        Ok(pb::JobStatus::Failed | pb::JobStatus::Cancelled) => {
            if job.status_reason.is_empty() {
                bail!("job {id} ended {}", render::job_status(job.status))
            }
            bail!("job {id} ended {}", job.status_reason)
        }
        _ => bail!(
            "the server ended the watch of job {id} while it was {}; watch again",
            render::job_status(job.status)
        ),
    }
}

/// One line of `device import`; camelCase (IoT Central's names) or snake_case both read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportedDevice {
    #[serde(alias = "device_id", alias = "id")]
    #[serde(rename = "deviceId")]
    device_id: String,
    #[serde(default, alias = "display_name", rename = "displayName")]
    display_name: String,
    #[serde(default, alias = "model_id", alias = "template", rename = "modelId")]
    model_id: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    tags: Option<Value>,
}

impl ImportedDevice {
    fn into_pb(self) -> pb::NewDevice {
        pb::NewDevice {
            device_id: self.device_id,
            display_name: self.display_name,
            model_id: self.model_id,
            enabled: self.enabled,
            tags_json: self.tags.map(|t| t.to_string()).unwrap_or_default(),
        }
    }
}

/// A JSON array of devices, or one device object per line (JSONL).
fn parse_import(path: &str, text: &str) -> anyhow::Result<Vec<pb::NewDevice>> {
    let trimmed = text.trim_start();
    let devices: Vec<ImportedDevice> = if trimmed.starts_with('[') {
        serde_json::from_str(text)
            .with_context(|| format!("{path} is not a JSON array of devices"))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{path} line {}: not a device object", i + 1))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if devices.is_empty() {
        bail!("{path} lists no devices");
    }
    Ok(devices.into_iter().map(ImportedDevice::into_pb).collect())
}

/// Registered devices in id order, up to `limit`, `page_size` a request.
async fn all_devices(
    client: &mut pb::device_service_client::DeviceServiceClient<Conn>,
    limit: Option<usize>,
    page_size: u32,
) -> anyhow::Result<Vec<pb::Device>> {
    collect_pages(limit, page_size, async |page_size, page_token| {
        let page = client
            .list_devices(pb::ListDevicesRequest {
                page_size,
                page_token,
                stale_ok: false,
            })
            .await
            .map_err(rpc)?
            .into_inner();
        Ok((page.devices, page.next_page_token))
    })
    .await
}

fn print_device(opts: &ClientOpts, d: &pb::Device) {
    match opts.output {
        Output::Json => print_json(&render::device_json(d)),
        Output::Text | Output::Csv => println!("{}", render::device_text(d)),
    }
}

pub async fn device(opts: &ClientOpts, cmd: DeviceCmd) -> anyhow::Result<()> {
    no_csv(opts, "muster device")?;
    if let DeviceCmd::Jobs {
        id,
        limit,
        page_size,
    } = cmd
    {
        return query::device_jobs(opts, id, limit, page_size).await;
    }
    let enable = matches!(cmd, DeviceCmd::Enable { .. });
    // Parse local input before connecting, so a bad file is reported without a server.
    let import = match &cmd {
        DeviceCmd::Import { file } => Some(parse_import(file, &read_input(file)?)?),
        _ => None,
    };
    let tags_json = match &cmd {
        DeviceCmd::Register { tags: Some(t), .. } => spec::json_flag("--tags", t)?,
        _ => String::new(),
    };
    let mut client = pb::device_service_client::DeviceServiceClient::new(connect(opts).await?)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    match cmd {
        DeviceCmd::Register {
            id,
            display_name,
            model_id,
            disabled,
            tags: _,
            upsert,
        } => {
            let d = client
                .register_device(pb::RegisterDeviceRequest {
                    device: Some(pb::NewDevice {
                        device_id: id,
                        display_name: display_name.unwrap_or_default(),
                        model_id,
                        enabled: Some(!disabled),
                        tags_json,
                    }),
                    upsert,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_device(opts, &d);
        }
        DeviceCmd::Import { file } => {
            let devices = import.unwrap_or_default();
            let total = devices.len();
            let mut count = 0;
            // An empty file still makes one call: the node says what is wrong with it.
            for batch in devices.chunks(IMPORT_BATCH) {
                count += client
                    .import_devices(pb::ImportDevicesRequest {
                        devices: batch.to_vec(),
                    })
                    .await
                    .map_err(|e| {
                        anyhow!(
                            "{}; {count} of the {total} devices were imported before this batch \
                             (importing the file again is safe: it updates them)",
                            rpc(e)
                        )
                    })?
                    .into_inner()
                    .count;
                if total > IMPORT_BATCH {
                    eprintln!("imported {count} of {total} devices");
                }
            }
            if devices.is_empty() {
                client
                    .import_devices(pb::ImportDevicesRequest { devices })
                    .await
                    .map_err(rpc)?;
            }
            match opts.output {
                Output::Json => print_json(&json!({ "imported": count })),
                Output::Text | Output::Csv => println!("imported {count} devices from {file}"),
            }
        }
        DeviceCmd::Get { id } => {
            let d = client
                .get_device(pb::GetDeviceRequest {
                    device_id: id,
                    stale_ok: false,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_device(opts, &d);
        }
        DeviceCmd::Credentials {
            secret_file,
            passwd_out,
            acl_out,
            dispatcher_user,
            dispatcher_password_file,
            gateway_user,
            gateway_password_file,
        } => {
            let secret = secret_file
                .as_deref()
                .map(FleetSecret::from_file)
                .transpose()?;
            let dispatcher_password = muster_mqtt::read_secret_file(&dispatcher_password_file)?;
            let gateway_password = gateway_password_file
                .as_deref()
                .map(muster_mqtt::read_secret_file)
                .transpose()?;
            let (ids, disabled) = if secret.is_some() {
                let devices = all_devices(&mut client, None, 1000).await?;
                let (enabled, disabled): (Vec<_>, Vec<_>) =
                    devices.into_iter().partition(|d| d.enabled);
                let ids: Vec<String> = enabled.into_iter().map(|d| d.device_id).collect();
                (ids, disabled)
            } else {
                (Vec::new(), Vec::new())
            };
            let mut services = vec![(dispatcher_user.as_str(), &dispatcher_password)];
            if let Some(pw) = &gateway_password {
                services.push((gateway_user.as_str(), pw));
            }
            let (passwd, left_out) = credentials::password_file(secret.as_ref(), &ids, &services)?;
            let gateway = gateway_password.as_ref().map(|_| gateway_user.as_str());
            let acl = credentials::acl_file(&dispatcher_user, gateway)?;
            if !left_out.is_empty() {
                eprintln!(
                    "warning: {} devices left out, their ids cannot be Mosquitto user names (they hold ':'): {}",
                    left_out.len(),
                    left_out.join(", ")
                );
            }
            let provisioned = ids.len() - left_out.len();
            write_private(&passwd_out, &passwd)?;
            write_private(&acl_out, &acl)?;
            match opts.output {
                Output::Json => print_json(&json!({
                    "devices": provisioned,
                    "disabledSkipped": disabled.len(),
                    "leftOut": left_out,
                    "dispatcherUser": dispatcher_user,
                    "gatewayUser": gateway,
                    "passwordFile": passwd_out.display().to_string(),
                    "aclFile": acl_out.display().to_string(),
                })),
                Output::Text | Output::Csv => println!(
                    "wrote logins for {provisioned} devices, the dispatcher ({dispatcher_user}){} to {}, and the ACL to {}{}; reload Mosquitto (SIGHUP) to use them",
                    gateway.map(|g| format!(" and the device gateway ({g})")).unwrap_or_default(),
                    passwd_out.display(),
                    acl_out.display(),
                    if disabled.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} disabled devices left out)", disabled.len())
                    }
                ),
            }
        }
        DeviceCmd::List { limit, page_size } => {
            let devices = all_devices(&mut client, limit, page_size).await?;
            render::print_list(
                opts.output,
                &devices,
                render::device_json,
                render::devices_table,
            );
        }
        DeviceCmd::Query {
            query,
            ids_only,
            limit,
            page_size,
        } => {
            let query = spec::full_query(&query);
            // `--ids-only` wants the page's ids, otherwise its whole devices; those count
            // towards `--limit`.
            let found = collect_pages(limit, page_size, async |page_size, page_token| {
                let page = client
                    .query_devices(pb::QueryDevicesRequest {
                        query: query.clone(),
                        page_size,
                        page_token,
                        ids_only,
                        stale_ok: false,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                let items = if ids_only {
                    page.device_ids.into_iter().map(Found::Id).collect()
                } else {
                    page.devices
                        .into_iter()
                        .map(|d| Found::Device(Box::new(d)))
                        .collect()
                };
                Ok((items, page.next_page_token))
            })
            .await?;
            let (mut ids, mut devices) = (Vec::new(), Vec::new());
            for f in found {
                match f {
                    Found::Id(id) => ids.push(id),
                    Found::Device(d) => devices.push(*d),
                }
            }
            match (opts.output, ids_only) {
                (Output::Json, true) => print_json(&json!(ids)),
                (Output::Json, false) => print_json(&Value::Array(
                    devices.iter().map(render::device_json).collect(),
                )),
                (Output::Text | Output::Csv, true) => {
                    for id in &ids {
                        println!("{id}");
                    }
                }
                (Output::Text | Output::Csv, false) => {
                    println!("{}", render::devices_table(&devices))
                }
            }
        }
        // Answered before connecting to the device service, above.
        DeviceCmd::Jobs { .. } => {}
        DeviceCmd::UpdateTwin {
            id,
            tags,
            desired,
            if_version,
        } => {
            let tags_json = tags.map(|t| spec::json_flag("--tags", &t)).transpose()?;
            let desired_json = desired
                .map(|d| spec::json_flag("--desired", &d))
                .transpose()?;
            if tags_json.is_none() && desired_json.is_none() {
                bail!("give --tags JSON and/or --desired JSON");
            }
            let d = client
                .update_twin(pb::UpdateTwinRequest {
                    device_id: id,
                    tags_json,
                    desired_json,
                    if_version,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_device(opts, &d);
        }
        DeviceCmd::Enable { id, reason } | DeviceCmd::Disable { id, reason } => {
            let d = client
                .set_device_status(pb::SetDeviceStatusRequest {
                    device_id: id,
                    enabled: enable,
                    status_reason: reason,
                    if_identity_version: None,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_device(opts, &d);
        }
        DeviceCmd::RotateKeys {
            id,
            primary_key,
            secondary_key,
        } => {
            let k = client
                .rotate_device_keys(pb::RotateDeviceKeysRequest {
                    device_id: id,
                    primary_key: primary_key.unwrap_or_default(),
                    secondary_key: secondary_key.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            match opts.output {
                Output::Json => print_json(&json!({
                    "deviceId": k.device_id,
                    "primaryKey": k.primary_key,
                    "secondaryKey": k.secondary_key,
                })),
                _ => println!(
                    "device {}\nprimary key:   {}\nsecondary key: {}",
                    k.device_id, k.primary_key, k.secondary_key
                ),
            }
        }
        DeviceCmd::Delete {
            id,
            if_identity_version,
        } => {
            client
                .delete_device(pb::DeleteDeviceRequest {
                    device_id: id.clone(),
                    if_identity_version,
                })
                .await
                .map_err(rpc)?;
            match opts.output {
                Output::Json => print_json(&json!({"deleted": id})),
                _ => println!("deleted device {id}"),
            }
        }
        DeviceCmd::Invoke {
            id,
            method,
            payload,
            response_timeout,
            connect_timeout,
        } => {
            let payload_json = payload
                .map(|p| spec::json_flag("--payload", &p))
                .transpose()?
                .unwrap_or_default();
            let r = client
                .invoke_method(pb::InvokeMethodRequest {
                    device_id: id,
                    method,
                    payload_json,
                    response_timeout_secs: response_timeout,
                    connect_timeout_secs: connect_timeout,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let payload: Value =
                serde_json::from_str(&r.payload_json).unwrap_or(Value::String(r.payload_json));
            match opts.output {
                Output::Json => print_json(&serde_json::json!({
                    "invocationId": r.invocation_id,
                    "status": r.status,
                    "payload": payload,
                })),
                Output::Text | Output::Csv => {
                    println!("status: {}", r.status);
                    println!("payload: {payload}");
                }
            }
        }
    }
    Ok(())
}

pub async fn group(opts: &ClientOpts, cmd: GroupCmd) -> anyhow::Result<()> {
    no_csv(opts, "muster group")?;
    let mut client = pb::group_service_client::GroupServiceClient::new(connect(opts).await?);
    let print_group = |g: &pb::Group| match opts.output {
        Output::Json => print_json(&render::group_json(g)),
        Output::Text | Output::Csv => println!("{}", render::groups_table(std::slice::from_ref(g))),
    };
    match cmd {
        GroupCmd::Put {
            id,
            query,
            display_name,
            description,
            etag,
        } => {
            let g = client
                .put_group(pb::PutGroupRequest {
                    group_id: id,
                    display_name: display_name.unwrap_or_default(),
                    query: spec::full_query(&query),
                    description,
                    etag: etag.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_group(&g);
        }
        GroupCmd::Get { id } => {
            let g = client
                .get_group(pb::GetGroupRequest {
                    group_id: id,
                    stale_ok: false,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            print_group(&g);
        }
        GroupCmd::List => {
            let groups = collect_pages(None, 1000, async |page_size, page_token| {
                let page = client
                    .list_groups(pb::ListGroupsRequest {
                        page_size,
                        page_token,
                        stale_ok: false,
                    })
                    .await
                    .map_err(rpc)?
                    .into_inner();
                Ok((page.groups, page.next_page_token))
            })
            .await?;
            render::print_list(
                opts.output,
                &groups,
                render::group_json,
                render::groups_table,
            );
        }
        GroupCmd::Delete { id } => {
            client
                .delete_group(pb::DeleteGroupRequest {
                    group_id: id.clone(),
                })
                .await
                .map_err(rpc)?;
            match opts.output {
                Output::Json => print_json(&json!({ "deleted": id })),
                Output::Text | Output::Csv => println!("deleted group {id}"),
            }
        }
    }
    Ok(())
}

/// Writes `text` to `path` readable by its owner only (it holds password hashes), through a
/// temporary file renamed into place, so a broker reloading it never reads half a file.
fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    // NamedTempFile is created with mode 0600 on Unix.
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn imports_read_arrays_and_lines() {
        let a = parse_import(
            "f",
            r#"[{"deviceId": "d1", "tags": {"a": 1}}, {"device_id": "d2"}]"#,
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].tags_json, r#"{"a":1}"#);
        let l = parse_import(
            "f",
            "{\"deviceId\": \"d1\"}\n\n{\"deviceId\": \"d2\", \"enabled\": false}\n",
        )
        .unwrap();
        assert_eq!(l[1].enabled, Some(false));
        assert!(parse_import("f", "[]").is_err());
        assert!(parse_import("f", r#"[{"deviceId": "d1", "colour": 1}]"#).is_err());
    }
}
