//! Client subcommands against a node's gRPC API (being built).

use clap::Subcommand;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Output {
    /// For people.
    #[default]
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Options every client command takes.
#[derive(Debug, clap::Args)]
pub struct ClientOpts {
    /// The node's gRPC address.
    #[arg(long, global = true, env = "MUSTER_ENDPOINT", default_value = "http://127.0.0.1:9090")]
    pub endpoint: String,
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum JobCmd {}

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {}

#[derive(Debug, Subcommand)]
pub enum GroupCmd {}

pub async fn job(_opts: &ClientOpts, cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {}
}

pub async fn device(_opts: &ClientOpts, cmd: DeviceCmd) -> anyhow::Result<()> {
    match cmd {}
}

pub async fn group(_opts: &ClientOpts, cmd: GroupCmd) -> anyhow::Result<()> {
    match cmd {}
}
