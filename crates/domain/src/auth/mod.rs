//! Credentials and permissions: who may do what. Pure rules; the edges (REST, gRPC) look up the
//! caller's credential in the replicated state, ask here whether it is valid and what it may do,
//! and never decide that themselves.

mod principal;

pub use principal::{Principal, PrincipalError};
