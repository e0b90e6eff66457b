use std::os::unix::fs::{MetadataExt, PermissionsExt};

use warren_api::clock::unix_now;
use warren_transport::ca::{CA_LIFETIME, NODE_CERT_LIFETIME};
use warren_transport::{CertSubject, ClusterCa, Validity};

use super::*;
use crate::config::ADMIN_CONF;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn sighting(members: &[&str], answered: &str, current: bool) -> Sighting {
    Sighting {
        members: strings(members),
        answered: answered.to_owned(),
        current,
    }
}

#[test]
fn member_headers_parse() {
    assert_eq!(
        parse_members("10.0.0.1:7100, 10.0.0.2:7100,,10.0.0.1:7100").unwrap(),
        strings(&["10.0.0.1:7100", "10.0.0.2:7100"])
    );
    assert_eq!(
        parse_members("[::1]:7100,ops.example:7100").unwrap(),
        strings(&["[::1]:7100", "ops.example:7100"])
    );
    assert_eq!(parse_members("").unwrap(), Vec::<String>::new());
    for bad in ["unix:/run/c.sock", "10.0.0.1", "a:b", "10.0.0.1:7100,:7100"] {
        let error = parse_members(bad).unwrap_err().to_string();
        assert!(error.contains("is not HOST:PORT"), "{bad}: {error}");
    }
    let many: Vec<String> = (0..=MAX_MEMBERS_HEADER)
        .map(|i| format!("10.0.{}.{}:7100", i / 200, i % 200))
        .collect();
    assert!(parse_members(&many.join(",")).is_err());
    assert!(parse_members(&"a".repeat(MAX_MEMBERS_HEADER_BYTES + 1)).is_err());
}

/// One case of the merge rule: the list before, what was seen, the list after (`None`:
/// unchanged).
fn check(api: &[&str], seen: Sighting, expected: Option<&[&str]>) {
    let got = merged(&strings(api), &seen);
    assert_eq!(got, expected.map(strings), "{api:?} after {seen:?}");
}

#[test]
fn the_merge_rule() {
    const C1: &str = "10.0.0.1:7100";
    const C2: &str = "10.0.0.2:7100";
    const C3: &str = "10.0.0.3:7100";
    // New members are added from any answer, after the known ones.
    check(
        &[C1],
        sighting(&[C1, C2, C3], C1, false),
        Some(&[C1, C2, C3]),
    );
    // The operator's order is kept.
    check(
        &[C3, C1],
        sighting(&[C1, C2, C3], C1, true),
        Some(&[C3, C1, C2]),
    );
    // Nothing new: unchanged.
    check(&[C2, C1, C3], sighting(&[C1, C2, C3], C2, true), None);
    // A member that left is dropped by a caught-up node the client reached by its
    // advertised address …
    check(
        &[C1, C2, C3],
        sighting(&[C1, C2], C2, true),
        Some(&[C1, C2]),
    );
    // … but not by one that may lag behind (a 503, a write, a stale read) …
    check(&[C1, C2, C3], sighting(&[C1, C2], C2, false), None);
    // … nor when the client reached the cluster by another name (a load balancer).
    check(
        &["lb.example:443"],
        sighting(&[C1, C2], "lb.example:443", true),
        Some(&["lb.example:443", C1, C2]),
    );
    // Local sockets are not members' addresses and stay.
    check(
        &["unix:/var/lib/warren/control.sock", C3],
        sighting(&[C1], C1, true),
        Some(&["unix:/var/lib/warren/control.sock", C1]),
    );
    // An answer naming no members changes nothing, so the list never becomes empty.
    check(&[C1], sighting(&[], C1, true), None);
    // Duplicates in the file are folded.
    check(&[C1, C1], sighting(&[C1], C1, true), Some(&[C1]));
}

fn admin_config(api: &[&str]) -> AdminConfig {
    let ca = ClusterCa::generate("t", Validity::starting_at(unix_now(), CA_LIFETIME)).unwrap();
    let admin = ca
        .issue_credentials(
            &CertSubject::Admin {
                name: "admin".into(),
            },
            Validity::starting_at(unix_now(), NODE_CERT_LIFETIME),
        )
        .unwrap();
    AdminConfig::new("ops".into(), strings(api), &admin)
}

