//! `muster`: the one binary. It parses flags, loads the layered configuration, sets up tracing
//! and hands over to `muster-node` (for `serve`) or to the gRPC client (every other command).

mod audit;
mod auth;
mod certs;
mod client;
mod cluster;
mod devsim;
mod otlp;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "muster",
    version,
    about = "A job coordinator for fleets of IoT devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a node.
    Serve(Box<serve::ServeArgs>),
    /// Create, inspect and steer jobs.
    Job {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::JobCmd,
    },
    /// Register and inspect devices.
    Device {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::DeviceCmd,
    },
    /// Query devices and devices.jobs in IoT Hub's query language (`SELECT ... FROM devices.jobs
    /// WHERE devices.jobs.jobId = '...'`).
    Query {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(flatten)]
        args: client::QueryArgs,
    },
    /// Device groups (saved queries).
    Group {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::GroupCmd,
    },
    /// Scheduled (recurring) jobs: a job template run at each occurrence of a schedule.
    Schedule {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::ScheduleCmd,
    },
    /// Follow the event log live (change data capture), from any seq.
    Events {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: client::EventsCmd,
    },
    /// The Raft cluster: status, add a learner, promote it, remove a member.
    Cluster {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
    /// Credentials: API tokens and shared access policies; `sign` makes a token for curl.
    Auth {
        #[command(flatten)]
        opts: client::ClientOpts,
        #[command(subcommand)]
        cmd: auth::AuthCmd,
    },
    /// Run a simulated device fleet on MQTT brokers until Ctrl-C.
    Devsim(devsim::DevsimArgs),
    /// Read a stopped node's event log: verify, export, replay, timeline.
    Audit(audit::AuditArgs),
    /// Certificates for TLS: `muster certs init` makes a CA and node/client certificates.
    Certs {
        #[command(subcommand)]
        cmd: certs::CertsCmd,
    },
}

/// mimalloc rather than glibc's malloc: decoding and applying the event log allocates and frees
/// a few small strings per event, often on different threads (the Raft apply task, `audit
/// replay`'s reader threads), and glibc's arenas made that about a fifth of the work; with
/// mimalloc, applying the log runs about twice as fast (BENCHMARKS.md, "Audit").
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Serve(args) => serve::serve(*args).await,
            Cmd::Job { opts, cmd } => client::job(&opts, cmd).await,
            Cmd::Device { opts, cmd } => client::device(&opts, cmd).await,
            Cmd::Group { opts, cmd } => client::group(&opts, cmd).await,
            Cmd::Schedule { opts, cmd } => client::schedule(&opts, cmd).await,
            Cmd::Query { opts, args } => client::query(&opts, args).await,
            Cmd::Events { opts, cmd } => client::events(&opts, cmd).await,
            Cmd::Cluster { opts, cmd } => cluster::cluster(&opts, cmd).await,
            Cmd::Auth { opts, cmd } => auth::auth(&opts, cmd).await,
            Cmd::Devsim(args) => devsim::devsim(args).await,
            Cmd::Audit(args) => audit::audit(args),
            Cmd::Certs { cmd } => certs::certs(cmd),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
