//! What a credential may do: IoT Hub's policy rights, IoT Central's roles, and the one table
//! that maps both onto muster's permissions. Every edge asks [`Grants::allows`]; none decides
//! by itself.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One thing a caller may be allowed to do. Each REST route and gRPC method needs exactly one
/// (the table is in ARCHITECTURE.md and in `muster_api::access`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Jobs, their devices, statistics.
    JobsRead,
    /// Create, stop, resume, cancel, rerun jobs.
    JobsWrite,
    /// Devices, twins, groups, device queries.
    DevicesRead,
    /// Register, import and update devices.
    DevicesWrite,
    /// Service-side twin updates (tags, desired properties).
    TwinsWrite,
    /// Save and delete device groups.
    GroupsWrite,
    /// The event history (per job, the live stream).
    EventsRead,
    /// Members, leader, lag.
    ClusterRead,
    /// Add, promote and remove members.
    ClusterManage,
    /// Shared access policies and API tokens.
    AuthManage,
    /// Invoke a direct method on one device (IoT Hub's ServiceConnect; IoT Central's operators).
    MethodsInvoke,
    /// Anything an authenticated caller may use whatever its role (gRPC reflection).
    Authenticated,
}

impl Permission {
    pub const ALL: [Permission; 12] = [
        Permission::JobsRead,
        Permission::JobsWrite,
        Permission::DevicesRead,
        Permission::DevicesWrite,
        Permission::TwinsWrite,
        Permission::GroupsWrite,
        Permission::EventsRead,
        Permission::ClusterRead,
        Permission::ClusterManage,
        Permission::AuthManage,
        Permission::MethodsInvoke,
        Permission::Authenticated,
    ];

    /// The name a 403 answer and the permission table use.
    pub fn name(self) -> &'static str {
        match self {
            Permission::JobsRead => "jobs.read",
            Permission::JobsWrite => "jobs.write",
            Permission::DevicesRead => "devices.read",
            Permission::DevicesWrite => "devices.write",
            Permission::TwinsWrite => "twins.write",
            Permission::GroupsWrite => "groups.write",
            Permission::EventsRead => "events.read",
            Permission::ClusterRead => "cluster.read",
            Permission::ClusterManage => "cluster.manage",
            Permission::AuthManage => "auth.manage",
            Permission::MethodsInvoke => "methods.invoke",
            Permission::Authenticated => "authenticated",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Grants(u16);

impl Grants {
    pub const NONE: Grants = Grants(0);

    pub fn of(perms: &[Permission]) -> Grants {
        perms.iter().fold(Grants::NONE, |g, p| g.with(*p))
    }

    pub fn all() -> Grants {
        Grants::of(&Permission::ALL)
    }

    #[must_use]
    pub fn with(self, p: Permission) -> Grants {
        Grants(self.0 | p.bit())
    }

    #[must_use]
    pub fn union(self, other: Grants) -> Grants {
        Grants(self.0 | other.0)
    }

    /// Every authenticated caller holds [`Permission::Authenticated`].
    pub fn allows(self, p: Permission) -> bool {
        p == Permission::Authenticated || self.0 & p.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.allows(*p))
    }
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Permission::name))
            .finish()
    }
}

/// IoT Hub's shared access rights, as a policy holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Right {
    RegistryRead,
    RegistryWrite,
    ServiceConnect,
    DeviceConnect,
}

impl Right {
    pub const ALL: [Right; 4] = [
        Right::RegistryRead,
        Right::RegistryWrite,
        Right::ServiceConnect,
        Right::DeviceConnect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Right::RegistryRead => "RegistryRead",
            Right::RegistryWrite => "RegistryWrite",
            Right::ServiceConnect => "ServiceConnect",
            Right::DeviceConnect => "DeviceConnect",
        }
    }

    /// Reads IoT Hub's spelling (`RegistryRead`), case-insensitively.
    pub fn parse(s: &str) -> Option<Right> {
        Right::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s.trim()))
    }

    fn grants(self) -> Grants {
        use Permission::*;
        match self {
            Right::RegistryRead => Grants::of(&[DevicesRead, ClusterRead]),
            // IoT Hub's RegistryWrite includes reading the registry.
            Right::RegistryWrite => {
                Grants::of(&[DevicesRead, DevicesWrite, GroupsWrite, ClusterRead])
            }
            // The back-end service side: jobs, twins, direct methods, and their history.
            Right::ServiceConnect => Grants::of(&[
                JobsRead,
                JobsWrite,
                DevicesRead,
                TwinsWrite,
                EventsRead,
                ClusterRead,
                MethodsInvoke,
            ]),
            // Device-facing only: nothing on the service API.
            Right::DeviceConnect => Grants::NONE,
        }
    }
}