#[test]
fn only_the_api_list_is_rewritten() {
    let config = admin_config(&["10.0.0.1:7100"]);
    let text = config.to_text().unwrap();
    let edited = text.replace(
        "api:\n- 10.0.0.1:7100\n",
        "# my clusters\napi:   # nearest first\n  - 10.0.0.1:7100\n# the CA\n",
    );
    assert_ne!(edited, text, "the fixture edit applied");
    let api = strings(&["10.0.0.1:7100", "[::1]:7200"]);
    let rewritten = with_api(&edited, &config, &api).unwrap();
    assert_eq!(
        rewritten,
        edited.replace(
            "api:   # nearest first\n  - 10.0.0.1:7100\n",
            "api:\n- 10.0.0.1:7100\n- '[::1]:7200'\n"
        )
    );
    let parsed = AdminConfig::parse(&rewritten).unwrap();
    assert_eq!(parsed.api, api);
    assert_eq!(parsed.key_pem, config.key_pem);
    parsed.credentials().unwrap();

    let flow = text.replace("api:\n- 10.0.0.1:7100\n", "api: [10.0.0.1:7100]\n");
    let rewritten = with_api(&flow, &config, &api).unwrap();
    assert_eq!(AdminConfig::parse(&rewritten).unwrap().api, api);
    assert!(
        rewritten.starts_with("# Warren admin config"),
        "{rewritten}"
    );

    // A layout the splice cannot handle: the whole config is written again, nothing lost.
    let odd = text.replace(
        "api:\n- 10.0.0.1:7100\n",
        "api:\n# first\n- 10.0.0.1:7100\n",
    );
    let rewritten = with_api(&odd, &config, &api).unwrap();
    let parsed = AdminConfig::parse(&rewritten).unwrap();
    assert_eq!(parsed.api, api);
    assert_eq!(
        (parsed.cert_pem, parsed.key_pem),
        (config.cert_pem, config.key_pem)
    );
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_file_is_updated_in_place_keeping_mode_and_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ADMIN_CONF);
    let config = admin_config(&["10.0.0.1:7100"]);
    config.save(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link.conf");
    std::os::unix::fs::symlink(&path, &link).unwrap();

    let seen = sighting(&["10.0.0.1:7100", "10.0.0.2:7100"], "10.0.0.1:7100", true);
    let updated = update_file(&link, &seen, &config.fingerprint).unwrap();
    assert_eq!(
        updated,
        Updated::Rewritten(strings(&["10.0.0.1:7100", "10.0.0.2:7100"]))
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(mode_of(&path), 0o640);
    let loaded = AdminConfig::load(&path).unwrap();
    assert_eq!(loaded.api, seen.members);
    loaded.credentials().unwrap();
    assert_eq!(
        update_file(&path, &seen, &config.fingerprint).unwrap(),
        Updated::Unchanged
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert_eq!(leftovers, Vec::<String>::new());
}

#[test]
fn read_only_files_and_other_clusters_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ADMIN_CONF);
    let config = admin_config(&["10.0.0.1:7100"]);
    config.save(&path).unwrap();
    let seen = sighting(&["10.0.0.1:7100", "10.0.0.2:7100"], "10.0.0.1:7100", true);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert_eq!(
        update_file(&path, &seen, &config.fingerprint).unwrap(),
        Updated::LeftAlone("the file is read-only")
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = update_file(&path, &seen, &"00".repeat(32))
        .unwrap_err()
        .to_string();
    assert!(error.contains("another cluster"), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

/// Root (`sudo warren …`) rewriting an operator's admin config must not take it from them.
#[test]
fn another_users_file_keeps_its_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(ADMIN_CONF);
    let config = admin_config(&["10.0.0.1:7100"]);
    config.save(&path).unwrap();
    const NOBODY: u32 = 65534;
    // Giving a file away needs root.
    if !crate::prerequisites::require(
        "another_users_file_keeps_its_owner",
        [crate::prerequisites::root()],
    ) {
        return;
    }
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    let seen = sighting(&["10.0.0.1:7100", "10.0.0.2:7100"], "10.0.0.1:7100", false);
    assert!(matches!(
        update_file(&path, &seen, &config.fingerprint).unwrap(),
        Updated::Rewritten(_)
    ));
    let metadata = std::fs::metadata(&path).unwrap();
    assert_eq!((metadata.uid(), metadata.gid()), (NOBODY, NOBODY));
    assert_eq!(mode_of(&path), 0o600);
}
