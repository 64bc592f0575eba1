//! The hash chain over the event log, which makes a changed, removed or reordered event evident.
//!
//! Every stored event record carries `hash = BLAKE3(previous hash || seq as big-endian u64 ||
//! [principal length as big-endian u32 || principal] || event bytes)`, where the event bytes are
//! exactly the protobuf the record holds, the bracketed part is present only when the record
//! has a principal (its text form; `system` is stored as none, so records of the leader's own
//! commands and every record written before principals existed hash as they always did), and
//! the previous hash of seq 1 is [`GENESIS`] (32 zero bytes). The two forms cannot collide: an
//! encoded event never starts with a zero byte (protobuf has no field 0), while the length of
//! any principal under 16 MiB does. The hash of the newest applied event
//! (the chain head) is kept in `sm_meta` next to `last_seq`, and every snapshot carries the head
//! at its `last_seq`, so a replica installed from a snapshot continues the same chain. Replicas
//! apply the same events with the same seqs, so they compute the same chain.
//!
//! The chain is computed once, when an event is applied. Readers that hand links out take the
//! stored ones ([`crate::EventLog::read_records`], [`crate::AppliedEvents::hashes`]) instead of
//! recomputing them, which would need every event from seq 1: too slow for a reader starting
//! late in a long log, and impossible on a replica seeded from a snapshot. Only verification
//! (`Store::open` for the tail after the snapshot, [`crate::audit`] for all of it) recomputes.

/// A link of the chain.
pub type Hash = [u8; 32];

/// The "previous hash" of the first event.
pub const GENESIS: Hash = [0; 32];

/// The hash of event `seq` whose encoded bytes are `event`, written on behalf of `principal`
/// (the stored text; empty for `system`), after the event hashed to `prev`.
pub fn chain_hash(prev: &Hash, seq: u64, principal: &str, event: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(&seq.to_be_bytes());
    if !principal.is_empty() {
        // A principal is a name from a request; one over 4 GiB never reaches the log (request
        // bodies and headers are limited far below that), and saturating keeps this total.
        let len = u32::try_from(principal.len()).unwrap_or(u32::MAX);
        hasher.update(&len.to_be_bytes());
        hasher.update(principal.as_bytes());
    }
    hasher.update(event);
    *hasher.finalize().as_bytes()
}

/// Lower-case hex of a hash, for messages and exports.
pub fn to_hex(hash: &[u8]) -> String {
    use std::fmt::Write;
    hash.iter()
        .fold(String::with_capacity(hash.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_input_counts() {
        let h = chain_hash(&GENESIS, 1, "", b"event");
        assert_ne!(h, chain_hash(&GENESIS, 2, "", b"event"));
        assert_ne!(h, chain_hash(&GENESIS, 1, "", b"evenu"));
        assert_ne!(h, chain_hash(&h, 1, "", b"event"));
        assert_ne!(h, chain_hash(&GENESIS, 1, "anonymous", b"event"));
        assert_ne!(
            chain_hash(&GENESIS, 1, "token:a", b"event"),
            chain_hash(&GENESIS, 1, "token:b", b"event")
        );
        assert_eq!(h, chain_hash(&GENESIS, 1, "", b"event"));
        assert_eq!(to_hex(&[0, 171]), "00ab");
    }

    /// Records without a principal hash exactly as before the principal existed: the hash of
    /// a fixed input, computed by the chain as it was.
    #[test]
    fn records_without_a_principal_keep_their_hash() {
        let mut old = blake3::Hasher::new();
        old.update(&GENESIS);
        old.update(&7u64.to_be_bytes());
        old.update(b"\x0a\x02ab");
        assert_eq!(
            chain_hash(&GENESIS, 7, "", b"\x0a\x02ab"),
            *old.finalize().as_bytes()
        );
    }
}
