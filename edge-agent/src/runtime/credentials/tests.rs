//! Who a workload runs as: a root agent and an unprivileged one, for every kind of spec, and how each choice is described.

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
        Err("cap_add ALL needs the agent to run as root; it runs as uid 1000 and cannot switch"),
    );
    check(
        DEV,
        Some("root"),
        None,
        &[],
        Err(r#"user "root" needs the agent to run as root; it runs as uid 1000 and cannot switch"#),
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
