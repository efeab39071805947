//! Who acts, with what authority, from where. Identity comes from the transport (the OS user
//! and `--operator` on the socket, the token on HTTP); authority comes from the role.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an identity may do. Each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: runs, reports, backups, WAL status, plans, workflows, the audit trail.
    Viewer,
    /// Backups, drills, halt, resume, approve.
    Operator,
    /// Recoveries, PITR, rollback, cancel, in-place restores, clean-up.
    Admin,
}

impl Role {
    /// The role's name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The transport an action came through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Via {
    /// The command line: through the control socket, or in the process that owns the
    /// state directory.
    Cli {
        /// The OS user of the calling process.
        os_user: String,
        /// Its process id, when known.
        pid: Option<i32>,
    },
    /// The HTTP API or the web page.
    Http {
        /// The peer's address.
        peer: String,
    },
    /// Lazarus itself (alert delivery).
    Internal,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Cli {
                os_user,
                pid: Some(pid),
            } => write!(f, "cli, os user {os_user}, pid {pid}"),
            Via::Cli { os_user, pid: None } => write!(f, "cli, os user {os_user}"),
            Via::Http { peer } => write!(f, "http from {peer}"),
            Via::Internal => write!(f, "lazarus itself"),
        }
    }
}

/// Who acts, as every operation sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The name recorded with the action.
    pub identity: String,
    /// The authority it acts with.
    pub role: Role,
    /// Where it came from.
    pub via: Via,
}

impl Actor {
    /// Someone at the command line. Whoever can reach the state directory's socket (mode
    /// 0600) or open its journal already holds everything in it, so the CLI acts as admin.
    pub fn cli(identity: &str, os_user: String, pid: Option<i32>) -> Actor {
        Actor {
            identity: identity.to_string(),
            role: Role::Admin,
            via: Via::Cli { os_user, pid },
        }
    }

    /// This process's own OS user, for an owner acting for its own command line.
    pub fn this_process(identity: &str) -> Actor {
        let uid = nix::unistd::getuid();
        Actor::cli(
            identity,
            os_user_name(uid.as_raw()),
            Some(std::process::id() as i32),
        )
    }
}

/// The name of an OS user id, or `uid-N`.
pub fn os_user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid-{uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_authority() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
