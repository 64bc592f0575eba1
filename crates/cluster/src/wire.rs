//! What crosses the peer transport besides openraft's own types: the messages the Raft client
//! ([`crate::transport`]) and the forwarder ([`crate::forward`]) send and the peer server
//! ([`crate::server`]) reads, so neither side imports the other.

use openraft::raft::AppendEntriesRequest;
use serde::{Deserialize, Serialize};

use muster_store::{wire, CommandError, MusterNode, TypeConfig};

use crate::ClusterError;

/// Snapshot chunks and large append-entries batches are big messages.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The metadata key, and its value, on the `UNAVAILABLE` a follower answers an AppendEntries
/// with entries or an InstallSnapshot with while its disk is below the reserve: the leader's
/// client then retries at the heartbeat pace instead of its half-second backoff for a peer that
/// does not answer (see [`crate::server`]).
pub(crate) const REFUSAL_KEY: &str = "muster-refusal";
pub(crate) const REFUSAL_DISK_FULL: &str = "disk-full";

/// The JSON header of an AppendEntries whose entries travel in `RaftBytes.data`, encoded by
/// [`wire::encode_entries`]: the request with an empty entry list, and how many entries the data
/// holds.
///
/// A request without entries (a heartbeat) is sent as the plain request with empty data. The
/// header is deliberately not an `AppendEntriesRequest`: a node that did not know this format
/// would refuse it as undecodable instead of reading an empty request and acknowledging entries
/// it never stored.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct BinaryAppend {
    append: AppendEntriesRequest<TypeConfig>,
    binary_entries: u64,
}

impl BinaryAppend {
    /// The header and the data that carry `rpc`.
    pub(crate) fn encode(
        rpc: &AppendEntriesRequest<TypeConfig>,
    ) -> Result<(BinaryAppend, Vec<u8>), muster_store::StoreError> {
        let data = wire::encode_entries(&rpc.entries)?;
        let header = BinaryAppend {
            binary_entries: rpc.entries.len() as u64,
            append: AppendEntriesRequest {
                vote: rpc.vote,
                prev_log_id: rpc.prev_log_id,
                leader_commit: rpc.leader_commit,
                entries: Vec::new(),
            },
        };
        Ok((header, data))
    }

    /// The whole request, with the entries decoded from `data`.
    pub(crate) fn into_request(
        self,
        data: &[u8],
    ) -> Result<AppendEntriesRequest<TypeConfig>, String> {
        let mut rpc = self.append;
        if !rpc.entries.is_empty() {
            return Err("entries both in the header and in the data".into());
        }
        rpc.entries = wire::decode_entries(data).map_err(|e| e.to_string())?;
        if rpc.entries.len() as u64 != self.binary_entries {
            return Err(format!(
                "{} entries in the data, {} announced",
                rpc.entries.len(),
                self.binary_entries
            ));
        }
        Ok(rpc)
    }
}

/// The answer to a forwarded request, as it crosses the network: [`ClusterError`] without the
/// variants that cannot happen remotely, in a serializable form.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardError {
    Rejected(CommandError),
    NotLeader(Option<(u64, MusterNode)>),
    Unavailable(String),
    Membership(String),
    Fatal(String),
    DiskFull { node: u64, free: u64, reserve: u64 },
}

impl From<ClusterError> for ForwardError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Rejected(c) => ForwardError::Rejected(c),
            ClusterError::NotLeader { leader } => ForwardError::NotLeader(leader),
            ClusterError::Unavailable(m) => ForwardError::Unavailable(m),
            ClusterError::Membership(m) => ForwardError::Membership(m),
            ClusterError::DiskFull {
                node,
                free,
                reserve,
            } => ForwardError::DiskFull {
                node,
                free,
                reserve,
            },
            other @ (ClusterError::Store(_) | ClusterError::Fatal(_)) => {
                ForwardError::Fatal(other.to_string())
            }
        }
    }
}

