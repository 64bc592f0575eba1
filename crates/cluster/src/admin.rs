//! Membership administration and the cluster's status as an operator sees it.
//!
//! Membership changes (add a learner, promote it, remove a member, record a member's addresses)
//! are carried out by the leader with openraft's joint consensus; any node accepts them and
//! forwards them over the peer service, as it does writes. Status is assembled by whichever node
//! is asked: its own view plus each member's own report ([`LocalStatus`]), fetched over the peer
//! service with a short deadline, so a member that does not answer shows as unreachable instead
//! of holding up the answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};

use crate::forward::Forward;
use crate::{Cluster, ClusterError, MusterNode, TypeConfig};

/// How long status waits for each other member's report.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(800);
/// How long a promotion waits for the learner to catch up with the leader's log.
const CATCH_UP_WAIT: Duration = Duration::from_secs(60);
/// A learner within this many entries of the leader's log counts as caught up: the rest arrives
/// with the next append, well within an election timeout.
const CATCH_UP_SLACK: u64 = 256;

/// What one node asks another outside Raft's own RPCs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminRequest {
    /// Record (or update) a member's addresses.
    SetNode {
        id: u64,
        node: MusterNode,
    },
    AddLearner {
        id: u64,
        node: MusterNode,
    },
    Promote {
        id: u64,
    },
    Remove {
        id: u64,
    },
    /// The answering node's own [`LocalStatus`]; any node answers, leader or not.
    Local,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AdminResponse {
    Done,
    Local(LocalStatus),
}

/// One node's own account of itself, from its Raft metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LocalStatus {
    state: String,
    last_log_index: Option<u64>,
    last_applied: Option<u64>,
    snapshot: Option<u64>,
    /// The oldest event seq this node holds (above 1 while a back-fill is still to finish).
    #[serde(default)]
    history_from: Option<u64>,
    /// On the leader: the last index each member is known to have replicated.
    replication: Option<BTreeMap<u64, Option<u64>>>,
}

/// A member's part in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Votes in elections and counts towards the commit quorum.
    Voter,
    /// Replicates the log without voting (a node being added).
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Learner => "learner",
        }
    }
}

/// The cluster as seen from the node that answered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub answered_by: u64,
    pub leader: Option<u64>,
    pub term: u64,
    /// The leader's last log index, when the leader answered.
    pub leader_last_log_index: Option<u64>,
    pub members: Vec<MemberStatus>,
}

/// One member, by id order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub role: Role,
    pub node: MusterNode,
    /// `leader`, `follower`, `candidate`, `learner`, or `unreachable`.
    pub state: String,
    pub reachable: bool,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot: Option<u64>,
    /// The oldest event seq the member holds: 1 when it has the whole history; later when it
    /// joined from a snapshot and its back-fill (see `backfill`) has not finished.
    pub history_from: Option<u64>,
    /// What the leader knows this member has replicated.
    pub matched: Option<u64>,
    /// Entries this member's applied state is behind the leader's log.
    pub lag: Option<u64>,
}

