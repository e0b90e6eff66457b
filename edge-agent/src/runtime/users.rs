//! Users and groups of this box, read from `/etc/passwd` and `/etc/group`: enough to turn a
//! spec's `user` and `group` (names or numbers) into ids and supplementary groups, as
//! `initgroups(3)` would. Parsing is pure; only [`UserDb::load`] reads files.
//!
//! Lines that do not parse are skipped (a box's files may carry comments or NIS `+` entries);
//! a name found nowhere is an error for the caller to report, never a silent fallback.

use std::path::Path;

/// Where users are read from.
pub(crate) const PASSWD_FILE: &str = "/etc/passwd";
/// Where groups are read from.
pub(crate) const GROUP_FILE: &str = "/etc/group";

/// A line of `/etc/passwd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UserEntry {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// A line of `/etc/group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub(crate) name: String,
    pub(crate) gid: u32,
    pub(crate) members: Vec<String>,
}

/// The box's users and groups, as read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserDb {
    pub(crate) users: Vec<UserEntry>,
    pub(crate) groups: Vec<GroupEntry>,
}

impl UserDb {
    /// Reads `passwd` and `group`; a missing file reads as empty (a minimal container image
    /// may have none: then only numbers resolve).
    pub(crate) fn load(passwd: &Path, group: &Path) -> std::io::Result<Self> {
        let read = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        };
        Ok(UserDb::parse(&read(passwd)?, &read(group)?))
    }

    /// Parses the text of the two files.
    pub(crate) fn parse(passwd: &str, group: &str) -> Self {
        let users = passwd
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let [name, _, uid, gid, ..] = fields[..] else {
                    return None;
                };
                Some(UserEntry {
                    name: name.to_owned(),
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                })
            })
            .collect();
        let groups = group
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let [name, _, gid, members] = fields[..] else {
                    return None;
                };
                Some(GroupEntry {
                    name: name.to_owned(),
                    gid: gid.parse().ok()?,
                    members: members
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(str::to_owned)
                        .collect(),
                })
            })
            .collect();
        UserDb { users, groups }
    }

    /// The user named `user`, or with that number.
    pub(crate) fn user(&self, user: &str) -> Option<&UserEntry> {
        match user.parse::<u32>() {
            Ok(uid) => self.users.iter().find(|u| u.uid == uid),
            Err(_) => self.users.iter().find(|u| u.name == user),
        }
    }

    /// Whether any user has `uid`.
    pub(crate) fn has_uid(&self, uid: u32) -> bool {
        self.users.iter().any(|u| u.uid == uid)
    }

    /// The id of group `group` (a name or a number; a number needs no entry).
    pub(crate) fn gid(&self, group: &str) -> Option<u32> {
        match group.parse::<u32>() {
            Ok(gid) => Some(gid),
            Err(_) => self.groups.iter().find(|g| g.name == group).map(|g| g.gid),
        }
    }

    /// The supplementary groups of user `name` with primary group `gid`: `gid` and every group
    /// that lists the user as a member, in ascending order, as `initgroups(3)` sets them.
    pub(crate) fn groups_of(&self, name: &str, gid: u32) -> Vec<u32> {
        let mut groups: Vec<u32> = self
            .groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
            .map(|g| g.gid)
            .chain([gid])
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        # a comment\n\
        +nisuser\n\
        www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n\
        nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
        broken:x:notanumber:1::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\n\
        adm:x:4:syslog,www-data\n\
        www-data:x:33:\n\
        ssl-cert:x:110:www-data\n\
        nogroup:x:65534:\n";

    #[test]
    fn names_and_numbers_resolve() {
        let db = UserDb::parse(PASSWD, GROUP);
        assert_eq!(db.users.len(), 4, "comments, NIS and bad lines are skipped");
        let www = db.user("www-data").unwrap();
        assert_eq!((www.uid, www.gid), (33, 33));
        assert_eq!(db.user("33"), Some(www));
        assert_eq!(db.user("nobody").map(|u| u.uid), Some(65534));
        assert_eq!(db.user("ghost"), None);
        assert_eq!(
            db.user("4242"),
            None,
            "a number without an entry is not a user here"
        );
        assert!(db.has_uid(0) && !db.has_uid(4242));
        assert_eq!(db.gid("nogroup"), Some(65534));
        assert_eq!(db.gid("4242"), Some(4242));
        assert_eq!(db.gid("ghosts"), None);
        assert_eq!(db.groups_of("www-data", 33), [4, 33, 110]);
        assert_eq!(db.groups_of("nobody", 65534), [65534]);
    }

    #[test]
    fn missing_files_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let db = UserDb::load(&dir.path().join("passwd"), &dir.path().join("group")).unwrap();
        assert_eq!(db, UserDb::default());
    }
}
