//! Who a workload runs as and which capabilities it keeps: the rules for a spec's `user`,
//! `group` and `cap_add`, the Linux capability names, and the text that says it for people.
//!
//! A spec without `user` runs as an unprivileged user the agent gives each replica of its own;
//! `root` only when the spec says so. Every capability is dropped except those `cap_add`
//! names; `ALL` keeps every one (what a spec from before these fields ran with). Names are
//! resolved on the agent (its `/etc/passwd` and `/etc/group`), so this module checks only the
//! form of a name.

use serde::{Deserialize, Deserializer};

use crate::validate::ValidationError;

/// The user every capability belongs to: asked for by name or as `0`.
pub const ROOT_USER: &str = "root";

/// The `cap_add` entry that keeps every capability.
pub const ALL_CAPABILITIES: &str = "ALL";

/// Longest user or group name accepted (the useradd limit).
pub const MAX_NAME_CHARS: usize = 32;

/// Linux capability names without their `CAP_` prefix, each at the index of its number
/// (capabilities(7)): `CAPABILITIES[10]` is `NET_BIND_SERVICE`, capability 10.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The number of capability `name` (`NET_BIND_SERVICE` → 10), if it is one.
pub fn capability_number(name: &str) -> Option<u8> {
    CAPABILITIES
        .iter()
        .position(|known| *known == name)
        .and_then(|n| u8::try_from(n).ok())
}

/// Whether `cap_add` keeps every capability.
pub fn keeps_all_capabilities(cap_add: &[String]) -> bool {
    cap_add.iter().any(|c| c == ALL_CAPABILITIES)
}

/// Checks a user or group: a name (letters, digits, `_`, `-`, `.`, starting with a letter or
/// `_`, an optional trailing `$`, at most [`MAX_NAME_CHARS`]) or a number below 4294967295
/// (`(uid_t) -1` means "no change" to the kernel).
///
/// # Errors
/// A [`ValidationError`] on `field` naming the rule broken.
pub fn validate_user_or_group(field: &str, value: &str) -> Result<(), ValidationError> {
    let fail = |message: String| Err(ValidationError::new(field, message));
    if value.is_empty() {
        return fail("must not be empty (leave it out for the default)".to_owned());
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return match value.parse::<u32>() {
            Ok(id) if id < u32::MAX => Ok(()),
            _ => fail(format!("{value} is not a valid id (0 to 4294967294)")),
        };
    }
    if value.chars().count() > MAX_NAME_CHARS {
        return fail(format!(
            "must be at most {MAX_NAME_CHARS} characters, got {value:?}"
        ));
    }
    let body = value.strip_suffix('$').unwrap_or(value);
    let starts_ok = body.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let chars_ok = body
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !starts_ok || !chars_ok {
        return fail(format!(
            "invalid name {value:?}: use a user or group name (letters, digits, '_', '-', '.'; \
             starting with a letter or '_') or a number"
        ));
    }
    Ok(())
}

/// Checks `cap_add`: each entry a capability of [`CAPABILITIES`] (without `CAP_`), no entry
/// twice, and `ALL` only on its own.
///
/// # Errors
/// A [`ValidationError`] on `cap_add[N]` naming the entry and what to write instead.
pub fn validate_cap_add(cap_add: &[String]) -> Result<(), ValidationError> {
    if keeps_all_capabilities(cap_add) && cap_add.len() > 1 {
        return Err(ValidationError::new(
            "cap_add",
            "ALL keeps every capability: give it alone",
        ));
    }
    for (idx, name) in cap_add.iter().enumerate() {
        let field = format!("cap_add[{idx}]");
        if cap_add[..idx].contains(name) {
            return Err(ValidationError::new(
                field,
                format!("{name:?} is given twice"),
            ));
        }
        if name == ALL_CAPABILITIES || capability_number(name).is_some() {
            continue;
        }
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        let hint = if capability_number(bare).is_some() {
            format!("write {bare}")
        } else {
            "see capabilities(7); for example NET_BIND_SERVICE".to_owned()
        };
        return Err(ValidationError::new(
            field,
            format!("unknown capability {name:?} ({hint})"),
        ));
    }
    Ok(())
}

