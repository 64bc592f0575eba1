//! `muster events follow`: the event log as a live feed (change data capture from a shell).
//!
//! It subscribes to `muster.v1.EventService` on one node and prints each event as it arrives.
//! When the stream breaks (the node stops, restarts, or no longer holds the seq), it subscribes
//! again, on the next endpoint of `--endpoint a,b,c`, from the seq after the last one printed,
//! so the output has every event once and in order across node failures. It gives up only after
//! `--retry-for` seconds without any node answering, or at once on a request the server refuses
//! as invalid.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::Subcommand;
use muster_proto::pb;
use tonic::Code;

use super::{render, rpc, ClientOpts, Output};

#[derive(Debug, Subcommand)]
pub enum EventsCmd {
    /// Print events from a seq on, then live ones as they are committed, until Ctrl-C (or
    /// `--limit`). Give several nodes (`--endpoint http://a:9090,http://b:9090`) to carry on on
    /// another when one fails. Text: one line per event; `--output json`: one JSON object per
    /// line (seq, time, type, jobId, deviceId, hash, principal, body).
    Follow {
        /// The first seq to print (0 or 1: from the start of the log). To resume, pass the last
        /// seq printed plus one.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Only events of these jobs (repeat or comma-separate).
        #[arg(long = "job", value_delimiter = ',')]
        jobs: Vec<String>,
        /// Only events about these devices.
        #[arg(long = "device", value_delimiter = ',')]
        devices: Vec<String>,
        /// Only events of these types (`JobCreated`, `device_failed`, ...).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Exit after printing this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Give up after this many seconds in which no node could be followed.
        #[arg(long, default_value_t = 60)]
        retry_for: u64,
    },
}

/// Why one subscription ended.
enum End {
    /// `--limit` events were printed.
    Done,
    /// Worth trying again (on the next endpoint) from the next seq.
    Retry(String),
    /// The request itself is wrong, or stdout is gone: stop.
    Fatal(anyhow::Error),
}

/// The `--endpoint` value as a list: comma-separated addresses, in the order to try them.
fn endpoints(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Where a follow is: the next seq to print and how many were printed.
struct Cursor {
    next: u64,
    printed: u64,
    limit: Option<u64>,
}

pub async fn events(opts: &ClientOpts, cmd: EventsCmd) -> anyhow::Result<()> {
    let EventsCmd::Follow {
        from_seq,
        jobs,
        devices,
        types,
        limit,
        retry_for,
    } = cmd;
    if opts.output == Output::Csv {
        bail!("--output csv is offered by `muster job devices` only; use --output text or json with `muster events follow`");
    }
    let endpoints = endpoints(&opts.endpoint);
    let credential = super::credential::from_arg(opts.token.as_deref())?;
    if endpoints.is_empty() {
        bail!("--endpoint is empty; give one or more node addresses like http://127.0.0.1:9090");
    }
    let filter = pb::EventFilter {
        job_ids: jobs,
        device_ids: devices,
        types,
    };
    let mut cursor = Cursor {
        next: from_seq.max(1),
        printed: 0,
        limit,
    };
    if limit == Some(0) {
        return Ok(());
    }
    let patience = Duration::from_secs(retry_for);
    let mut last_ok = Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut turn = 0usize;
    loop {
        let endpoint = &endpoints[turn % endpoints.len()];
        let before = cursor.printed;
        match follow_once(
            opts,
            endpoint,
            &credential,
            &filter,
            &mut cursor,
            opts.output,
            &mut last_ok,
        )
        .await
        {
            End::Done => return Ok(()),
            End::Fatal(e) => return Err(e),
            End::Retry(why) => {
                if cursor.printed > before {
                    backoff = Duration::from_millis(100);
                }
                if last_ok.elapsed() >= patience {
                    bail!("{why}; gave up after {retry_for} s without a node to follow (resume with --from-seq {})", cursor.next);
                }
                turn += 1;
                let next = &endpoints[turn % endpoints.len()];
                eprintln!(
                    "muster: {why}; following again from seq {} at {next}",
                    cursor.next
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// One subscription on one node, until it breaks or `--limit` is reached.
async fn follow_once(
    opts: &ClientOpts,
    endpoint: &str,
    credential: &super::Credential,
    filter: &pb::EventFilter,
    cursor: &mut Cursor,
    output: Output,
    last_ok: &mut Instant,
) -> End {
    let channel = match opts.endpoint(endpoint) {
        Ok(c) => c.connect_timeout(Duration::from_secs(5)),
        Err(e) => return End::Fatal(e),
    };
    let channel = match channel.connect().await {
        Ok(c) => c,
        Err(e) => return End::Retry(format!("cannot reach muster at {endpoint}: {e}")),
    };
    let mut client =
        pb::event_service_client::EventServiceClient::with_interceptor(channel, credential.clone())
            .max_decoding_message_size(usize::MAX);
    let request = pb::SubscribeRequest {
        from_seq: cursor.next,
        filter: Some(filter.clone()),
    };
    let mut stream = match client.subscribe(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return ended(endpoint, status),
    };
    *last_ok = Instant::now();
    let mut out = std::io::stdout();
    loop {
        let event = match stream.message().await {
            Ok(Some(e)) => e,
            Ok(None) => return End::Retry(format!("{endpoint} ended the stream")),
            Err(status) => return ended(endpoint, status),
        };
        *last_ok = Instant::now();
        // The server never repeats a seq; a resumed stream cannot either, since it starts here.
        if event.seq < cursor.next {
            continue;
        }
        let line = match output {
            Output::Json => render::event_json(&event).to_string(),
            Output::Text | Output::Csv => render::event_line(&event),
        };
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            return End::Fatal(anyhow!("cannot write to stdout: {e}"));
        }
        cursor.next = event.seq + 1;
        cursor.printed += 1;
        if cursor.limit.is_some_and(|l| cursor.printed >= l) {
            return End::Done;
        }
    }
}

/// A status that ended a subscription: the caller's mistakes stop the follow, anything else
/// (a node going away, a node without the seq) is tried again elsewhere.
fn ended(endpoint: &str, status: tonic::Status) -> End {
    match status.code() {
        Code::InvalidArgument | Code::Unimplemented | Code::Unauthenticated => {
            End::Fatal(rpc(status))
        }
        _ => End::Retry(format!("{endpoint}: {}", rpc(status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_lists_split_on_commas() {
        assert_eq!(endpoints("http://a:1"), vec!["http://a:1"]);
        assert_eq!(
            endpoints(" http://a:1, http://b:2 ,,"),
            vec!["http://a:1", "http://b:2"]
        );
        assert!(endpoints(" , ").is_empty());
    }
}
