//! Log entries on the wire between nodes, in the store's own binary entry format.
//!
//! The Raft transport (`muster-cluster`'s `network`) carries the entries of an AppendEntries
//! request as these bytes instead of as JSON: an entry of 1,000 device results is a few tens of
//! kilobytes of protobuf, against several times that of JSON that took far longer to write and
//! to parse.
//!
//! Format: `[count u32]` then, per entry, `[len u32][entry envelope]`, integers big-endian; the
//! envelope is the one the log stores (`codec::encode_entry`: format byte, log id, kind, protobuf
//! command / JSON membership), so a node decodes what it would have read from its own disk.

use crate::codec::{decode_entry, encode_entry};
use crate::error::StoreError;
use crate::types::Entry;

const WHAT: &str = "entries on the wire";

/// Encodes `entries` as one buffer (see the module docs).
pub fn encode_entries(entries: &[Entry]) -> Result<Vec<u8>, StoreError> {
    let count = u32::try_from(entries.len())
        .map_err(|_| StoreError::corrupt(WHAT, format!("{} entries", entries.len())))?;
    let mut encoded = Vec::with_capacity(entries.len());
    let mut total = 4;
    for entry in entries {
        let bytes = encode_entry(entry)?;
        total += 4 + bytes.len();
        encoded.push(bytes);
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&count.to_be_bytes());
    for bytes in encoded {
        let len = u32::try_from(bytes.len())
            .map_err(|_| StoreError::corrupt(WHAT, format!("entry of {} bytes", bytes.len())))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Decodes what [`encode_entries`] wrote; anything short, long or undecodable is an error.
pub fn decode_entries(bytes: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let mut rest = bytes;
    let count = take_u32(&mut rest)?;
    // Every entry takes at least its length prefix: a count the bytes cannot hold is an error
    // before anything is allocated for it.
    if count as usize > rest.len() / 4 {
        return Err(StoreError::corrupt(
            WHAT,
            format!("{count} entries in {} bytes", bytes.len()),
        ));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = take_u32(&mut rest)? as usize;
        if len > rest.len() {
            return Err(StoreError::corrupt(
                WHAT,
                format!("entry of {len} bytes, {} left", rest.len()),
            ));
        }
        let (entry, tail) = rest.split_at(len);
        entries.push(decode_entry(entry)?);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(StoreError::corrupt(
            WHAT,
            format!("{} bytes after the last entry", rest.len()),
        ));
    }
    Ok(entries)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, StoreError> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err(StoreError::corrupt(WHAT, "truncated"));
    };
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use muster_domain::Command;
    use muster_types::Timestamp;
    use openraft::{CommittedLeaderId, EntryPayload, Membership};

    use super::*;
    use crate::types::{LogId, MusterNode, Request};

    fn entries() -> Vec<Entry> {
        let log_id = |i| LogId::new(CommittedLeaderId::new(3, 1), i);
        vec![
            Entry {
                log_id: log_id(10),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(11),
                payload: EntryPayload::Normal(Request::from(Command::Advance {
                    at: Timestamp(1_700_000_000_000),
                })),
            },
            Entry {
                log_id: log_id(12),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2])],
                    BTreeMap::from([(1, MusterNode::default()), (2, MusterNode::default())]),
                )),
            },
        ]
    }

    #[test]
    fn entries_roundtrip() {
        for n in 0..=3 {
            let sent = &entries()[..n];
            let back = decode_entries(&encode_entries(sent).unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{sent:?}"));
        }
    }

    #[test]
    fn damaged_buffers_are_errors() {
        let bytes = encode_entries(&entries()).unwrap();
        assert!(decode_entries(&[]).is_err());
        for cut in [1, 5, bytes.len() - 1] {
            assert!(decode_entries(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_entries(&long).is_err());
        let mut many = bytes;
        many[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_entries(&many).is_err());
    }
}
