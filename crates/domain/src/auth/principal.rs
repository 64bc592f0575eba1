//! Who asked for a command: recorded with every event so the audit log answers "who did it".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The caller a command is written on behalf of.
///
/// The text form (`Display`/`FromStr`) is what the log stores and every reader shows:
/// `system`, `policy:NAME`, `token:ID`, `cert:SUBJECT`, `anonymous`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Principal {
    /// Work the leader derives from state by itself (dispatch, timeouts, presence, bootstrap).
    #[default]
    System,
    /// A caller holding an IoT Hub shared access policy's key.
    Policy(String),
    /// A caller holding an IoT Central API token.
    Token(String),
    /// A caller identified by a client certificate (its subject).
    Certificate(String),
    /// A caller on a node running with `--insecure` (authentication off).
    Anonymous,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::System => f.write_str("system"),
            Principal::Policy(n) => write!(f, "policy:{n}"),
            Principal::Token(n) => write!(f, "token:{n}"),
            Principal::Certificate(n) => write!(f, "cert:{n}"),
            Principal::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// A text that is not one of the forms [`Principal`] prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a principal (system, anonymous, policy:NAME, token:ID or cert:SUBJECT)")]
pub struct PrincipalError(pub String);

impl FromStr for Principal {
    type Err = PrincipalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "system" => return Ok(Principal::System),
            "anonymous" => return Ok(Principal::Anonymous),
            _ => {}
        }
        let (kind, name) = s.split_once(':').ok_or_else(|| PrincipalError(s.into()))?;
        if name.is_empty() {
            return Err(PrincipalError(s.into()));
        }
        let name = name.to_string();
        match kind {
            "policy" => Ok(Principal::Policy(name)),
            "token" => Ok(Principal::Token(name)),
            "cert" => Ok(Principal::Certificate(name)),
            _ => Err(PrincipalError(s.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for p in [
            Principal::System,
            Principal::Anonymous,
            Principal::Policy("iothubowner".into()),
            Principal::Token("ops-1".into()),
            Principal::Certificate("CN=ops:x".into()),
        ] {
            assert_eq!(p.to_string().parse::<Principal>(), Ok(p));
        }
        for bad in ["", "policy:", "user:x", "root"] {
            assert!(bad.parse::<Principal>().is_err(), "{bad}");
        }
    }
}
