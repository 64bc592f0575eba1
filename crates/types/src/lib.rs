//! Identifiers and time, validated once at the edge so that the rest of muster can trust them.
//!
//! Every identifier that crosses an API is a newtype whose only constructor checks the rules users
//! know from IoT Hub and IoT Central. A value of one of these types is therefore always valid: code
//! deeper in the system never re-checks, and a bad id is reported with the field it came from.

mod time;

pub use time::{Timestamp, TimestampError};

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused; the message says what the caller must change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} characters long; at most {max} are allowed")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} must not be `{value}`: `.` and `..` are path segments, and a URL with one does not reach the resource (choose another id)")]
    DotSegment {
        kind: &'static str,
        value: &'static str,
    },
    #[error("{kind} contains {found:?} at position {position}; allowed are {allowed}")]
    BadChar {
        kind: &'static str,
        found: char,
        position: usize,
        allowed: &'static str,
    },
}

/// Characters the IoT Hub seed forbids in job ids and property names (besides space and tab).
const JOB_ID_FORBIDDEN: &str = "$()<>@,;:\\\"/[]?={}";
const JOB_ID_ALLOWED: &str =
    "printable US-ASCII except space, tab and any of $ ( ) < > @ , ; : \\ \" / [ ] ? = { }";
const DEVICE_ID_EXTRA: &str = "-.%_*?!(),:=@$'";
const DEVICE_ID_ALLOWED: &str = "letters, digits and any of - . % _ * ? ! ( ) , : = @ $ '";

const INVOCATION_ID_ALLOWED: &str = "letters, digits and -";

const fn is_invocation_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-'
}

const fn is_job_char(c: char) -> bool {
    c.is_ascii_graphic() && !contains(JOB_ID_FORBIDDEN, c)
}

const fn is_device_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || contains(DEVICE_ID_EXTRA, c)
}

/// `list.contains(c)` for an ASCII list, usable in a `const` table.
const fn contains(list: &str, c: char) -> bool {
    let bytes = list.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] as char == c {
            return true;
        }
        i += 1;
    }
    false
}

/// Which ASCII bytes `JOB`/`DEVICE` ids accept, as tables: ids are checked on every decode of
/// the event log (replay reads a million a second), and looking a byte up is several times
/// cheaper than searching the list of allowed punctuation for each character.
const fn ascii_table(device: bool) -> [bool; 128] {
    let mut table = [false; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8 as char;
        table[b] = if device {
            is_device_char(c)
        } else {
            is_job_char(c)
        };
        b += 1;
    }
    table
}

const fn invocation_table() -> [bool; 128] {
    let mut table = [false; 128];
    let mut b = 0;
    while b < 128 {
        table[b] = is_invocation_char(b as u8 as char);
        b += 1;
    }
    table
}

const JOB_CHARS: [bool; 128] = ascii_table(false);
const DEVICE_CHARS: [bool; 128] = ascii_table(true);
const INVOCATION_CHARS: [bool; 128] = invocation_table();

