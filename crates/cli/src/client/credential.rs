//! The caller's credential on every client call: `--token` / `MUSTER_TOKEN` holds either a token
//! (`SharedAccessSignature sr=...`, sent as it is) or a connection string
//! (`HostName=...;SharedAccessKeyName=...;SharedAccessKey=...`, from which a token valid for an
//! hour is signed); `@FILE` reads either from a file, such as a node's `admin.credential`.

use anyhow::{anyhow, Context};
use muster_api::access::Bearer;
use muster_domain::auth::ConnectionString;
use tonic::metadata::MetadataValue;

/// A channel whose calls carry the credential.
pub type Conn = muster_api::access::AuthChannel;

/// The `authorization` metadata every call carries (none when no credential was given).
pub type Credential = Bearer;

/// How long a token signed from a connection string lives.
const SIGNED_TTL_SECS: i64 = 3600;

/// Reads `--token`'s value; `None` means no credential.
pub fn from_arg(arg: Option<&str>) -> anyhow::Result<Credential> {
    let Some(arg) = arg.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Bearer(None));
    };
    let header = header_value(token_text(arg)?.trim(), SIGNED_TTL_SECS)?;
    let value = MetadataValue::try_from(header.as_str())
        .map_err(|_| anyhow!("--token: holds characters a header cannot carry"))?;
    Ok(Bearer(Some(value)))
}

/// `--token`'s text: the value itself, or the contents of the file `@PATH` names.
pub fn token_text(arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("--token: cannot read {path}"))
        }
        None => Ok(arg.to_string()),
    }
}

/// The `Authorization` value for a token or a connection string (signed for `ttl_secs`).
pub fn header_value(text: &str, ttl_secs: i64) -> anyhow::Result<String> {
    if text.starts_with("SharedAccessSignature ") {
        return Ok(text.to_string());
    }
    if text.contains("HostName=") {
        let c = ConnectionString::parse(text).map_err(|e| anyhow!("--token: {e}"))?;
        let expiry = unix_secs() + ttl_secs;
        return c
            .token(expiry)
            .ok_or_else(|| anyhow!("--token: SharedAccessKey is not base64"));
    }
    Err(anyhow!(
        "--token: give a token (SharedAccessSignature sr=...), a connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...) or @FILE holding one"
    ))
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
