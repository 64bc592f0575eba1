//! Page tokens: the one codec every list of every edge (REST in both shapes, gRPC) uses for its
//! continuation tokens, so a token is opaque to clients and only issued ones are accepted.
//!
//! A token belongs to one listing ([`Listing`]): its route (which list, in which order) and
//! everything else that decides which items it holds: the path's ids (whose job's devices),
//! the filter, the query. A token is URL-safe base64 (it fits a URL, an HTTP header and a
//! protobuf string) of the position the page ended at (an id, a seq, a key), then the
//! listing's [`LISTING_BYTES`]-byte digest, then a check: the first [`CHECK_BYTES`] bytes of
//! SHA-256 over both. [`open`] tells three cases apart: a token whose check fails was not
//! issued (altered, made up, a plain id: [`Refused::NotIssued`]); one that checks but names
//! another listing was issued for another route, filter or query ([`Refused::OtherListing`]),
//! and continuing it here would silently skip or repeat items; the rest continue their
//! listing. The page size is not part of a listing: the position is a key, so a page of
//! another size continues right after it.
//!
//! Tokens of the first format (position and a check over the route's name and the position,
//! before listings were bound to their filter) still open for their route, so a client paging
//! across an upgrade is not cut off.
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
/// Bytes of the listing's digest before the check.
const LISTING_BYTES: usize = 8;

/// What a caller is told when a token was not issued (each edge puts its parameter's name
/// first).
pub const NOT_ISSUED: &str = "is not a page token this service issued for this list (it was changed, or comes from another list); send the token from the previous page unchanged, or none to restart the listing from the first page";

/// What a caller is told when a token was issued for another listing.
pub const OTHER_LISTING: &str = "belongs to another listing (it was issued for another route, path, filter or query than this request's); start this listing again without it, from the first page, or send the request that token's listing came from";

/// Why [`open`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a token this service made (altered, made up, a plain id).
    NotIssued,
    /// A token of another listing.
    OtherListing,
}

impl Refused {
    /// What to tell the caller ([`NOT_ISSUED`], [`OTHER_LISTING`]).
    pub fn message(self) -> &'static str {
        match self {
            Refused::NotIssued => NOT_ISSUED,
            Refused::OtherListing => OTHER_LISTING,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// One listing's identity: its route, then each option that decides its items, in the order
/// the edge adds them. Options that only change how items are rendered (details, progress)
/// are left out, as is the page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    route: String,
    /// The options, each length-prefixed so that no two lists of options read the same.
    options: Vec<u8>,
}

impl Listing {
    /// The listing of `route` (e.g. `"muster.v1.JobService/ListJobs"`) with no options yet.
    pub fn new(route: &str) -> Listing {
        Listing {
            route: route.to_string(),
            options: Vec::new(),
        }
    }

    /// Adds option `name` with `value` (an absent option and an empty one are the same).
    pub fn with(mut self, name: &str, value: &str) -> Listing {
        for part in [name, value] {
            self.options
                .extend_from_slice(&(part.len() as u64).to_le_bytes());
            self.options.extend_from_slice(part.as_bytes());
        }
        self
    }