fn state_name(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn local_status(cluster: &Cluster) -> LocalStatus {
    let m = cluster.raft().metrics();
    let m = m.borrow();
    LocalStatus {
        state: state_name(m.state).to_string(),
        last_log_index: m.last_log_index,
        last_applied: m.last_applied.map(|l| l.index),
        snapshot: m.snapshot.map(|l| l.index),
        history_from: Some(muster_store::EventLog::first_seq_available(
            cluster.reader(),
        )),
        replication: m.replication.as_ref().map(|r| {
            r.iter()
                .map(|(id, log)| (*id, log.map(|l| l.index)))
                .collect()
        }),
    }
}

/// Carries out `req` on this node: `Local` anywhere, the rest only on the leader (otherwise
/// `NotLeader`, so the caller forwards it). Also returns the log index of the membership change
/// (0 if nothing changed), so a forwarding node can wait until it has applied it and answer with
/// the new membership.
pub(crate) async fn execute(
    cluster: &Cluster,
    req: AdminRequest,
) -> Result<(AdminResponse, u64), ClusterError> {
    if let AdminRequest::Local = req {
        return Ok((AdminResponse::Local(local_status(cluster)), 0));
    }
    if !cluster.is_leader() {
        return Err(ClusterError::NotLeader {
            leader: cluster.leader(),
        });
    }
    let membership = {
        let m = cluster.raft().metrics();
        let m = m.borrow();
        m.membership_config.membership().clone()
    };
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let known = |id: u64| membership.get_node(&id).is_some();
    let raft = cluster.raft();
    let index = match req {
        // Answered above, leader or not.
        AdminRequest::Local => 0,
        AdminRequest::SetNode { id, node } => {
            if !known(id) {
                return Err(ClusterError::Membership(format!(
                    "node {id} is not a member of the cluster"
                )));
            }
            let nodes = BTreeMap::from([(id, node)]);
            change(raft, ChangeMembers::SetNodes(nodes), true).await?
        }
        AdminRequest::AddLearner { id, node } => {
            if voters.contains(&id) {
                return Err(ClusterError::Membership(format!(
                    "node {id} is already a voting member"
                )));
            }
            if node.peer_addr.is_empty() {
                return Err(ClusterError::Membership(
                    "give the new node's peer address (HOST:PORT the members dial for Raft)".into(),
                ));
            }
            if let Some(existing) = membership.get_node(&id) {
                if existing.peer_addr != node.peer_addr {
                    return Err(ClusterError::Membership(format!(
                        "node {id} is already a learner at {}; remove it first to change its address",
                        existing.peer_addr
                    )));
                }
                return Ok((AdminResponse::Done, 0));
            }
            {
                let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
                loop {
                    match raft.add_learner(id, node.clone(), false).await {
                        Err(e) if in_progress(&e) && tokio::time::Instant::now() < deadline => {
                            tokio::time::sleep(CHANGE_RETRY).await;
                        }
                        other => break changed(other)?,
                    }
                }
            }
        }
        AdminRequest::Promote { id } => {
            if voters.contains(&id) {
                return Ok((AdminResponse::Done, 0));
            }
            if !known(id) {
                return Err(ClusterError::Membership(format!(
                    "node {id} is not a member; add it first with `muster cluster add-learner {id} HOST:PORT`"
                )));
            }
            wait_caught_up(cluster, id).await?;
            let ids = BTreeSet::from([id]);
            change(raft, ChangeMembers::AddVoterIds(ids), false).await?
        }
        AdminRequest::Remove { id } => {
            if voters.contains(&id) {
                if voters.len() == 1 {
                    return Err(ClusterError::Membership(format!(
                        "node {id} is the only voter; a cluster cannot remove its last voter"
                    )));
                }
                let ids = BTreeSet::from([id]);
                change(raft, ChangeMembers::RemoveVoters(ids), false).await?
            } else if known(id) {
                let ids = BTreeSet::from([id]);
                change(raft, ChangeMembers::RemoveNodes(ids), false).await?
            } else {
                return Err(ClusterError::Membership(format!(
                    "node {id} is not a member of the cluster"
                )));
            }
        }
    };
    Ok((AdminResponse::Done, index))
}

/// Waits until the leader's replication to learner `id` is within [`CATCH_UP_SLACK`] of its log.
async fn wait_caught_up(cluster: &Cluster, id: u64) -> Result<(), ClusterError> {
    let mut rx = cluster.raft().metrics();
    let waited = tokio::time::timeout(
        CATCH_UP_WAIT,
        rx.wait_for(|m| {
            let last = m.last_log_index.unwrap_or(0);
            let matched = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|l| l.index);
            matched.is_some_and(|i| i + CATCH_UP_SLACK >= last)
        }),
    )
    .await
    .map(|r| r.map(|_| ()));
    match waited {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(ClusterError::Fatal("raft stopped".into())),
        Err(_) => Err(ClusterError::Membership(format!(
            "node {id} has not caught up with the leader's log within {CATCH_UP_WAIT:?}; \
             check that it runs and that its peer address is reachable (muster cluster status), then try again"
        ))),
    }
}

/// How long a membership change waits for one under way (another member recording its
/// addresses, say) to finish before it gives up.
const CHANGE_WAIT: Duration = Duration::from_secs(10);
const CHANGE_RETRY: Duration = Duration::from_millis(100);

