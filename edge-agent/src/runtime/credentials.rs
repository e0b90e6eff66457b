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
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0::/root:/bin/sh\n\
        www-data:x:33:33::/var/www:/bin/false\n\
        dev:x:1000:1000::/home/dev:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nwww-data:x:33:\nssl-cert:x:110:www-data\nstaff:x:50:\n";

    const ROOT: AgentUser = AgentUser { uid: 0, gid: 0 };
    const DEV: AgentUser = AgentUser {
        uid: 1000,
        gid: 1000,
    };

    fn check(
        agent: AgentUser,
        user: Option<&str>,
        group: Option<&str>,
        cap_add: &[&str],
        expected: Result<(u32, u32, &[u32], u64, bool), &str>,
    ) {
        let users = UserDb::parse(PASSWD, GROUP);
        let cap_add: Vec<String> = cap_add.iter().map(|c| (*c).to_owned()).collect();
        let request = RunAsRequest {
            user,
            group,
            cap_add: &cap_add,
        };
        let got = resolve(request, agent, &users, || Ok(2_080_000_007));
        let got = got
            .as_ref()
            .map(|c| {
                (
                    c.uid,
                    c.gid,
                    c.groups.as_slice(),
                    c.capabilities,
                    c.switched,
                )
            })
            .map_err(String::as_str);
        assert_eq!(got, expected, "{user:?} {group:?} {cap_add:?} as {agent:?}");
    }

    #[test]
    fn a_root_agent_switches_to_what_the_spec_names_or_a_user_of_its_own() {
        let own: &[u32] = &[2_080_000_007];
        check(
            ROOT,
            None,
            None,
            &[],
            Ok((2_080_000_007, 2_080_000_007, own, 0, true)),
        );
        check(
            ROOT,
            None,
            Some("staff"),
            &[],
            Ok((2_080_000_007, 50, &[50], 0, true)),
        );
        check(
            ROOT,
            Some("www-data"),
            None,
            &["NET_BIND_SERVICE"],
            Ok((33, 33, &[33, 110], 1 << 10, true)),
        );
        check(
            ROOT,
            Some("33"),
            None,
            &[],
            Ok((33, 33, &[33, 110], 0, true)),
        );
        check(
            ROOT,
            Some("4242"),
            None,
            &[],
            Ok((4242, 4242, &[4242], 0, true)),
        );
        check(
            ROOT,
            Some("4242"),
            Some("7"),
            &[],
            Ok((4242, 7, &[7], 0, true)),
        );
        check(ROOT, Some("root"), None, &[], Ok((0, 0, &[0], 0, true)));
        check(
            ROOT,
            Some("0"),
            None,
            &["ALL"],
            Ok((0, 0, &[0], ALL_CAPABILITIES, true)),
        );
        check(
            ROOT,
            Some("ghost"),
            None,
            &[],
            Err(r#"unknown user "ghost": not in /etc/passwd on this node"#),
        );
        check(
            ROOT,
            Some("www-data"),
            Some("ghosts"),
            &[],
            Err(r#"unknown group "ghosts": not in /etc/group on this node"#),
        );
    }

    #[test]
    fn an_agent_that_is_not_root_runs_workloads_as_itself_or_not_at_all() {
        check(DEV, None, None, &[], Ok((1000, 1000, &[], 0, false)));
        check(DEV, Some("dev"), None, &[], Ok((1000, 1000, &[], 0, false)));
        check(
            DEV,
            Some("1000"),
            Some("1000"),
            &[],
            Ok((1000, 1000, &[], 0, false)),
        );
        check(
            DEV,
            Some("root"),
            None,
            &["ALL"],
            Err(
                "cap_add ALL needs the agent to run as root; it runs as uid 1000 and cannot switch",
            ),
        );
        check(
            DEV,
            Some("root"),
            None,
            &[],
            Err(
                r#"user "root" needs the agent to run as root; it runs as uid 1000 and cannot switch"#,
            ),
        );
        check(
            DEV,
            None,
            Some("staff"),
            &[],
            Err(
                r#"group "staff" needs the agent to run as root; it runs as uid 1000 and cannot switch"#,
            ),
        );
    }

    #[test]
    fn descriptions_say_who_and_why() {
        let mut credentials = Credentials {
            uid: 2_080_000_007,
            gid: 2_080_000_007,
            groups: vec![],
            capabilities: 0,
            switched: true,
        };
        assert_eq!(
            credentials.describe(),
            "uid 2080000007 gid 2080000007, no capability (a user of its own)"
        );
        credentials.uid = 33;
        credentials.capabilities = 1 << 10 | 1 << 13;
        assert_eq!(
            credentials.describe(),
            "uid 33 gid 2080000007, NET_BIND_SERVICE, NET_RAW"
        );
        credentials.switched = false;
        credentials.capabilities = 0;
        assert!(credentials.describe().ends_with(
            "no capability (the agent's own user: the agent is not root and cannot switch users)"
        ));
    }
}