    fn digest(&self) -> [u8; LISTING_BYTES] {
        let mut h = Sha256::new();
        h.update(b"muster page listing\0");
        h.update((self.route.len() as u64).to_le_bytes());
        h.update(self.route.as_bytes());
        h.update(&self.options);
        let digest = h.finalize();
        let mut out = [0u8; LISTING_BYTES];
        out.copy_from_slice(&digest[..LISTING_BYTES]);
        out
    }
}

fn check(listing: &[u8; LISTING_BYTES], position: &[u8]) -> [u8; CHECK_BYTES] {
    let mut h = Sha256::new();
    h.update(b"muster page token v2\0");
    h.update(listing);
    h.update(position);
    let digest = h.finalize();
    let mut out = [0u8; CHECK_BYTES];
    out.copy_from_slice(&digest[..CHECK_BYTES]);
    out
}

/// The check of the first format: the route's name and the position.
fn check_v1(list: &str, position: &[u8]) -> [u8; CHECK_BYTES] {
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

/// The token for the page of `listing` that ended at `position`.
pub fn seal(listing: &Listing, position: &str) -> String {
    let digest = listing.digest();
    let mut bytes = Vec::with_capacity(position.len() + LISTING_BYTES + CHECK_BYTES);
    bytes.extend_from_slice(position.as_bytes());
    bytes.extend_from_slice(&digest);
    bytes.extend_from_slice(&check(&digest, position.as_bytes()));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position in a token [`seal`] made for `listing` (or, in the first format, for its
/// route); otherwise why not (answer with [`Refused::message`]).
pub fn open(listing: &Listing, token: &str) -> Result<String, Refused> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| Refused::NotIssued)?;
    let text =
        |position: &[u8]| String::from_utf8(position.to_vec()).map_err(|_| Refused::NotIssued);
    if let Some(split) = bytes.len().checked_sub(LISTING_BYTES + CHECK_BYTES) {
        let (position, rest) = bytes.split_at(split);
        let (digest, tag) = rest.split_at(LISTING_BYTES);
        let digest: [u8; LISTING_BYTES] = digest.try_into().map_err(|_| Refused::NotIssued)?;
        if tag == check(&digest, position) {
            if digest != listing.digest() {
                return Err(Refused::OtherListing);
            }
            return text(position);
        }
    }
    let split = bytes
        .len()
        .checked_sub(CHECK_BYTES)
        .ok_or(Refused::NotIssued)?;
    let (position, tag) = bytes.split_at(split);
    if tag == check_v1(&listing.route, position) {
        return text(position);
    }
    Err(Refused::NotIssued)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn jobs() -> Listing {
        Listing::new("GET /api/jobs")
    }

    #[test]
    fn a_token_opens_only_for_its_listing() {
        let t = seal(&jobs(), "job-7");
        assert_eq!(open(&jobs(), &t).as_deref(), Ok("job-7"));
        assert_eq!(
            open(&Listing::new("GET /api/devices"), &t),
            Err(Refused::OtherListing)
        );
        // A plain id, what tokens used to be, is not a token.
        assert_eq!(open(&jobs(), "job-7"), Err(Refused::NotIssued));
        assert_eq!(open(&jobs(), ""), Err(Refused::NotIssued));
    }

    #[test]
    fn a_token_of_another_filter_query_or_path_belongs_to_another_listing() {
        let listing = |status: &str, search: &str| {
            Listing::new("GET /api/jobs/{id}/devices")
                .with("path", "/api/jobs/j1/devices")
                .with("status", status)
                .with("search", search)
        };
        let t = seal(&listing("failed", ""), "dev-1");
        assert_eq!(open(&listing("failed", ""), &t).as_deref(), Ok("dev-1"));
        for other in [
            listing("succeeded", ""),
            listing("failed", "x"),
            listing("", "failed"),
        ] {
            assert_eq!(open(&other, &t), Err(Refused::OtherListing), "{other:?}");
        }
        let other_job = Listing::new("GET /api/jobs/{id}/devices")
            .with("path", "/api/jobs/j2/devices")
            .with("status", "failed")
            .with("search", "");
        assert_eq!(open(&other_job, &t), Err(Refused::OtherListing));
        // Options are length-prefixed: moving text from one to the next is another listing.
        let a = Listing::new("q").with("a", "bc").with("d", "");
        let b = Listing::new("q").with("a", "b").with("cd", "");
        assert_eq!(open(&b, &seal(&a, "x")), Err(Refused::OtherListing));
    }

    #[test]
    fn a_token_of_the_first_format_still_opens_for_its_route() {
        let v1 = URL_SAFE_NO_PAD
            .encode([b"job-7".as_slice(), &check_v1("GET /api/jobs", b"job-7")].concat());
        let filtered = jobs().with("filter", "anything");
        assert_eq!(open(&filtered, &v1).as_deref(), Ok("job-7"));
        assert_eq!(
            open(&Listing::new("GET /api/devices"), &v1),
            Err(Refused::NotIssued)
        );
    }

    #[test]
    fn an_empty_position_round_trips() {
        let l = Listing::new("l");
        assert_eq!(open(&l, &seal(&l, "")).as_deref(), Ok(""));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(list in ".{0,20}", filter in ".{0,20}", position in ".{0,80}") {
            let listing = Listing::new(&list).with("filter", &filter);
            let t = seal(&listing, &position);
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(open(&listing, &t), Ok(position));
        }

        /// Changing any one character of a token makes it refused (or, when the change only
        /// touches base64's unused low bits of the last character, the same token).
        #[test]
        fn an_altered_token_is_refused(position in "[a-z0-9-]{1,40}", at in 0usize..100, to in "[A-Za-z0-9_-]") {
            let listing = Listing::new("list");
            let t = seal(&listing, &position);
            let at = at % t.len();
            let mut altered = t.clone();
            altered.replace_range(at..at + 1, &to);
            if let Ok(p) = open(&listing, &altered) {
                prop_assert_eq!(p, position);
            }
        }

        #[test]
        fn any_text_is_refused_or_opened_without_panic(token in ".{0,200}") {
            let _ = open(&Listing::new("list"), &token);
        }
    }
}