/// Whether openraft refused a change only because another one is still being committed.
fn in_progress(e: &RaftError<u64, ClientWriteError<u64, MusterNode>>) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(_)
        ))
    )
}

/// Changes the membership, waiting for a change already under way to be committed first: a
/// node's own address record (`SetNode`) may be in flight when an operator's change arrives.
async fn change(
    raft: &crate::MusterRaft,
    members: ChangeMembers<u64, MusterNode>,
    retain: bool,
) -> Result<u64, ClusterError> {
    let deadline = tokio::time::Instant::now() + CHANGE_WAIT;
    loop {
        match raft.change_membership(members.clone(), retain).await {
            Err(e) if in_progress(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(CHANGE_RETRY).await;
            }
            other => return changed(other),
        }
    }
}

/// The log index of a committed membership change, or the error as the caller should see it.
fn changed(
    r: Result<ClientWriteResponse<TypeConfig>, RaftError<u64, ClientWriteError<u64, MusterNode>>>,
) -> Result<u64, ClusterError> {
    match r {
        Ok(resp) => Ok(resp.log_id.index),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            Err(ClusterError::NotLeader {
                leader: f.leader_id.zip(f.leader_node),
            })
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(ClusterError::Membership(e.to_string()))
        }
        Err(RaftError::Fatal(e)) => Err(ClusterError::Fatal(e.to_string())),
    }
}

/// Assembles [`ClusterStatus`] on `cluster`'s node.
pub(crate) async fn status(cluster: &Cluster) -> ClusterStatus {
    let (term, leader, membership) = {
        let m = cluster.raft().metrics();
        let m = m.borrow();
        (
            m.current_term,
            m.current_leader,
            m.membership_config.membership().clone(),
        )
    };
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let nodes: Vec<(u64, MusterNode)> =
        membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
    let mut asks = tokio::task::JoinSet::new();
    for (id, node) in &nodes {
        if *id == cluster.id() {
            continue;
        }
        let (id, peer, fwd) = (*id, node.peer_addr.clone(), cluster.forwarder.clone());
        asks.spawn(async move {
            let answer: Option<(AdminResponse, u64)> = if peer.is_empty() {
                None
            } else {
                fwd.call(
                    Forward::Admin,
                    id,
                    &peer,
                    &AdminRequest::Local,
                    MEMBER_STATUS_TIMEOUT,
                )
                .await
                .ok()
            };
            match answer {
                Some((AdminResponse::Local(s), _)) => (id, Some(s)),
                _ => (id, None),
            }
        });
    }
    let mut locals: BTreeMap<u64, LocalStatus> = BTreeMap::new();
    locals.insert(cluster.id(), local_status(cluster));
    while let Some(joined) = asks.join_next().await {
        if let Ok((id, Some(s))) = joined {
            locals.insert(id, s);
        }
    }
    let from_leader = leader.and_then(|l| locals.get(&l));
    let leader_last = from_leader.and_then(|s| s.last_log_index);
    let replication = from_leader.and_then(|s| s.replication.clone());
    let members = nodes
        .into_iter()
        .map(|(id, node)| {
            let local = locals.get(&id);
            let last_applied = local.and_then(|s| s.last_applied);
            MemberStatus {
                id,
                role: if voters.contains(&id) {
                    Role::Voter
                } else {
                    Role::Learner
                },
                node,
                state: local.map_or_else(|| "unreachable".to_string(), |s| s.state.clone()),
                reachable: local.is_some(),
                last_log_index: local.and_then(|s| s.last_log_index),
                last_applied,
                snapshot: local.and_then(|s| s.snapshot),
                history_from: local.and_then(|s| s.history_from),
                matched: replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten()),
                lag: leader_last
                    .zip(last_applied.or(Some(0)).filter(|_| local.is_some()))
                    .map(|(l, a)| l.saturating_sub(a)),
            }
        })
        .collect();
    ClusterStatus {
        answered_by: cluster.id(),
        leader,
        term,
        leader_last_log_index: leader_last,
        members,
    }
}
