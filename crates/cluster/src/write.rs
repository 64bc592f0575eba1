//! The write path and the read index: a command proposed here or forwarded to the leader, and
//! the leader's confirmation that a read sees every acknowledged write.

use std::time::Duration;

use muster_domain::{Command, Principal};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use tracing::Instrument;

use crate::forward::{Forward, Forwarded};
use crate::{millis, trace, AppliedRange, Cluster, ClusterError, Request};

impl Cluster {
    /// Proposes one command and waits until it is committed and applied. `Ok` carries the
    /// seqs of the events it appended; the state read through [`reader`](Self::reader) includes
    /// them when this returns, on this node whether it leads or not.
    ///
    /// On a follower the command is forwarded to the leader. While no leader is known (an
    /// election is under way) or the known one cannot be reached, it waits for one, up to
    /// [`LEADER_WAIT`]; a request is sent again only when it certainly did not arrive, so a write
    /// is never applied twice by this layer. A leader cut off from the majority refuses at once
    /// (`Unavailable`) instead of accepting a write it cannot commit.
    ///
    /// The command is written on behalf of [`Principal::System`]: for the node's own work.
    /// A command a caller asked for goes through [`write_as`](Self::write_as).
    pub async fn write(&self, command: Command) -> Result<AppliedRange, ClusterError> {
        self.write_as(Principal::System, command).await
    }

    /// [`write`](Self::write) on behalf of `principal`, who is recorded with every event the
    /// command produces (the audit log's "who did it"). A follower forwards the principal with
    /// the command (`ClientWrite` on the peer port), and the leader proposes it as received.
    pub async fn write_as(
        &self,
        principal: Principal,
        command: Command,
    ) -> Result<AppliedRange, ClusterError> {
        // Here too, not only on the leader: this node stores the write as well once it is
        // committed, and a follower that cannot is better refusing it than failing to append.
        self.refuse_when_disk_full()?;
        let request = Request::new(command, principal);
        let span = tracing::info_span!(target: trace::TARGET, "cluster.write", node = self.id);
        self.via_leader(Forward::ClientWrite, &request, |this| {
            let request = request.clone();
            async move { this.write_here(request).await }
        })
        .instrument(span)
        .await
    }

    /// Proposes one command only if this node leads: never forwarded, never waiting for a
    /// leader. For the leader's own work (the dispatcher), which must stop, not move elsewhere,
    /// when this node stops leading.
    pub async fn write_if_leader(&self, command: Command) -> Result<AppliedRange, ClusterError> {
        self.write_here(Request::from(command))
            .await
            .map(|(range, _)| range)
    }