/// Who a spec's workload runs as, in words for `service inspect`: `root, with every
/// capability`, `app:staff, with NET_BIND_SERVICE`, `a user of its own (default), with no
/// capability`.
pub fn describe(user: Option<&str>, group: Option<&str>, cap_add: &[String]) -> String {
    let who = match (user, group) {
        (Some(user), Some(group)) => format!("{user}:{group}"),
        (Some(user), None) => user.to_owned(),
        (None, Some(group)) => format!("a user of its own (default), group {group}"),
        (None, None) => "a user of its own (default)".to_owned(),
    };
    let caps = if keeps_all_capabilities(cap_add) {
        "every capability".to_owned()
    } else if cap_add.is_empty() {
        "no capability".to_owned()
    } else {
        cap_add.join(", ")
    };
    format!("{who}, with {caps}")
}

/// Reads a user or group as a string, or (in JSON and YAML) as a number: `user: 1000` means
/// `"1000"`. Postcard, which is not self-describing, reads the string it wrote.
///
/// # Errors
/// Anything other than a string, a number or null.
pub fn name_or_number<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    if !deserializer.is_human_readable() {
        return Option::<String>::deserialize(deserializer);
    }
    deserializer.deserialize_any(NameOrNumber)
}

struct NameOrNumber;

impl<'de> serde::de::Visitor<'de> for NameOrNumber {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a user or group name, or a number")
    }

    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Some(value.to_owned()))
    }

    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }

    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Some(value.to_string()))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(NameOrNumber)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(input: &str, expected: Result<(), &str>) {
        let got = validate_user_or_group("user", input).map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "{input:?}");
    }

    #[test]
    fn user_and_group_forms() {
        for ok in [
            "root", "nobody", "www-data", "_apt", "svc.web", "build$", "0", "65534",
        ] {
            check_name(ok, Ok(()));
        }
        check_name("4294967294", Ok(()));
        check_name(
            "",
            Err("user: must not be empty (leave it out for the default)"),
        );
        check_name(
            "4294967295",
            Err("user: 4294967295 is not a valid id (0 to 4294967294)"),
        );
        check_name(
            "99999999999",
            Err("user: 99999999999 is not a valid id (0 to 4294967294)"),
        );
        check_name(
            "1app",
            Err(
                r#"user: invalid name "1app": use a user or group name (letters, digits, '_', '-', '.'; starting with a letter or '_') or a number"#,
            ),
        );
        check_name(
            "a b",
            Err(
                r#"user: invalid name "a b": use a user or group name (letters, digits, '_', '-', '.'; starting with a letter or '_') or a number"#,
            ),
        );
        check_name(
            "../etc",
            Err(
                r#"user: invalid name "../etc": use a user or group name (letters, digits, '_', '-', '.'; starting with a letter or '_') or a number"#,
            ),
        );
        check_name(
            &"a".repeat(33),
            Err(&format!(
                "user: must be at most 32 characters, got {:?}",
                "a".repeat(33)
            )),
        );
    }

    fn caps(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn cap_add_rules() {
        let check = |names: &[&str], expected: Result<(), &str>| {
            let got = validate_cap_add(&caps(names)).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(str::to_owned), "{names:?}");
        };
        check(&[], Ok(()));
        check(&["NET_BIND_SERVICE", "NET_RAW"], Ok(()));
        check(&["ALL"], Ok(()));
        check(
            &["ALL", "NET_RAW"],
            Err("cap_add: ALL keeps every capability: give it alone"),
        );
        check(
            &["NET_RAW", "NET_RAW"],
            Err(r#"cap_add[1]: "NET_RAW" is given twice"#),
        );
        check(
            &["CAP_NET_BIND_SERVICE"],
            Err(
                r#"cap_add[0]: unknown capability "CAP_NET_BIND_SERVICE" (write NET_BIND_SERVICE)"#,
            ),
        );
        check(
            &["net_admin"],
            Err(r#"cap_add[0]: unknown capability "net_admin" (write NET_ADMIN)"#),
        );
        check(
            &["NET_RAW", "FLY"],
            Err(
                r#"cap_add[1]: unknown capability "FLY" (see capabilities(7); for example NET_BIND_SERVICE)"#,
            ),
        );
    }

    #[test]
    fn capability_numbers_follow_the_kernel() {
        assert_eq!(capability_number("CHOWN"), Some(0));
        assert_eq!(capability_number("NET_BIND_SERVICE"), Some(10));
        assert_eq!(capability_number("SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(capability_number("ALL"), None);
    }

    #[test]
    fn descriptions() {
        assert_eq!(
            describe(None, None, &[]),
            "a user of its own (default), with no capability"
        );
        assert_eq!(
            describe(Some("root"), None, &caps(&["ALL"])),
            "root, with every capability"
        );
        assert_eq!(
            describe(Some("app"), Some("staff"), &caps(&["NET_BIND_SERVICE"])),
            "app:staff, with NET_BIND_SERVICE"
        );
    }
}