fn check(
    kind: &'static str,
    s: &str,
    max: usize,
    (ok, table): (fn(char) -> bool, &[bool; 128]),
    allowed: &'static str,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    // Clients put ids into URL paths, where these two are resolved away (issue 18).
    if let Some(value) = [".", ".."].into_iter().find(|d| *d == s) {
        return Err(IdError::DotSegment { kind, value });
    }
    // Fast path: every allowed character is ASCII, so a valid id is ASCII and its length in
    // bytes is its length in characters. Anything else takes the slow path, which finds and
    // names the first offending character.
    if s.len() <= max && s.bytes().all(|b| b < 128 && table[usize::from(b)]) {
        return Ok(());
    }
    let len = s.chars().count();
    if len > max {
        return Err(IdError::TooLong { kind, len, max });
    }
    if let Some((position, found)) = s.chars().enumerate().find(|(_, c)| !ok(*c)) {
        return Err(IdError::BadChar {
            kind,
            found,
            position,
            allowed,
        });
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $ok:expr, $allowed:expr) => {
        $(#[$doc])*
        ///
        /// The text is shared, not copied, between clones: a running job's rows, its index and
        /// the registry all hold the same allocation of a device's id (issue 14: a row must stay
        /// small), so a clone costs a reference count.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest value accepted, in characters.
            pub const MAX_LEN: usize = $max;

            /// Checks the rules and wraps the value; the only way to obtain one.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max, $ok, $allowed)?;
                Ok(Self(Arc::from(value)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The text's allocation, for a value that should share it (a display name that
            /// is the id).
            pub fn shared_text(&self) -> Arc<str> {
                self.0.clone()
            }

            /// Whether the two share one allocation (interning checks it).
            pub fn same_text(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                String::from(&*id.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A job's id, chosen by the caller (IoT Central and IoT Hub both let the client name jobs).
    /// 1 to 64 printable US-ASCII characters without the separators the IoT Hub seed forbids, so it
    /// can be embedded in URLs and MQTT request ids without escaping.
    JobId, "job id", 64, (is_job_char, &JOB_CHARS), JOB_ID_ALLOWED
);

string_id!(
    /// A device's id, with IoT Hub's alphabet: devices keep the ids they already have there.
    DeviceId, "device id", 128, (is_device_char, &DEVICE_CHARS), DEVICE_ID_ALLOWED
);

string_id!(
    /// A device group's id. Same alphabet as job ids (it appears in URLs), but up to 128 characters
    /// because IoT Central group ids are often GUIDs with a prefix.
    GroupId, "group id", 128, (is_job_char, &JOB_CHARS), JOB_ID_ALLOWED
);

string_id!(
    /// A scheduled (recurring) job's id, IoT Central's `scheduledJobId`. Job ids alphabet, but at
    /// most 48 characters: each occurrence's job is named `{id}-{n}` and must fit a job id.
    ScheduledJobId, "scheduled job id", 48, (is_job_char, &JOB_CHARS), JOB_ID_ALLOWED
);

string_id!(
    /// The caller's name for a rerun (IoT Central's `PUT /api/jobs/{id}/rerun/{rerunId}`).
    RerunId, "rerun id", 64, (is_job_char, &JOB_CHARS), JOB_ID_ALLOWED
);

string_id!(
    /// One direct-method invocation, drawn at random by the edge that received the call. It is
    /// also the MQTT request id (`$rid`) of the call: it has no `:`, so it never collides with a
    /// job attempt's `{job}:{run}:{attempt}`, and no character an MQTT topic forbids.
    InvocationId, "invocation id", 64, (is_invocation_char, &INVOCATION_CHARS), INVOCATION_ID_ALLOWED
);

/// A Raft node's id; numeric because openraft orders and compares them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which run of a job: 0 is the original, each rerun takes the next number. A number, not the
/// caller's rerun id, because it orders runs and goes into every request id on the wire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct RunId(pub u32);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Issue 18: `.` and `..` were valid ids, unreachable through any URL.
    #[test]
    fn dot_segments_are_not_ids() {
        for bad in [".", ".."] {
            let e = DeviceId::new(bad).unwrap_err();
            assert!(matches!(e, IdError::DotSegment { .. }), "{e}");
            assert!(e.to_string().contains("path segment"), "{e}");
            assert!(JobId::new(bad).is_err());
            assert!(GroupId::new(bad).is_err());
            assert!(serde_json::from_str::<DeviceId>(&format!("\"{bad}\"")).is_err());
        }
        for good in ["...", ".a", "a.", "a..b"] {
            assert!(DeviceId::new(good).is_ok(), "{good}");
            assert!(JobId::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn job_id_rules_follow_the_iot_hub_seed() {
        assert!(JobId::new("job-1_a.b").is_ok());
        assert!(JobId::new("a".repeat(64)).is_ok());
        assert_eq!(
            JobId::new("a".repeat(65)),
            Err(IdError::TooLong {
                kind: "job id",
                len: 65,
                max: 64
            })
        );
        assert_eq!(JobId::new(""), Err(IdError::Empty { kind: "job id" }));
        for bad in [
            "a b", "a\tb", "a$b", "a(b", "a)b", "a<b", "a>b", "a@b", "a,b", "a;b", "a:b", "a\\b",
            "a\"b", "a/b", "a[b", "a]b", "a?b", "a=b", "a{b", "a}b", "é",
        ] {
            let err = JobId::new(bad).unwrap_err();
            assert!(matches!(err, IdError::BadChar { .. }), "{bad:?} accepted");
        }
    }

    #[test]
    fn device_id_rules_follow_iot_hub() {
        assert!(DeviceId::new("dev-01.a%b_c*d?e!f(g)h,i:j=k@l$m'n").is_ok());
        assert!(DeviceId::new("d".repeat(128)).is_ok());
        assert!(DeviceId::new("d".repeat(129)).is_err());
        for bad in ["a b", "a/b", "a#b", "a+b", "a&b", "ü", "a\"b"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_message_names_the_offending_character() {
        let msg = JobId::new("abc/def").unwrap_err().to_string();
        assert!(msg.contains("'/'"), "{msg}");
        assert!(msg.contains("position 3"), "{msg}");
    }

    #[test]
    fn serde_validates_on_the_way_in() {
        let ok: DeviceId = serde_json::from_str("\"dev1\"").unwrap();
        assert_eq!(ok.as_str(), "dev1");
        assert!(serde_json::from_str::<DeviceId>("\"a b\"").is_err());
    }

    /// The rules as written, one character at a time: the table fast path must agree with it.
    /// `.` and `..` are refused whatever their characters (see `dot_segments_are_not_ids`).
    fn by_the_rules(s: &str, max: usize, ok: fn(char) -> bool) -> bool {
        !s.is_empty() && s != "." && s != ".." && s.chars().count() <= max && s.chars().all(ok)
    }

    proptest! {
        #[test]
        fn table_check_agrees_with_the_rules(s in "[ -~]{0,130}|\\PC{0,70}") {
            prop_assert_eq!(JobId::new(s.as_str()).is_ok(), by_the_rules(&s, 64, is_job_char));
            prop_assert_eq!(GroupId::new(s.as_str()).is_ok(), by_the_rules(&s, 128, is_job_char));
            prop_assert_eq!(
                DeviceId::new(s.as_str()).is_ok(),
                by_the_rules(&s, 128, is_device_char)
            );
        }

        #[test]
        fn any_accepted_job_id_is_url_and_rid_safe(s in "\\PC{0,80}") {
            if let Ok(id) = JobId::new(s) {
                prop_assert!(id.as_str().len() <= 64);
                prop_assert!(!id.as_str().contains([':', '/', '?', '=', ' ']));
            }
        }
    }
}