impl From<ForwardError> for ClusterError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Rejected(c) => ClusterError::Rejected(c),
            ForwardError::NotLeader(leader) => ClusterError::NotLeader { leader },
            ForwardError::Unavailable(m) => ClusterError::Unavailable(m),
            ForwardError::Membership(m) => ClusterError::Membership(m),
            ForwardError::Fatal(m) => ClusterError::Fatal(m),
            ForwardError::DiskFull {
                node,
                free,
                reserve,
            } => ClusterError::DiskFull {
                node,
                free,
                reserve,
            },
        }
    }
}

/// The `History` RPC's request.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HistoryRequest {
    pub(crate) from_seq: u64,
    pub(crate) limit: usize,
}

/// The `History` RPC's answer header; the records are in `RaftBytes.data`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HistoryHeader {
    pub(crate) first_seq_available: u64,
    pub(crate) count: usize,
}

/// The most records one `History` answer carries.
pub(crate) const HISTORY_MAX: usize = 4096;

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use muster_domain::Command;
    use muster_store::{LogId, Request};
    use muster_types::Timestamp;
    use openraft::{CommittedLeaderId, EntryPayload, Vote};

    use super::*;

    /// An append of `n` entries after index 4: the wire tests' and the fuzz targets' sample.
    pub(crate) fn request(n: u64) -> AppendEntriesRequest<TypeConfig> {
        let log_id = |i| LogId::new(CommittedLeaderId::new(2, 1), i);
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(4)),
            leader_commit: Some(log_id(3)),
            entries: (5..5 + n)
                .map(|i| muster_store::Entry {
                    log_id: log_id(i),
                    payload: EntryPayload::Normal(Request::from(Command::Advance {
                        at: Timestamp(1_700_000_000_000 + i as i64),
                    })),
                })
                .collect(),
        }
    }

    /// What the client side sends for a request with entries, as the server side reads it.
    fn over_the_wire(rpc: &AppendEntriesRequest<TypeConfig>) -> (Vec<u8>, Vec<u8>) {
        let (header, data) = BinaryAppend::encode(rpc).unwrap();
        (serde_json::to_vec(&header).unwrap(), data)
    }

    #[test]
    fn binary_entries_arrive_as_sent() {
        let sent = request(3);
        let (json, data) = over_the_wire(&sent);
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        let got = header.into_request(&data).unwrap();
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
        assert_eq!(got.entries.len(), 3);
    }

    /// A forwarded write carries its principal to the leader; one from an older node (no
    /// principal) is `system`'s.
    #[test]
    fn a_forwarded_write_carries_its_principal() {
        let cmd = Command::Advance {
            at: Timestamp(1_700_000_000_000),
        };
        let sent = Request::new(cmd.clone(), muster_domain::Principal::Token("t1".into()));
        let json = serde_json::to_vec(&sent).unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&json).unwrap(), sent);
        let mut old = serde_json::to_value(&sent).unwrap();
        old.as_object_mut().unwrap().remove("principal");
        let old: Request = serde_json::from_value(old).unwrap();
        assert_eq!(old, Request::from(cmd));
    }

    /// Entries written on behalf of a principal reach the follower with it.
    #[test]
    fn appended_entries_carry_their_principal() {
        let mut sent = request(2);
        if let EntryPayload::Normal(r) = &mut sent.entries[1].payload {
            r.principal = muster_domain::Principal::Anonymous;
        }
        let (json, data) = over_the_wire(&sent);
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        let got = header.into_request(&data).unwrap();
        assert_eq!(format!("{got:?}"), format!("{sent:?}"));
    }

    #[test]
    fn a_mismatched_or_unknown_format_is_refused() {
        let (json, data) = over_the_wire(&request(3));
        // Fewer entries in the data than announced.
        let (_, fewer) = over_the_wire(&request(2));
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        assert!(header.into_request(&fewer).is_err());
        let header: BinaryAppend = serde_json::from_slice(&json).unwrap();
        assert!(header.into_request(&data[..data.len() - 1]).is_err());
        // A node that reads the plain request cannot mistake the header for an empty request
        // (and acknowledge entries it never stored).
        assert!(serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(&json).is_err());
    }
}
