//! Credentials and permissions: who may do what. Pure rules; the edges (REST, gRPC) look up the
//! caller's credential in the replicated state, ask here whether it is valid and what it may do,
//! and never decide that themselves.
//!
//! * [`grants`](Grants): permissions, IoT Hub rights, IoT Central roles and the table between them.
//! * [`credentials`](Auth): policies and API tokens as the state holds them.
//! * [`sas`](authenticate): verifying an `Authorization` value; signing one.
//! * [`device`](authenticate_device): a device's MQTT login with its SAS token.
//! * [`topics`](device_may_publish): the topics a device may use; whether its session stands.
//! * `rules`: `decide`/`evolve` for the credentials commands.

mod credentials;
mod device;
mod grants;
mod principal;
pub(crate) mod rules;
mod sas;
mod topics;

pub use credentials::{
    check_credential_name, default_policies, AccessPolicy, ApiToken, Auth, Secret, REDACTED,
};
pub use device::{
    authenticate_device, device_user, parse_device_user, sign_device, DeviceAuthFailure,
};
pub use grants::{rights_grants, Grants, Permission, Right, Role};
pub use principal::{Principal, PrincipalError};
pub use sas::{
    api_token_string, authenticate, hash_secret, pct_decode, pct_encode, sign, AuthFailure,
    Authenticated, ConnectionString, MAX_TOKEN_BYTES,
};
pub use topics::{
    device_may_publish, device_may_subscribe, device_session_holds, DEVICE_RECEIVES, DEVICE_SENDS,
};