    /// Proposes `request` to this node's Raft, without forwarding. `Ok` also carries the index of
    /// the log entry.
    pub(crate) async fn write_here(
        &self,
        request: Request,
    ) -> Result<(AppliedRange, u64), ClusterError> {
        self.refuse_without_quorum()?;
        self.refuse_when_disk_full()?;
        // Here, so a principal forwarded by a follower is checked by the leader too.
        request.check_principal()?;
        if let Command::CreateJob { id, .. } = &*request.command {
            // This node's dispatcher (it leads) will carry the job out: its spans join here.
            self.job_traces.remember(id);
        }
        let span = tracing::info_span!(
            target: trace::TARGET,
            "raft.commit_apply",
            node = self.id,
            raft.index = tracing::field::Empty
        );
        // Only while this call waits: the apply of this very command is traced under the span.
        let _apply_traced = self.reader.trace_apply(&request.command, span.clone());
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            self.raft.client_write(request).instrument(span.clone()),
        )
        .await;
        if let Ok(Ok(resp)) = &written {
            span.record("raft.index", resp.log_id.index);
        }
        let raft = self.metrics.raft();
        match &written {
            // A command the core refused was committed all the same.
            Ok(Ok(_)) => {
                raft.proposals_committed.inc();
            }
            // Not a proposal: the caller goes to the leader.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {}
            _ => {
                raft.proposals_failed.inc();
            }
        }
        match written {
            Err(_) => Err(ClusterError::Unavailable(format!(
                "the write was not committed within {WRITE_TIMEOUT:?} (is a majority of the cluster reachable?); \
                 it was not acknowledged and may or may not take effect: read before retrying"
            ))),
            Ok(Ok(resp)) => Ok((resp.data.into_result()?, resp.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Unavailable(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Fatal(e.to_string())),
        }
    }

    /// A leader that has not heard from a majority recently cannot commit: say so before
    /// appending anything.
    fn refuse_without_quorum(&self) -> Result<(), ClusterError> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader
            || m.membership_config.membership().voter_ids().count() < 2
        {
            return Ok(());
        }
        match m.millis_since_quorum_ack {
            Some(ms) if ms > millis(self.quorum_lost_after) => Err(ClusterError::Unavailable(
                format!(
                    "this node has not heard from a majority of the cluster for {ms} ms, so nothing \
                     can be committed; the request was not accepted. Check the other members \
                     (`muster cluster status`)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Makes sure a read that follows sees every write acknowledged before this call, on any
    /// node (the read-index protocol): the leader confirms with a quorum that it still leads and
    /// names its commit index; this node waits until it has applied that far. On a follower the
    /// leader is asked over the peer service.
    pub async fn linearizable(&self) -> Result<(), ClusterError> {
        self.via_leader(Forward::ReadIndex, &(), |this| async move {
            this.read_index_here().await.map(|i| ((), i))
        })
        .await
    }

    /// Whether a quorum confirms that this node leads now (not merely that it believes so).
    pub async fn confirm_leadership(&self) -> Result<(), ClusterError> {
        self.read_index_here().await.map(|_| ())
    }

    /// The read index, if this node is the leader: confirmed with a quorum, and already applied
    /// here.
    pub(crate) async fn read_index_here(&self) -> Result<u64, ClusterError> {
        // One heartbeat round can miss a quorum on a busy but healthy cluster (a slow append in
        // flight): try again for a moment before calling the cluster unavailable.
        let deadline = tokio::time::Instant::now() + QUORUM_RETRY;
        loop {
            self.refuse_without_quorum()?;
            let checked =
                tokio::time::timeout(WRITE_TIMEOUT, self.raft.ensure_linearizable()).await;
            return match checked {
                Err(_) => Err(ClusterError::Unavailable(format!(
                    "the leader could not confirm its leadership with a majority within {WRITE_TIMEOUT:?}"
                ))),
                Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
                Ok(Err(RaftError::APIError(
                    openraft::error::CheckIsLeaderError::ForwardToLeader(f),
                ))) => Err(ClusterError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node),
                }),
                Ok(Err(RaftError::APIError(
                    openraft::error::CheckIsLeaderError::QuorumNotEnough(e),
                ))) => {
                    if tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(LEADER_POLL / 2).await;
                        continue;
                    }
                    Err(ClusterError::Unavailable(format!(
                        "this node cannot reach a majority of the cluster: {e}"
                    )))
                }
                Ok(Err(RaftError::Fatal(e))) => Err(ClusterError::Fatal(e.to_string())),
            };
        }
    }

    /// Runs `here` on this node; if it answers `NotLeader`, sends `request` as `what` to the
    /// leader instead and, when that answers, waits until this node has applied the log index the
    /// leader returned (so the caller reads its own writes here). Waits for a leader, up to
    /// [`LEADER_WAIT`], while none is known or the known one cannot be reached.
    pub(crate) async fn via_leader<Req, Resp, F, Fut>(
        &self,
        what: Forward,
        request: &Req,
        here: F,
    ) -> Result<Resp, ClusterError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: Fn(Cluster) -> Fut,
        Fut: std::future::Future<Output = Result<(Resp, u64), ClusterError>>,
    {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut replaced_reads = 0;
        loop {
            let leader = match here(self.clone()).await {
                Err(ClusterError::NotLeader { leader }) => leader,
                other => return other.map(|(resp, _)| resp),
            };
            let why = match leader {
                Some((id, node)) if id != self.id && !node.peer_addr.is_empty() => {
                    let call = self
                        .forwarder
                        .call::<Req, (Resp, u64)>(
                            what,
                            id,
                            &node.peer_addr,
                            request,
                            FORWARD_TIMEOUT,
                        )
                        .instrument(tracing::info_span!(
                            target: trace::TARGET,
                            "cluster.forward",
                            otel.kind = "client",
                            leader = id
                        ));
                    match self.unless_replaced(id, call).await {
                        // A read changes nothing: ask the new leader, even past the deadline
                        // (the wait was for the old one's silence, and a leader is known now).
                        Err(Replaced(m)) if matches!(what, Forward::ReadIndex) => {
                            if replaced_reads < MAX_REPLACED_READS {
                                replaced_reads += 1;
                                continue;
                            }
                            m
                        }
                        Err(Replaced(m)) => return Err(ClusterError::Unavailable(format!(
                            "{m}; it may or may not have taken effect: check before sending it again"
                        ))),
                        Ok(Ok((resp, index))) => {
                            self.wait_applied(index).await?;
                            return Ok(resp);
                        }
                        Ok(Err(Forwarded::NotSent(m))) => {
                            format!("the leader, node {id}, cannot be reached: {m}")
                        }
                        // The leader stepped down before it appended anything: ask the next one.
                        Ok(Err(Forwarded::Failed(ClusterError::NotLeader { .. }))) => {
                            format!("node {id} stopped leading")
                        }
                        Ok(Err(Forwarded::Failed(e))) => return Err(e),
                    }
                }
                Some((id, _)) if id != self.id => {
                    format!("the leader, node {id}, has not recorded its peer address yet")
                }
                _ => "no leader is known: an election may be under way".to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Unavailable(format!(
                    "{why}; gave up after {LEADER_WAIT:?}"
                )));
            }
            self.leader_changes(deadline).await;
        }
    }

    /// Runs `call`, forwarded to leader `id`, but stops waiting for it [`REPLACED_GRACE`] after
    /// another node has become leader: a leader that froze or was cut off never answers, and
    /// waiting out [`FORWARD_TIMEOUT`] would tell the caller nothing more. A write may still
    /// have reached the old leader and been replicated before it stopped (the new leader then
    /// commits it), so for a write the answer is "outcome unknown", never a silent resend.
    async fn unless_replaced<T>(
        &self,
        id: u64,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, Replaced> {
        tokio::pin!(call);
        let mut rx = self.raft.metrics();
        let raft_stopped = {
            let replaced = rx.wait_for(|m| m.current_leader.is_some_and(|l| l != id));
            tokio::select! {
                r = &mut call => return Ok(r),
                w = replaced => w.is_err(),
            }
        };
        if raft_stopped {
            // Only the call can still answer.
            return Ok(call.await);
        }
        let now = rx.borrow().current_leader;
        tokio::time::timeout(REPLACED_GRACE, &mut call)
            .await
            .map_err(|_| {
                Replaced(format!(
                    "the request went to node {id}, which stopped answering, and node {} leads now",
                    now.map_or_else(|| "another".to_string(), |n| n.to_string())
                ))
            })
    }

    /// Waits a little for the leader to change (or become known), at most until `deadline`.
    async fn leader_changes(&self, deadline: tokio::time::Instant) {
        let mut rx = self.raft.metrics();
        let before = rx.borrow_and_update().current_leader;
        let until = deadline.min(tokio::time::Instant::now() + LEADER_POLL);
        let changed = rx.wait_for(|m| m.current_leader.is_some() && m.current_leader != before);
        let _ = tokio::time::timeout_at(until, changed).await;
    }

    /// Waits until this node has applied log index `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), ClusterError> {
        self.raft
            .wait(Some(FORWARDED_APPLY_WAIT))
            .applied_index_at_least(Some(index), "applied here")
            .await
            .map(|_| ())
            .map_err(|e| {
                ClusterError::Unavailable(format!(
                    "the leader answered, but this node has not applied its log up to index {index}: {e}"
                ))
            })
    }
}

/// How long a follower waits to apply a write it forwarded, once the leader answered.
const FORWARDED_APPLY_WAIT: Duration = Duration::from_secs(10);
/// How long a request waits for a leader to be elected or to become reachable. Elections take
/// about one election timeout; this covers several failed rounds.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long a read index keeps asking when a heartbeat round misses a quorum.
const QUORUM_RETRY: Duration = Duration::from_secs(3);
/// How often a request waiting for a leader looks again.
const LEADER_POLL: Duration = Duration::from_millis(200);
/// How long a write or a read index may take to be confirmed by a majority.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request forwarded to the leader may take (it waits for commit and apply there).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(35);
/// How many times a read forwarded to a leader that was replaced is asked again of the new one
/// regardless of [`LEADER_WAIT`] (bounded: leaders that keep changing end it).
const MAX_REPLACED_READS: u32 = 3;
/// A forwarded request given up because another node leads now (see
/// `Cluster::unless_replaced`): what happened, for the caller's message.
struct Replaced(String);

/// How long a request forwarded to a leader may still take once another node leads (a deposed
/// leader that is alive answers at once that it no longer leads).
const REPLACED_GRACE: Duration = Duration::from_secs(2);
