//! `muster.v1.ClusterService`: the cluster as an operator sees it, and membership changes.
//!
//! Any node answers: status is assembled by the node asked (members it cannot reach show as
//! unreachable), and membership changes are forwarded to the leader by the cluster layer.

use muster_cluster::{Cluster, ClusterStatus};
use muster_proto::pb;
use tonic::{Request, Response, Status};

use super::cluster_status;

/// The ClusterService implementation over a node's cluster handle.
#[derive(Debug, Clone)]
pub struct ClusterApi {
    cluster: Cluster,
}

impl ClusterApi {
    pub fn new(cluster: Cluster) -> Self {
        ClusterApi { cluster }
    }

    async fn answer(&self) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(to_pb(self.cluster.status().await)))
    }
}

fn node_id(id: u64) -> Result<u64, Status> {
    if id == 0 {
        return Err(Status::invalid_argument(
            "node_id: give the id of the node (a positive integer, as in `--node-id`)",
        ));
    }
    Ok(id)
}

fn to_pb(s: ClusterStatus) -> pb::ClusterStatus {
    pb::ClusterStatus {
        leader_id: s.leader.unwrap_or(0),
        term: s.term,
        answered_by: s.answered_by,
        leader_last_log_index: s.leader_last_log_index.unwrap_or(0),
        members: s
            .members
            .into_iter()
            .map(|m| pb::MemberStatus {
                node_id: m.id,
                role: m.role.as_str().to_string(),
                peer_addr: m.node.peer_addr,
                grpc_addr: m.node.grpc_addr,
                http_addr: m.node.http_addr,
                state: m.state,
                reachable: m.reachable,
                last_log_index: m.last_log_index.unwrap_or(0),
                last_applied_index: m.last_applied.unwrap_or(0),
                matched_index: m.matched.unwrap_or(0),
                lag: m.lag.unwrap_or(0),
                snapshot_index: m.snapshot.unwrap_or(0),
                history_from_seq: m.history_from.unwrap_or(0),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterApi {
    async fn status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.answer().await
    }

    async fn add_learner(
        &self,
        req: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let req = req.into_inner();
        let id = node_id(req.node_id)?;
        let addr = req.peer_addr.trim().to_string();
        if addr.is_empty() || !addr.contains(':') || addr.contains('/') {
            return Err(Status::invalid_argument(
                "peer_addr: give HOST:PORT where the new node serves Raft (its --peer-addr)",
            ));
        }
        self.cluster
            .add_learner(id, addr)
            .await
            .map_err(cluster_status)?;
        self.answer().await
    }

    async fn promote(
        &self,
        req: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = node_id(req.into_inner().node_id)?;
        self.cluster.promote(id).await.map_err(cluster_status)?;
        self.answer().await
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        let id = node_id(req.into_inner().node_id)?;
        self.cluster.remove(id).await.map_err(cluster_status)?;
        self.answer().await
    }
}
