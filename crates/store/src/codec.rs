//! Byte formats of everything this crate writes to sled.
//!
//! - Keys that are numbers (log index, event seq) are big-endian `u64`s, so sled's byte order is
//!   numeric order and range scans work.
//! - A log entry is a small binary envelope (see [`encode_entry`]) whose command payload is
//!   protobuf, via `muster-proto`: field numbers there are the compatibility promise.
//! - An event is stored as a `muster.v1.EventRecord`: its seq, `muster-proto`'s encoding of the
//!   domain `Event`, and its hash-chain link (see [`crate::chain`]).
//! - openraft's own types (vote, log ids, membership, snapshot meta) are serde_json: they are
//!   small, rare, and openraft owns their shape.

use muster_domain::{Command, Event};
use openraft::{CommittedLeaderId, EntryPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::chain::{chain_hash, Hash};
use crate::error::StoreError;
use crate::types::{Entry, LogId, Request};
use muster_proto::EventRecordBytes;

/// Version byte at the head of every log entry envelope.
const ENTRY_FORMAT: u8 = 1;
const KIND_BLANK: u8 = 0;
const KIND_COMMAND: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 8 + 8 + 1;

pub(crate) fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub(crate) fn key_u64(what: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::corrupt(what, format!("key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Encodes a log entry as
/// `[format=1][term u64][leader node u64][index u64][kind u8][payload]`, all integers
/// big-endian; kind 0 is blank (no payload), 1 a command (protobuf `muster.v1.Command`), 2 a
/// membership change (serde_json of openraft's `Membership`).
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let (kind, payload) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, Vec::new()),
        EntryPayload::Normal(req) => (KIND_COMMAND, encode_command(&req.command)),
        EntryPayload::Membership(m) => (KIND_MEMBERSHIP, to_json(m)?),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(ENTRY_FORMAT);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.leader_id.node_id.to_be_bytes());
    out.extend_from_slice(&entry.log_id.index.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&payload);
    Ok(out)
}

pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, StoreError> {
    const WHAT: &str = "log entry";
    if bytes.len() < HEADER_LEN {
        return Err(StoreError::corrupt(WHAT, format!("{} bytes", bytes.len())));
    }
    if bytes[0] != ENTRY_FORMAT {
        return Err(StoreError::corrupt(WHAT, format!("format {}", bytes[0])));
    }
    let int = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let log_id = LogId::new(CommittedLeaderId::new(int(1), int(9)), int(17));
    let payload = &bytes[HEADER_LEN..];
    let payload = match bytes[HEADER_LEN - 1] {
        KIND_BLANK => EntryPayload::Blank,
        KIND_COMMAND => EntryPayload::Normal(Request::from(decode_command(payload)?)),
        KIND_MEMBERSHIP => EntryPayload::Membership(from_json(WHAT, payload)?),
        other => return Err(StoreError::corrupt(WHAT, format!("payload kind {other}"))),
    };
    Ok(Entry { log_id, payload })
}

pub(crate) fn encode_command(cmd: &Command) -> Vec<u8> {
    muster_proto::encode_command(cmd)
}

pub(crate) fn decode_command(bytes: &[u8]) -> Result<Command, StoreError> {
    muster_proto::decode_command(bytes).map_err(|e| StoreError::corrupt("command", e))
}

pub(crate) fn encode_event(event: &Event) -> Vec<u8> {
    muster_proto::encode_event(event)
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, StoreError> {
    muster_proto::decode_event(bytes).map_err(|e| StoreError::corrupt("event", e))
}

/// The stored bytes of the event `seq` whose predecessor's hash is `prev`, and its own hash.
pub(crate) fn encode_record(seq: u64, event: &Event, prev: &Hash) -> (Vec<u8>, Hash) {
    let event = encode_event(event);
    let hash = chain_hash(prev, seq, &event);
    let record = EventRecordBytes {
        seq,
        event,
        hash: hash.to_vec(),
    };
    (record.encode_to_vec(), hash)
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<EventRecordBytes, StoreError> {
    EventRecordBytes::decode(bytes).map_err(|e| StoreError::corrupt("event record", e))
}

/// The event of a stored record, checking that the record is the one its key says.
///
/// The event is decoded from the record's bytes in place (`record_seq_and_event` borrows
/// them): offline replay reads every record, and copying each event out first was ~6% of it.
pub(crate) fn decode_record_event(seq: u64, bytes: &[u8]) -> Result<Event, StoreError> {
    let (stored, event) = muster_proto::record_seq_and_event(bytes)
        .map_err(|e| StoreError::corrupt("event record", e))?;
    if stored != seq {
        return Err(StoreError::corrupt(
            "event record",
            format!("record {stored} stored under seq {seq}"),
        ));
    }
    decode_event(&event)
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    // Serializing openraft's and the domain's plain data types cannot fail (no maps with
    // non-string keys, no failing Serialize impls); the error path is kept rather than unwrapped.
    serde_json::to_vec(value).map_err(|e| StoreError::corrupt("json encoding", e))
}

pub(crate) fn from_json<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(what, e))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use muster_types::Timestamp;
    use openraft::Membership;

    use super::*;
    use crate::types::MusterNode;

    fn roundtrip(entry: Entry) {
        let bytes = encode_entry(&entry).unwrap();
        let back = decode_entry(&bytes).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        assert_eq!(
            format!("{:?}", back.payload),
            format!("{:?}", entry.payload)
        );
    }

    #[test]
    fn entries_roundtrip() {
        let log_id = LogId::new(CommittedLeaderId::new(7, 3), 42);
        roundtrip(Entry {
            log_id,
            payload: EntryPayload::Blank,
        });
        roundtrip(Entry {
            log_id,
            payload: EntryPayload::Normal(Request::from(Command::Advance {
                at: Timestamp(1_700_000_000_000),
            })),
        });
        let nodes = BTreeMap::from([(
            1,
            MusterNode {
                peer_addr: "127.0.0.1:7000".into(),
                grpc_addr: "127.0.0.1:7001".into(),
                http_addr: "127.0.0.1:7002".into(),
            },
        )]);
        roundtrip(Entry {
            log_id,
            payload: EntryPayload::Membership(Membership::new(vec![BTreeSet::from([1])], nodes)),
        });
    }

    #[test]
    fn damaged_entries_are_errors() {
        assert!(decode_entry(&[]).is_err());
        let mut bytes = encode_entry(&Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Blank,
        })
        .unwrap();
        bytes[HEADER_LEN - 1] = 9;
        assert!(decode_entry(&bytes).is_err());
        bytes[0] = 2;
        assert!(decode_entry(&bytes).is_err());
    }
}
