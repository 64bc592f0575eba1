//! `muster cluster status|add-learner|promote|remove`: the operator's view of the Raft cluster,
//! over `muster.v1.ClusterService` on any node's gRPC address.

use anyhow::bail;
use clap::Subcommand;
use muster_proto::pb;
use muster_proto::pb::cluster_service_client::ClusterServiceClient;
use serde_json::json;

use crate::client::{connect, rpc, ClientOpts, Output};

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Members, leader, term, and each member's log position and lag.
    Status,
    /// Add a node as a learner: it receives the log but does not vote. Start it first with
    /// `muster serve --join --node-id ID --peer-addr HOST:PORT ...`.
    AddLearner {
        /// The new node's id (its --node-id).
        node_id: u64,
        /// HOST:PORT where the members reach the new node for Raft (its --peer-addr).
        peer_addr: String,
    },
    /// Make a learner a voter, once it has caught up.
    Promote { node_id: u64 },
    /// Remove a voter or a learner from the cluster.
    Remove { node_id: u64 },
}

pub async fn cluster(opts: &ClientOpts, cmd: ClusterCmd) -> anyhow::Result<()> {
    if opts.output == Output::Csv {
        bail!("--output csv is offered by `muster job devices` only; use --output text or json with `muster cluster`");
    }
    let mut client = ClusterServiceClient::new(connect(opts).await?);
    let status = match cmd {
        ClusterCmd::Status => client.status(pb::ClusterStatusRequest {}).await,
        ClusterCmd::AddLearner { node_id, peer_addr } => {
            client
                .add_learner(pb::AddLearnerRequest { node_id, peer_addr })
                .await
        }
        ClusterCmd::Promote { node_id } => client.promote(pb::PromoteRequest { node_id }).await,
        ClusterCmd::Remove { node_id } => client.remove(pb::RemoveRequest { node_id }).await,
    }
    .map_err(rpc)?
    .into_inner();
    match opts.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&to_json(&status))?),
        _ => print!("{}", render(&status)),
    }
    Ok(())
}

fn opt(n: u64) -> serde_json::Value {
    if n == 0 {
        serde_json::Value::Null
    } else {
        json!(n)
    }
}

fn to_json(s: &pb::ClusterStatus) -> serde_json::Value {
    json!({
        "leaderId": opt(s.leader_id),
        "term": s.term,
        "answeredBy": s.answered_by,
        "leaderLastLogIndex": opt(s.leader_last_log_index),
        "members": s.members.iter().map(|m| json!({
            "nodeId": m.node_id,
            "role": m.role,
            "state": m.state,
            "reachable": m.reachable,
            "peerAddr": m.peer_addr,
            "grpcAddr": m.grpc_addr,
            "httpAddr": m.http_addr,
            "lastLogIndex": m.last_log_index,
            "lastAppliedIndex": m.last_applied_index,
            "matchedIndex": m.matched_index,
            "snapshotIndex": m.snapshot_index,
            "historyFromSeq": opt(m.history_from_seq),
            "lag": m.lag,
        })).collect::<Vec<_>>(),
    })
}

fn render(s: &pb::ClusterStatus) -> String {
    let leader = match s.leader_id {
        0 => "none known".to_string(),
        id => format!("node {id}"),
    };
    let mut out = format!(
        "leader: {leader}   term: {}   (answered by node {})\n",
        s.term, s.answered_by
    );
    out.push_str(&format!(
        "{:<5} {:<8} {:<12} {:<22} {:<22} {:>9} {:>9} {:>7}\n",
        "NODE", "ROLE", "STATE", "PEER", "GRPC", "LOG", "APPLIED", "LAG"
    ));
    for m in &s.members {
        let dash = |v: u64, known: bool| {
            if known {
                v.to_string()
            } else {
                "-".to_string()
            }
        };
        out.push_str(&format!(
            "{:<5} {:<8} {:<12} {:<22} {:<22} {:>9} {:>9} {:>7}\n",
            m.node_id,
            m.role,
            m.state,
            m.peer_addr,
            if m.grpc_addr.is_empty() {
                "-"
            } else {
                &m.grpc_addr
            },
            dash(m.last_log_index, m.reachable),
            dash(m.last_applied_index, m.reachable),
            dash(m.lag, m.reachable && s.leader_last_log_index > 0),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> pb::ClusterStatus {
        pb::ClusterStatus {
            leader_id: 1,
            term: 3,
            answered_by: 2,
            leader_last_log_index: 40,
            members: vec![
                pb::MemberStatus {
                    node_id: 1,
                    role: "voter".into(),
                    state: "leader".into(),
                    reachable: true,
                    peer_addr: "h1:9091".into(),
                    grpc_addr: "h1:9090".into(),
                    last_log_index: 40,
                    last_applied_index: 40,
                    ..Default::default()
                },
                pb::MemberStatus {
                    node_id: 3,
                    role: "voter".into(),
                    state: "unreachable".into(),
                    reachable: false,
                    peer_addr: "h3:9091".into(),
                    ..Default::default()
                },
            ],
        }
    }

    #[test]
    fn text_names_the_leader_and_marks_unknown_figures() {
        let text = render(&sample());
        assert!(text.starts_with("leader: node 1   term: 3"), "{text}");
        let row3 = text
            .lines()
            .find(|l| l.starts_with("3 "))
            .unwrap_or_default();
        assert!(row3.contains("unreachable"), "{row3}");
        assert!(row3.trim_end().ends_with('-'), "{row3}");
    }

    #[test]
    fn json_uses_null_for_an_unknown_leader() {
        let mut s = sample();
        s.leader_id = 0;
        let v = to_json(&s);
        assert!(v["leaderId"].is_null());
        assert_eq!(v["members"][0]["state"], "leader");
    }
}
