//! The hash chain over the event log, which makes a changed, removed or reordered event evident.
//!
//! Every stored event record carries `hash = BLAKE3(previous hash || seq as big-endian u64 ||
//! event bytes)`, where the event bytes are exactly the protobuf the record holds and the
//! previous hash of seq 1 is [`GENESIS`] (32 zero bytes). The hash of the newest applied event
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

/// The hash of event `seq` whose encoded bytes are `event`, after the event hashed to `prev`.
pub fn chain_hash(prev: &Hash, seq: u64, event: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(&seq.to_be_bytes());
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
        let h = chain_hash(&GENESIS, 1, b"event");
        assert_ne!(h, chain_hash(&GENESIS, 2, b"event"));
        assert_ne!(h, chain_hash(&GENESIS, 1, b"evenu"));
        assert_ne!(h, chain_hash(&h, 1, b"event"));
        assert_eq!(h, chain_hash(&GENESIS, 1, b"event"));
        assert_eq!(to_hex(&[0, 171]), "00ab");
    }
}
