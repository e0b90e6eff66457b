//! `warren cluster rotate-keys` with real processes: each rotation moves the cluster to the next
//! key generation (kept in the control node's `cluster.key`), and secrets stored before it are
//! still served after.

mod common;
use common::{command, control_init, ok};

#[test]
fn cluster_keys_rotate_on_demand_and_secrets_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (_control, _quic, config) = control_init(dir.path());
    let admin = |args: &[&str]| {
        command()
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run warren")
    };
    let value = dir.path().join("db.txt");
    std::fs::write(&value, "hunter2").unwrap();
    ok(admin(&[
        "secret",
        "create",
        "db",
        "--file",
        value.to_str().unwrap(),
    ]));

    let rotated = ok(admin(&["cluster", "rotate-keys"]));
    assert!(
        rotated.contains("cluster key rotated: generation 2 is in force"),
        "{rotated}"
    );
    let rotated = ok(admin(&["cluster", "rotate-keys", "-o", "json"]));
    let rotated: serde_json::Value = serde_json::from_str(&rotated).expect("JSON");
    assert_eq!(rotated["generation"], 3);

    let keys = std::fs::read_to_string(dir.path().join("control").join("cluster.key")).unwrap();
    let generations: Vec<&str> = keys.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(generations, ["1", "2", "3"], "{keys}");

    let listed = ok(admin(&["secret", "ls"]));
    assert!(listed.lines().any(|l| l.starts_with("db ")), "{listed}");
    ok(admin(&["cluster", "status"]));
    let help = ok(command()
        .args(["cluster", "rotate-keys", "--help"])
        .output()
        .unwrap());
    assert!(help.contains("re-sealed"), "{help}");
}
