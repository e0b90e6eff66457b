//! Admin certificates as an operator handles them, with real processes: issued for a named
//! operator with a key that never leaves the CLI, listed, renewed in place, and revoked — after
//! which every control node refuses them.

mod common;
use common::{command, control_init, ok};

#[test]
fn admin_certificates_are_issued_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, _quic, config) = control_init(dir.path());
    let with = |config: &std::path::Path, args: &[&str]| {
        command()
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .expect("run warren")
    };
    let stderr =
        |output: &std::process::Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // The first admin (written by init) is listed.
    let listed = ok(with(&config, &["admin", "ls", "-o", "json"]));
    let admins: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(admins.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(admins[0]["name"], "admin");

    // A named admin: its own config works.
    let alice = dir.path().join("alice.conf");
    let created = ok(with(
        &config,
        &["admin", "create", "alice", "--out", alice.to_str().unwrap()],
    ));
    assert!(created.contains("admin alice created"), "{created}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&alice).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let status = ok(with(&alice, &["cluster", "status"]));
    assert!(status.contains("ops-1"), "{status}");
    let again = with(
        &config,
        &["admin", "create", "alice", "--out", "/dev/null/x"],
    );
    assert!(!again.status.success());
    let table = ok(with(&config, &["admin", "ls"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains("valid")),
        "{table}"
    );

    // Revoked: refused from then on; the other admin is untouched.
    let revoked = ok(with(&config, &["admin", "revoke", "alice"]));
    assert!(revoked.contains("admin alice revoked"), "{revoked}");
    let refused = with(&alice, &["cluster", "status"]);
    assert!(!refused.status.success(), "a revoked admin is refused");
    assert!(stderr(&refused).contains("error:"), "{}", stderr(&refused));
    ok(with(&config, &["cluster", "status"]));
    let table = ok(with(&config, &["admin", "ls"]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("alice ") && l.contains("revoked")),
        "{table}"
    );
    // Renewed in place: the config keeps working with a new certificate, a copy of the old
    // one is refused.
    let carol = dir.path().join("carol.conf");
    ok(with(
        &config,
        &["admin", "create", "carol", "--out", carol.to_str().unwrap()],
    ));
    let carol_before = dir.path().join("carol-before.conf");
    std::fs::copy(&carol, &carol_before).unwrap();
    let renewed = ok(with(&carol, &["admin", "renew"]));
    assert!(renewed.contains("admin carol renewed"), "{renewed}");
    assert_ne!(
        std::fs::read(&carol).unwrap(),
        std::fs::read(&carol_before).unwrap()
    );
    let mode = std::fs::metadata(&carol).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    ok(with(&carol, &["cluster", "status"]));
    let stale = with(&carol_before, &["cluster", "status"]);
    assert!(
        !stale.status.success(),
        "the replaced certificate is revoked"
    );
    let table = ok(with(&config, &["admin", "ls"]));
    let carol_rows: Vec<&str> = table.lines().filter(|l| l.starts_with("carol ")).collect();
    assert_eq!(carol_rows.len(), 2, "{table}");
    assert!(carol_rows.iter().any(|l| l.contains("revoked")), "{table}");
    assert!(carol_rows.iter().any(|l| l.contains("valid")), "{table}");

    let unknown = with(&config, &["admin", "revoke", "bob"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("admin bob not found"),
        "{}",
        stderr(&unknown)
    );
}
