//! Who may do what: the rights table of the brief (seed 000, Tab. 1),
//! enforced server-side by every handler through [`allowed`].

/// The three roles (in ferry-api: clients read them too).
pub use ferry_api::Role;

/// Whether a session concerns the acting user: it was released to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership {
    Own,
    Others,
}

/// An action of the rights table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add gateways (devices) and issue their enrolment tokens.
    AddGateway,
    /// Add users and assign rights.
    ManageUsers,
    /// Create sessions and select their gateway.
    CreateSession,
    /// Add devices (targets) to sessions.
    AddDevicesToSession,
    /// Start and use a prepared session.
    StartSession(Ownership),
    /// End a session.
    EndSession(Ownership),
    /// See active and past sessions.
    ViewSession(Ownership),
    // Beyond the brief's table, following its spirit: whoever prepares
    // sessions must see the gateways to select them; relays are
    // infrastructure like gateways; the audit log is for those who manage.
    /// See gateways, their targets and state.
    ViewGateways,
    /// Register relays and see their health.
    ManageRelays,
    /// Read, verify and export the audit log.
    ReadAudit,
}

impl Action {
    pub const fn label(self) -> &'static str {
        match self {
            Action::AddGateway => "add gateways",
            Action::ManageUsers => "add users or assign rights",
            Action::CreateSession => "create sessions",
            Action::AddDevicesToSession => "add devices to sessions",
            Action::StartSession(Ownership::Own) => "start or use sessions released to them",
            Action::StartSession(Ownership::Others) => "start or use sessions not released to them",
            Action::EndSession(Ownership::Own) => "end their own sessions",
            Action::EndSession(Ownership::Others) => "end sessions that are not theirs",
            Action::ViewSession(Ownership::Own) => "see their own sessions",
            Action::ViewSession(Ownership::Others) => "see sessions that are not theirs",
            Action::ViewGateways => "see gateways",
            Action::ManageRelays => "manage relays",
            Action::ReadAudit => "read the audit log",
        }
    }
}

/// The rights table. A remoteConnect User acts only on sessions released to
/// them; everything about gateways and users is the Administrator's.
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Ownership::*;
    use Role::*;
    match (role, action) {
        (Administrator, _) => true,
        (RemoteConnectAdministrator, AddGateway | ManageUsers | ManageRelays) => false,
        (RemoteConnectAdministrator, _) => true,
        (RemoteConnectUser, StartSession(Own) | EndSession(Own) | ViewSession(Own)) => true,
        (RemoteConnectUser, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The brief's table as data, cell by cell, independent of `allowed`'s
    /// match: (action, Administrator, remoteConnect Administrator,
    /// remoteConnect User).
    const TABLE: &[(Action, bool, bool, bool)] = &[
        (Action::AddGateway, true, false, false),
        (Action::ManageUsers, true, false, false),
        (Action::CreateSession, true, true, false),
        (Action::AddDevicesToSession, true, true, false),
        (Action::StartSession(Ownership::Own), true, true, true),
        (Action::StartSession(Ownership::Others), true, true, false),
        (Action::EndSession(Ownership::Own), true, true, true),
        (Action::EndSession(Ownership::Others), true, true, false),
        (Action::ViewSession(Ownership::Own), true, true, true),
        (Action::ViewSession(Ownership::Others), true, true, false),
        // Beyond the table.
        (Action::ViewGateways, true, true, false),
        (Action::ManageRelays, true, false, false),
        (Action::ReadAudit, true, true, false),
    ];

    #[test]
    fn the_whole_rights_table_role_by_action() {
        for &(action, admin, rc_admin, rc_user) in TABLE {
            assert_eq!(allowed(Role::Administrator, action), admin, "Administrator {action:?}");
            assert_eq!(
                allowed(Role::RemoteConnectAdministrator, action),
                rc_admin,
                "rC Administrator {action:?}"
            );
            assert_eq!(allowed(Role::RemoteConnectUser, action), rc_user, "rC User {action:?}");
        }
        // Every role appears, and every action the table names is covered.
        assert_eq!(Role::ALL.len(), 3);
        assert_eq!(TABLE.len(), 13);
    }

    #[test]
    fn roles_serialize_as_snake_case() {
        assert_eq!(serde_json::to_string(&Role::RemoteConnectUser).unwrap(), "\"remote_connect_user\"");
        let back: Role = serde_json::from_str("\"administrator\"").unwrap();
        assert_eq!(back, Role::Administrator);
        assert!(serde_json::from_str::<Role>("\"root\"").is_err());
    }
}
