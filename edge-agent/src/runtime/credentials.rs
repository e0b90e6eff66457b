//! Who a workload runs as: a spec's `user`, `group` and `cap_add` turned into ids and a
//! capability set on this box, by the rules of `warren_api::run_as`.
//!
//! - An agent running as root switches to the user the spec names (`/etc/passwd`; a number
//!   needs no entry), or to a user of the replica's own from [`DYNAMIC_UIDS`] when it names
//!   none: never root unless asked for by name or as `0`, never a fallback to root.
//! - An agent not running as root cannot switch: the workload runs as the agent's own user,
//!   which is said in the start event. A spec that names another user, another group or any
//!   capability then fails with a reason, rather than run with less than it asked for
//!   silently.
//!
//! Pure apart from what the caller passes: the user database and the dynamic uid allocator.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use warren_api::run_as::{capability_number, keeps_all_capabilities};

use super::users::UserDb;

/// The user ids given to replicas whose spec names no user, one per replica, with the same
/// number as their group. Above the ranges other tools hand out (systemd's dynamic users
/// 61184–65519, subordinate ids from 100000, sssd's id mapping up to 2000200000) and below
/// 2^31 (ids that read as negative confuse some tools); a uid that `/etc/passwd` lists is
/// skipped.
pub const DYNAMIC_UIDS: Range<u32> = 2_080_000_000..2_080_065_536;

/// Every capability: the value of [`Credentials::capabilities`] for `cap_add: [ALL]`.
pub const ALL_CAPABILITIES: u64 = u64::MAX;

/// Who a workload runs as, as the runtime set it up at start (kept in its record, so that its
/// health checks run as it does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The capabilities it keeps, one bit per capability number; [`ALL_CAPABILITIES`] keeps
    /// whatever the agent has.
    pub capabilities: u64,
    /// Whether the runtime switched to these ids (the agent runs as root). `false`: the agent
    /// is not root and the workload runs as the agent's own user.
    pub switched: bool,
}

impl Credentials {
    /// For events and logs: `uid 2080001234 gid 2080001234, no capability`.
    pub fn describe(&self) -> String {
        let caps = match self.capabilities {
            ALL_CAPABILITIES => "every capability".to_owned(),
            0 => "no capability".to_owned(),
            bits => (0..64)
                .filter(|n| bits & (1 << n) != 0)
                .map(|n| {
                    warren_api::run_as::CAPABILITIES
                        .get(n)
                        .map_or_else(|| format!("capability {n}"), |name| (*name).to_owned())
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut text = format!("uid {} gid {}, {caps}", self.uid, self.gid);
        if !self.switched {
            text.push_str(" (the agent's own user: the agent is not root and cannot switch users)");
        } else if DYNAMIC_UIDS.contains(&self.uid) {
            text.push_str(" (a user of its own)");
        }
        text
    }
}

/// The agent's own ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AgentUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl AgentUser {
    /// This process's effective ids.
    pub(crate) fn current() -> Self {
        AgentUser {
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        }
    }

    pub(crate) fn is_root(self) -> bool {
        self.uid == 0
    }
}

/// What a spec asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RunAsRequest<'a> {
    pub(crate) user: Option<&'a str>,
    pub(crate) group: Option<&'a str>,
    pub(crate) cap_add: &'a [String],
}

/// The capability bits `cap_add` keeps.
fn capability_bits(cap_add: &[String]) -> Result<u64, String> {
    if keeps_all_capabilities(cap_add) {
        return Ok(ALL_CAPABILITIES);
    }
    cap_add.iter().try_fold(0u64, |bits, name| {
        capability_number(name)
            .map(|n| bits | 1 << n)
            .ok_or_else(|| format!("unknown capability {name:?} in cap_add"))
    })
}

/// The credentials `request` gets on this box. `dynamic_uid` is asked only when an agent
/// running as root runs a spec that names no user.
///
/// # Errors
/// One line for the replica's start-failed event: an unknown user or group, or (agent not
/// root) a user, group or capability it cannot give.
pub(crate) fn resolve(
    request: RunAsRequest<'_>,
    agent: AgentUser,
    users: &UserDb,
    dynamic_uid: impl FnOnce() -> Result<u32, String>,
) -> Result<Credentials, String> {
    let capabilities = capability_bits(request.cap_add)?;
    if !agent.is_root() {
        return as_the_agent(request, agent, users, capabilities);
    }
    let (uid, primary_gid, name) = match request.user {
        None => {
            let uid = dynamic_uid()?;
            (uid, uid, None)
        }
        Some(user) => match users.user(user) {
            Some(entry) => (entry.uid, entry.gid, Some(entry.name.as_str())),
            None => match user.parse::<u32>() {
                Ok(uid) => (uid, uid, None),
                Err(_) => {
                    return Err(format!(
                        "unknown user {user:?}: not in {} on this node",
                        super::users::PASSWD_FILE
                    ));
                }
            },
        },
    };
    let gid = match request.group {
        None => primary_gid,
        Some(group) => users.gid(group).ok_or_else(|| {
            format!(
                "unknown group {group:?}: not in {} on this node",
                super::users::GROUP_FILE
            )
        })?,
    };
    let groups = match name {
        Some(name) => users.groups_of(name, gid),
        None => vec![gid],
    };
    Ok(Credentials {
        uid,
        gid,
        groups,
        capabilities,
        switched: true,
    })
}

/// An agent that is not root: the workload runs as the agent, or not at all.
fn as_the_agent(
    request: RunAsRequest<'_>,
    agent: AgentUser,
    users: &UserDb,
    capabilities: u64,
) -> Result<Credentials, String> {
    let cannot = |what: String| {
        Err(format!(
            "{what} needs the agent to run as root; it runs as uid {} and cannot switch",
            agent.uid
        ))
    };
    if capabilities != 0 {
        return cannot(format!("cap_add {}", request.cap_add.join(",")));
    }
    if let Some(user) = request.user {
        let uid = users
            .user(user)
            .map(|u| u.uid)
            .or_else(|| user.parse().ok());
        if uid != Some(agent.uid) {
            return cannot(format!("user {user:?}"));
        }
    }
    if let Some(group) = request.group
        && users.gid(group) != Some(agent.gid)
    {
        return cannot(format!("group {group:?}"));
    }
    Ok(Credentials {
        uid: agent.uid,
        gid: agent.gid,
        groups: Vec::new(),
        capabilities: 0,
        switched: false,
    })
}

#[cfg(test)]
mod tests;
