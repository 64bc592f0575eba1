//! `sm_meta`'s `applied` record: what the applied state covers (last applied log id,
//! membership, seq range, chain head), in one value so that one insert moves all of it (the store
//! writes no sled batches, see [`crate::writes`]).
//!
//! Releases before this record kept each field under its own key (`last_applied`, `membership`,
//! `last_seq`, `first_seq`, `chain_head`, written in one batch); [`AppliedMeta::read`] still
//! reads those, and `open` rewrites them as the record.

use serde::{Deserialize, Serialize};

use super::{read_head, read_json, read_u64, Applied};
use crate::chain::Hash;
use crate::codec::{from_json, to_json};
use crate::error::StoreError;
use crate::types::{LogId, StoredMembership};

/// The record's key.
pub(crate) const APPLIED: &[u8] = b"applied";

const LAST_APPLIED: &[u8] = b"last_applied";
const MEMBERSHIP: &[u8] = b"membership";
const LAST_SEQ: &[u8] = b"last_seq";
const FIRST_SEQ: &[u8] = b"first_seq";
pub(super) const CHAIN_HEAD: &[u8] = b"chain_head";
/// The keys of the layout before the record, removed once it is written.
const LEGACY: [&[u8]; 5] = [LAST_APPLIED, MEMBERSHIP, LAST_SEQ, FIRST_SEQ, CHAIN_HEAD];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppliedMeta {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    /// The seq of the last applied event (0: none).
    pub(crate) last_seq: u64,
    /// The oldest seq readers see: 1, or after an installed snapshot its `last_seq + 1` until a
    /// back-fill brings the history before it.
    pub(crate) first_seq: u64,
    /// The hash of event `last_seq`.
    pub(crate) chain_head: Hash,
}

impl AppliedMeta {
    pub(crate) fn of(applied: &Applied) -> Self {
        AppliedMeta {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            last_seq: applied.last_seq,
            first_seq: applied.first_seq_available,
            chain_head: applied.head,
        }
    }

    /// The stored record, the fields of an older release's layout, or (an empty store) nothing
    /// applied. The second value is whether it came from the older layout.
    pub(crate) fn read(meta: &sled::Tree) -> Result<(Self, bool), StoreError> {
        if let Some(v) = meta.get(APPLIED)? {
            return Ok((from_json("state machine metadata", &v)?, false));
        }
        let last_seq = read_u64(meta, LAST_SEQ)?.unwrap_or(0);
        let legacy = AppliedMeta {
            last_applied: read_json::<Option<LogId>>(meta, LAST_APPLIED)?.flatten(),
            membership: read_json(meta, MEMBERSHIP)?.unwrap_or_default(),
            last_seq,
            first_seq: read_u64(meta, FIRST_SEQ)?.unwrap_or(1),
            chain_head: read_head(meta, last_seq)?,
        };
        for key in LEGACY {
            if meta.contains_key(key)? {
                return Ok((legacy, true));
            }
        }
        Ok((legacy, false))
    }

    pub(crate) fn write(&self, meta: &sled::Tree) -> Result<(), StoreError> {
        meta.insert(APPLIED, to_json(self)?)?;
        Ok(())
    }

    /// Writes the record, then drops the older layout's keys (which the record overrides, so a
    /// crash between the two loses nothing).
    pub(crate) fn upgrade(&self, meta: &sled::Tree) -> Result<(), StoreError> {
        self.write(meta)?;
        for key in LEGACY {
            meta.remove(key)?;
        }
        Ok(())
    }
}
