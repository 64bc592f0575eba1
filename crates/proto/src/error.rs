//! The one error of decoding: which field was bad, and why.

use muster_types::IdError;

/// Why bytes could not be turned back into a domain value.
///
/// Every variant but [`ProtoError::Decode`] names the field by its path in the protobuf message
/// (for example `Event.device_failed.reason.kind`), so a bad log entry can be found in the schema
/// at once.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The bytes are not a protobuf encoding of the expected message (truncated, wrong wire type,
    /// or not protobuf at all).
    #[error("not a valid protobuf encoding: {0}")]
    Decode(#[from] prost::DecodeError),

    /// A field the domain requires is absent: a oneof without a case, or a message field that is
    /// always written.
    #[error("{field} is missing")]
    Missing { field: String },

    /// An identifier that the id's constructor refuses.
    #[error("{field} is not a valid id: {error}")]
    InvalidId { field: String, error: IdError },

    /// A `_json` field whose text does not parse as JSON.
    #[error("{field} is not valid JSON text: {error}")]
    InvalidJson {
        field: String,
        error: serde_json::Error,
    },

    /// An enum field holding 0 (`..._UNSPECIFIED`, never written) or a value this build does not
    /// know.
    #[error("{field} has the unknown or unspecified enum value {value}")]
    UnknownEnum { field: String, value: i32 },

    /// A name from a fixed list (a policy right, a role) that this build does not know.
    #[error("{field} holds the unknown name {name:?}")]
    UnknownName { field: String, name: String },
}

impl ProtoError {
    /// The path of the field that was bad, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ProtoError::Decode(_) => None,
            ProtoError::Missing { field }
            | ProtoError::InvalidId { field, .. }
            | ProtoError::InvalidJson { field, .. }
            | ProtoError::UnknownEnum { field, .. }
            | ProtoError::UnknownName { field, .. } => Some(field),
        }
    }

    /// Puts the path of the enclosing field in front of this error's field path. Conversions of
    /// nested messages report paths relative to themselves; each level adds its own name on the
    /// way out, so the final message shows the full path from the top-level message.
    pub(crate) fn within(mut self, prefix: &str) -> Self {
        match &mut self {
            ProtoError::Decode(_) => {}
            ProtoError::Missing { field }
            | ProtoError::InvalidId { field, .. }
            | ProtoError::InvalidJson { field, .. }
            | ProtoError::UnknownEnum { field, .. }
            | ProtoError::UnknownName { field, .. } => *field = format!("{prefix}.{field}"),
        }
        self
    }
}
