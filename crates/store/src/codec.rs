//! Byte formats of everything this crate writes to sled.
//!
//! - Keys that are numbers (log index, event seq) are big-endian `u64`s, so sled's byte order is
//!   numeric order and range scans work.
//! - A log entry is a small binary envelope (see [`encode_entry`]) whose command payload is
//!   protobuf, via `muster-proto`: field numbers there are the compatibility promise.
//! - An event is stored as a `muster.v1.EventRecord`: its seq, `muster-proto`'s encoding of the
//!   domain `Event`, its hash-chain link (see [`crate::chain`]) and the principal of its command
//!   (text form; empty for `system`, see [`principal_text`]).
//! - openraft's own types (vote, log ids, membership, snapshot meta) are serde_json: they are
//!   small, rare, and openraft owns their shape.

use muster_domain::{Command, Event, Principal};
use openraft::{CommittedLeaderId, EntryPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::chain::{chain_hash, Hash};
use crate::error::StoreError;
use crate::types::{Entry, LogId, Request};
use muster_proto::EventRecordBytes;

/// Version byte at the head of a log entry envelope without a principal (every entry an older
/// release wrote, and every entry of a `system` command).
const ENTRY_FORMAT: u8 = 1;
/// Version byte of a command entry that carries a principal (see [`encode_entry`]). An older
/// release refuses it as an unknown format rather than misreading it.
const ENTRY_FORMAT_PRINCIPAL: u8 = 2;
const KIND_BLANK: u8 = 0;
const KIND_COMMAND: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 8 + 8 + 1;

/// LEB128: seven bits a byte, low first, the high bit set on every byte but the last.
pub(crate) fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The value and the bytes it took; `None` if cut short or longer than ten bytes.
pub(crate) fn read_varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

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
///
/// A command written on behalf of anyone but `system` is format 2 instead, whose payload starts
/// with the principal: `[principal length u32][principal, UTF-8 text form][command]`. A format 1
/// command (every entry older releases wrote) is `system`'s.
pub(crate) fn encode_entry(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let mut format = ENTRY_FORMAT;
    let (kind, payload) = match &entry.payload {
        EntryPayload::Blank => (KIND_BLANK, Vec::new()),
        EntryPayload::Normal(req) if req.principal == Principal::System => {
            (KIND_COMMAND, encode_command(&req.command))
        }
        EntryPayload::Normal(req) => {
            format = ENTRY_FORMAT_PRINCIPAL;
            let principal = req.principal.to_string();
            let len = u32::try_from(principal.len()).map_err(|_| {
                StoreError::corrupt("principal", format!("{} bytes", principal.len()))
            })?;
            let command = encode_command(&req.command);
            let mut payload = Vec::with_capacity(4 + principal.len() + command.len());
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(principal.as_bytes());
            payload.extend_from_slice(&command);
            (KIND_COMMAND, payload)
        }
        EntryPayload::Membership(m) => (KIND_MEMBERSHIP, to_json(m)?),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(format);
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
    let format = bytes[0];
    if format != ENTRY_FORMAT && format != ENTRY_FORMAT_PRINCIPAL {
        return Err(StoreError::corrupt(WHAT, format!("format {format}")));
    }
    let int = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let log_id = LogId::new(CommittedLeaderId::new(int(1), int(9)), int(17));
    let payload = &bytes[HEADER_LEN..];
    let kind = bytes[HEADER_LEN - 1];
    if format == ENTRY_FORMAT_PRINCIPAL && kind != KIND_COMMAND {
        return Err(StoreError::corrupt(
            WHAT,
            format!("format {format} with payload kind {kind}"),
        ));
    }
    let payload = match kind {
        KIND_BLANK => EntryPayload::Blank,
        KIND_COMMAND if format == ENTRY_FORMAT_PRINCIPAL => {
            let (principal, command) = split_principal(payload)?;
            EntryPayload::Normal(Request::new(decode_command(command)?, principal))
        }
        KIND_COMMAND => EntryPayload::Normal(Request::from(decode_command(payload)?)),
        KIND_MEMBERSHIP => EntryPayload::Membership(from_json(WHAT, payload)?),
        other => return Err(StoreError::corrupt(WHAT, format!("payload kind {other}"))),
    };
    Ok(Entry { log_id, payload })
}

/// The principal and the command bytes of a format 2 command payload.
fn split_principal(payload: &[u8]) -> Result<(Principal, &[u8]), StoreError> {
    const WHAT: &str = "log entry principal";
    let Some((len, rest)) = payload.split_first_chunk::<4>() else {
        return Err(StoreError::corrupt(WHAT, "truncated"));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(StoreError::corrupt(
            WHAT,
            format!("{len} bytes, {} left", rest.len()),
        ));
    }
    let (text, command) = rest.split_at(len);
    let text = std::str::from_utf8(text).map_err(|e| StoreError::corrupt(WHAT, e))?;
    let principal = text.parse().map_err(|e| StoreError::corrupt(WHAT, e))?;
    Ok((principal, command))
}

/// The principal as an event record stores it: its text form, empty for `system` (so a system
/// command's records are byte for byte what they were before principals existed).
pub(crate) fn principal_text(principal: &Principal) -> String {
    match principal {
        Principal::System => String::new(),
        other => other.to_string(),
    }
}

/// The principal of a stored record's text (see [`principal_text`]).
pub(crate) fn parse_principal(seq: u64, text: &str) -> Result<Principal, StoreError> {
    if text.is_empty() {
        return Ok(Principal::System);
    }
    match text.parse() {
        // Written as no principal, never as its text: a record saying `system` was not
        // written by this store.
        Ok(Principal::System) => Err(StoreError::corrupt(
            "event record",
            format!("seq {seq}: `system` stored as text"),
        )),
        Ok(p) => Ok(p),
        Err(e) => Err(StoreError::corrupt(
            "event record",
            format!("seq {seq}: {e}"),
        )),
    }
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

/// The stored bytes of the event `seq`, written on behalf of the principal whose stored text
/// is `principal` (see [`principal_text`]), whose predecessor's hash is `prev`, and its own hash.
pub(crate) fn encode_record(
    seq: u64,
    event: &Event,
    principal: &str,
    prev: &Hash,
) -> (Vec<u8>, Hash) {
    let event = encode_event(event);
    let hash = chain_hash(prev, seq, principal, &event);
    let record = EventRecordBytes {
        seq,
        event,
        hash: hash.to_vec(),
        principal: principal.to_string(),
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
        for principal in [
            Principal::Anonymous,
            Principal::Policy("iothubowner".into()),
            Principal::Certificate("CN=ops, O=x:y".into()),
        ] {
            roundtrip(Entry {
                log_id,
                payload: EntryPayload::Normal(Request::new(
                    Command::Advance {
                        at: Timestamp(1_700_000_000_000),
                    },
                    principal,
                )),
            });
        }
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

    /// An entry of a `system` command is the format older releases wrote, and an entry they
    /// wrote reads as `system`'s; one with another principal is format 2.
    #[test]
    fn system_entries_keep_the_old_format() {
        let log_id = LogId::new(CommittedLeaderId::new(7, 3), 42);
        let cmd = Command::Advance {
            at: Timestamp(1_700_000_000_000),
        };
        let old = encode_entry(&Entry {
            log_id,
            payload: EntryPayload::Normal(Request::from(cmd.clone())),
        })
        .unwrap();
        assert_eq!(old[0], 1);
        assert_eq!(&old[HEADER_LEN..], encode_command(&cmd).as_slice());
        match decode_entry(&old).unwrap().payload {
            EntryPayload::Normal(r) => assert_eq!(r.principal, Principal::System),
            other => panic!("{other:?}"),
        }
        let new = encode_entry(&Entry {
            log_id,
            payload: EntryPayload::Normal(Request::new(cmd, Principal::Token("t1".into()))),
        })
        .unwrap();
        assert_eq!(new[0], 2);
        assert_eq!(&new[HEADER_LEN..HEADER_LEN + 12], b"\0\0\0\x08token:t1");
    }

    #[test]
    fn damaged_principals_are_errors() {
        let log_id = LogId::new(CommittedLeaderId::new(7, 3), 42);
        let bytes = encode_entry(&Entry {
            log_id,
            payload: EntryPayload::Normal(Request::new(
                Command::Advance {
                    at: Timestamp(1_700_000_000_000),
                },
                Principal::Anonymous,
            )),
        })
        .unwrap();
        // Cut inside the length, a length past the end, text that is no principal, not UTF-8.
        assert!(decode_entry(&bytes[..HEADER_LEN + 2]).is_err());
        let mut long = bytes.clone();
        long[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_entry(&long).is_err());
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 4] = b'x';
        assert!(decode_entry(&bad).is_err());
        bad[HEADER_LEN + 4] = 0xff;
        assert!(decode_entry(&bad).is_err());
        // Format 2 is only for commands.
        let mut blank = encode_entry(&Entry {
            log_id,
            payload: EntryPayload::Blank,
        })
        .unwrap();
        blank[0] = 2;
        assert!(decode_entry(&blank).is_err());
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
        bytes[0] = 3;
        assert!(decode_entry(&bytes).is_err());
    }
}
