//! Page tokens: the one codec every list of every edge (REST in both shapes, gRPC) uses for its
//! continuation tokens, so a token is opaque to clients and only issued ones are accepted.
//!
//! A token is URL-safe base64 (it fits a URL, an HTTP header and a protobuf string) of the
//! position the page ended at (an id, a seq, a key) followed by a check: the first
//! [`CHECK_BYTES`] bytes of SHA-256 over the list's name and the position. [`open`] accepts a
//! token only with a matching check for the same list, so an altered token, a token of another
//! list, or a plain id is refused instead of silently starting the listing somewhere.
//!
//! Why a check and not a keyed MAC: a token grants nothing (it only says where a listing the
//! caller may read anyway continues), so there is no secret to protect; what matters is that
//! a token the service did not issue is an error that says what to do, on whichever node the
//! next page is asked from. A key would have to be shared by every node and kept in the
//! replicated state; a check needs neither.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

/// Bytes of the check at the end of a token.
const CHECK_BYTES: usize = 12;

/// What a caller is told when a token is refused (each edge puts its parameter's name first).
pub const NOT_ISSUED: &str = "is not a page token this service issued for this list (it was changed, or comes from another list); send the token from the previous page unchanged, or none to restart the listing from the first page";

fn check(list: &str, position: &[u8]) -> [u8; CHECK_BYTES] {
    let mut h = Sha256::new();
    h.update(b"muster page token v1\0");
    h.update(list.as_bytes());
    h.update(b"\0");
    h.update(position);
    let digest = h.finalize();
    let mut out = [0u8; CHECK_BYTES];
    out.copy_from_slice(&digest[..CHECK_BYTES]);
    out
}

/// The token for the page of `list` that ended at `position`.
pub fn seal(list: &str, position: &str) -> String {
    let mut bytes = Vec::with_capacity(position.len() + CHECK_BYTES);
    bytes.extend_from_slice(position.as_bytes());
    bytes.extend_from_slice(&check(list, position.as_bytes()));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position in a token [`seal`] made for `list`; `None` for anything else (answer with
/// [`NOT_ISSUED`]).
pub fn open(list: &str, token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
    let split = bytes.len().checked_sub(CHECK_BYTES)?;
    let (position, tag) = bytes.split_at(split);
    if tag != check(list, position) {
        return None;
    }
    String::from_utf8(position.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_token_opens_only_for_its_list() {
        let t = seal("GET /api/jobs", "job-7");
        assert_eq!(open("GET /api/jobs", &t).as_deref(), Some("job-7"));
        assert_eq!(open("GET /api/devices", &t), None);
        // A plain id, what tokens used to be, is not a token.
        assert_eq!(open("GET /api/jobs", "job-7"), None);
        assert_eq!(open("GET /api/jobs", ""), None);
    }

    #[test]
    fn an_empty_position_round_trips() {
        assert_eq!(open("l", &seal("l", "")).as_deref(), Some(""));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(list in ".{0,20}", position in ".{0,80}") {
            let t = seal(&list, &position);
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(open(&list, &t), Some(position));
        }

        /// Changing any one character of a token makes it refused (or, when the change only
        /// touches base64's unused low bits of the last character, the same token).
        #[test]
        fn an_altered_token_is_refused(position in "[a-z0-9-]{1,40}", at in 0usize..100, to in "[A-Za-z0-9_-]") {
            let t = seal("list", &position);
            let at = at % t.len();
            let mut altered = t.clone();
            altered.replace_range(at..at + 1, &to);
            if let Some(p) = open("list", &altered) {
                prop_assert_eq!(p, position);
            }
        }

        #[test]
        fn any_text_is_refused_or_opened_without_panic(token in ".{0,200}") {
            let _ = open("list", &token);
        }
    }
}
