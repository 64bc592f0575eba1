//! `muster serve`: configuration layering and the signal handling around `muster_node::run`.
//!
//! Precedence, lowest first: built-in defaults, the `--config` TOML file, `MUSTER_*` environment
//! variables (`MUSTER_HTTP_ADDR=...`), then flags given on the command line.

use std::path::PathBuf;

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use muster_node::{Listeners, NodeConfig};
use serde::Serialize;

#[derive(Debug, clap::Args, Serialize)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (snake_case keys).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Where the node keeps its data (Raft log, event log, snapshots).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Client gRPC address (host:port; port 0 picks one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grpc_addr: Option<String>,
    /// REST gateway address (host:port; port 0 picks one).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    http_addr: Option<String>,
    /// Raft peer address (host:port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_addr: Option<String>,
    /// This node's id in the cluster.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_id: Option<u64>,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG also works.
    #[arg(long, default_value = "info,openraft=warn")]
    #[serde(skip)]
    log: String,
}

fn load(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    let mut fig = Figment::from(Serialized::defaults(NodeConfig::default()));
    if let Some(path) = &args.config {
        if !path.exists() {
            anyhow::bail!("config file {} does not exist", path.display());
        }
        fig = fig.merge(Toml::file(path));
    }
    fig = fig
        .merge(Env::prefixed("MUSTER_").ignore(&["endpoint", "log"]))
        .merge(Serialized::defaults(args));
    fig.extract().context("invalid configuration")
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log);
    let cfg = load(&args)?;
    let listeners = Listeners::bind(&cfg).await?;
    let grpc = listeners.grpc_addr()?;
    let http = listeners.http_addr()?;
    // Tests and scripts read this line to learn the ports when they asked for port 0.
    println!("muster listening: rest=http://{http} grpc=http://{grpc}");
    muster_node::run(cfg, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