/// The permissions of a policy with these rights.
///
/// Managing credentials and cluster membership has no IoT Hub right of its own (Azure does it
/// through its control plane with the owner's key), so it is granted to a policy holding every
/// right, as `iothubowner` does.
pub fn rights_grants(rights: &[Right]) -> Grants {
    let g = rights.iter().fold(Grants::NONE, |g, r| g.union(r.grants()));
    if Right::ALL.iter().all(|r| rights.contains(r)) {
        g.union(Grants::all())
    } else {
        g
    }
}

/// A role an API token grants: IoT Central's three built-in roles, plus muster's read-only
/// ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    Administrator,
    Builder,
    Operator,
    /// Reads everything except credentials; changes nothing.
    Viewer,
    /// Reads the event history only.
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Administrator,
        Role::Builder,
        Role::Operator,
        Role::Viewer,
        Role::Auditor,
    ];

    /// The role id IoT Central's API uses (its built-in roles' fixed GUIDs), or muster's own
    /// for the roles IoT Central does not have.
    pub fn id(self) -> &'static str {
        match self {
            Role::Administrator => "ca310b8d-2f4a-44e0-a36e-957c202cd8d4",
            Role::Builder => "344138e9-8de4-4497-8c54-5237e96d6aaf",
            Role::Operator => "ae2c9854-393b-4f97-8c42-479d70ce626e",
            Role::Viewer => "muster-viewer",
            Role::Auditor => "muster-auditor",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::Builder => "builder",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// Reads a role id or a role name (case-insensitive).
    pub fn parse(s: &str) -> Option<Role> {
        let s = s.trim();
        Role::ALL
            .into_iter()
            .find(|r| r.id().eq_ignore_ascii_case(s) || r.name().eq_ignore_ascii_case(s))
    }

    pub fn grants(self) -> Grants {
        use Permission::*;
        match self {
            Role::Administrator => Grants::all(),
            Role::Builder => Grants::of(&[
                JobsRead,
                JobsWrite,
                DevicesRead,
                DevicesWrite,
                TwinsWrite,
                GroupsWrite,
                EventsRead,
                ClusterRead,
                MethodsInvoke,
            ]),
            Role::Operator => Grants::of(&[
                JobsRead,
                JobsWrite,
                DevicesRead,
                TwinsWrite,
                EventsRead,
                ClusterRead,
                MethodsInvoke,
            ]),
            Role::Viewer => Grants::of(&[JobsRead, DevicesRead, EventsRead, ClusterRead]),
            Role::Auditor => Grants::of(&[EventsRead]),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Permission::*;

    #[test]
    fn the_role_matrix_holds() {
        assert!(!Role::Viewer.grants().allows(JobsWrite));
        assert!(!Role::Viewer.grants().allows(MethodsInvoke));
        assert!(Role::Operator.grants().allows(MethodsInvoke));
        assert!(rights_grants(&[Right::ServiceConnect]).allows(MethodsInvoke));
        assert!(!rights_grants(&[Right::RegistryWrite]).allows(MethodsInvoke));
        assert!(Role::Operator.grants().allows(JobsWrite));
        assert!(!Role::Operator.grants().allows(AuthManage));
        assert!(!Role::Builder.grants().allows(ClusterManage));
        let auditor: Vec<_> = Role::Auditor.grants().iter().collect();
        assert_eq!(auditor, vec![EventsRead, Authenticated]);
        assert!(Role::Administrator.grants().allows(AuthManage));
        for r in Role::ALL {
            assert_eq!(Role::parse(r.id()), Some(r));
            assert_eq!(Role::parse(&r.name().to_uppercase()), Some(r));
        }
    }

    #[test]
    fn only_every_right_together_manages_credentials() {
        let owner = rights_grants(&Right::ALL);
        assert!(owner.allows(AuthManage) && owner.allows(ClusterManage));
        let service = rights_grants(&[Right::ServiceConnect]);
        assert!(service.allows(JobsWrite) && !service.allows(DevicesWrite));
        assert!(!service.allows(AuthManage));
        let rw = rights_grants(&[Right::RegistryRead, Right::RegistryWrite]);
        assert!(rw.allows(DevicesWrite) && !rw.allows(JobsRead));
        assert_eq!(rights_grants(&[Right::DeviceConnect]).iter().count(), 1);
    }
}
