//! The OCI runtime spec of a replica's container, decided from its request and its image's
//! config; pure, so every rule here is tested without containerd.
//!
//! What a container gets: the image's entrypoint with the spec's args (or the image's cmd),
//! the image's environment under the spec's, the host's network (no network namespace, as
//! the process runtime's workloads have), its own pid, ipc and mount namespaces, the agent's
//! DNS as `/etc/resolv.conf`, its secrets read-only at [`SECRETS_MOUNT`], each local volume
//! bound at `/volumes/<target>` (read-only when the mount says so, and named by
//! `WARREN_VOLUME_<TARGET>` in its environment), only the
//! capabilities `cap_add` names, `no_new_privileges`, and its memory and CPU limits in
//! `linux.resources` under the cgroup `<CGROUP_PARENT>/<replica>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use warren_api::run_as::{CAPABILITIES, keeps_all_capabilities};

use super::super::process::DEFAULT_PATH;
use super::super::{RuntimeError, WorkloadRequest, volumes};
use super::image::RunConfig;

/// Where a container sees its secret files.
pub const SECRETS_MOUNT: &str = "/run/secrets";

/// The cgroup (under each controller) that holds every container's cgroup.
pub const CGROUP_PARENT: &str = "warren-containers";

/// CFS period for CPU limits: 100 ms, the kernel's default.
const CPU_PERIOD_US: u64 = 100_000;

/// The process a container runs, decided from the request and the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContainerProcess {
    pub(crate) args: Vec<String>,
    pub(crate) env: Vec<String>,
    pub(crate) cwd: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// Host paths bind-mounted into the container.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HostFiles<'a> {
    pub(crate) secrets_dir: Option<&'a Path>,
    pub(crate) resolv_conf: Option<&'a Path>,
    /// The host directory of each of the request's volume mounts, in their order.
    pub(crate) volume_dirs: &'a [PathBuf],
}

/// The process of `request`'s container over `image`'s defaults.
///
/// # Errors
/// [`RuntimeError::InvalidRequest`] when there is nothing to run; [`RuntimeError::RunAs`] for a
/// user or group given by name (only numbers are understood in a container for now).
pub(crate) fn container_process(
    request: &WorkloadRequest,
    image: &RunConfig,
) -> Result<ContainerProcess, RuntimeError> {
    let mut args = image.entrypoint.clone().unwrap_or_default();
    if request.argv.is_empty() {
        args.extend(image.cmd.clone().unwrap_or_default());
    } else {
        args.extend(request.argv.iter().cloned());
    }
    if args.is_empty() {
        return Err(RuntimeError::InvalidRequest {
            replica: request.replica.clone(),
            reason: "the image has no entrypoint or cmd and the spec gives no args".to_owned(),
        });
    }
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for pair in image.env.iter().flatten() {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        env.insert(key.to_owned(), value.to_owned());
    }
    env.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    env.extend(request.env.clone());
    if !request.secrets.is_empty() {
        env.insert(
            super::super::process::SECRETS_DIR_ENV.to_owned(),
            SECRETS_MOUNT.to_owned(),
        );
    }
    env.extend(volumes::environment(
        &request.replica,
        &request.volumes,
        |mount| volumes::container_path(&mount.target),
    )?);
    let cwd = match &request.working_dir {
        Some(dir) if dir.is_absolute() => dir.to_string_lossy().into_owned(),
        _ => image
            .working_dir
            .clone()
            .filter(|d| d.starts_with('/'))
            .unwrap_or_else(|| "/".to_owned()),
    };
    let (uid, gid) = user_ids(request, image)?;
    Ok(ContainerProcess {
        args,
        env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        cwd,
        uid,
        gid,
    })
}

/// The numeric user and group: the spec's, else the image's, else root (of the container;
/// it keeps only the capabilities `cap_add` names).
fn user_ids(request: &WorkloadRequest, image: &RunConfig) -> Result<(u32, u32), RuntimeError> {
    let refuse = |what: &str| RuntimeError::RunAs {
        replica: request.replica.clone(),
        reason: format!(
            "{what}: containers take numeric users and groups (names inside images are not looked up yet)"
        ),
    };
    let image_user = image.user.clone().filter(|u| !u.is_empty());
    let (user, mut group) = match (&request.user, image_user) {
        (Some(user), _) => (user.clone(), None),
        (None, Some(image_user)) => match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user, None),
        },
        (None, None) => ("0".to_owned(), None),
    };
    if let Some(spec_group) = &request.group {
        group = Some(spec_group.clone());
    }
    let uid: u32 = user
        .parse()
        .map_err(|_| refuse(&format!("user {user:?}")))?;
    let gid = match group {
        Some(group) => group
            .parse()
            .map_err(|_| refuse(&format!("group {group:?}")))?,
        None => uid,
    };
    Ok((uid, gid))
}

/// The capability names (`CAP_…`) `cap_add` keeps.
fn capabilities(cap_add: &[String]) -> Vec<String> {
    let names: Vec<&str> = if keeps_all_capabilities(cap_add) {
        CAPABILITIES.to_vec()
    } else {
        cap_add.iter().map(String::as_str).collect()
    };
    names.iter().map(|n| format!("CAP_{n}")).collect()
}

/// The OCI runtime spec (as JSON) for `request`'s container.
pub(crate) fn runtime_spec(
    request: &WorkloadRequest,
    process: &ContainerProcess,
    files: HostFiles<'_>,
) -> Value {
    let caps = capabilities(&request.cap_add);
    json!({
        "ociVersion": "1.0.2",
        "root": { "path": "rootfs", "readonly": false },
        "process": {
            "terminal": false,
            "user": { "uid": process.uid, "gid": process.gid },
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "noNewPrivileges": true,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": [],
            },
        },
        "mounts": mounts(request, files),
        "linux": {
            "cgroupsPath": format!("/{CGROUP_PARENT}/{}", request.replica),
            "resources": resources(request),
            "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "mount" }],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

fn resources(request: &WorkloadRequest) -> Value {
    let mut resources = json!({ "devices": [{ "allow": false, "access": "rwm" }] });
    if let Some(limit) = request.memory_bytes {
        resources["memory"] = json!({ "limit": limit });
    }
    if let Some(millis) = request.cpu_millis {
        let quota = u64::from(millis) * CPU_PERIOD_US / 1000;
        resources["cpu"] = json!({ "quota": quota, "period": CPU_PERIOD_US });
    }
    resources
}

fn mounts(request: &WorkloadRequest, files: HostFiles<'_>) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    let bind_ro = |source: &Path, destination: &str| json!({"destination": destination, "type": "bind", "source": source, "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]});
    let resolv = files
        .resolv_conf
        .unwrap_or_else(|| Path::new("/etc/resolv.conf"));
    mounts.push(bind_ro(resolv, "/etc/resolv.conf"));
    mounts.push(bind_ro(Path::new("/etc/hosts"), "/etc/hosts"));
    if let Some(secrets) = files.secrets_dir {
        mounts.push(bind_ro(secrets, SECRETS_MOUNT));
    }
    for (mount, source) in request.volumes.iter().zip(files.volume_dirs) {
        let access = if mount.read_only { "ro" } else { "rw" };
        mounts.push(json!({
            "destination": volumes::container_path(&mount.target),
            "type": "bind",
            "source": source,
            "options": ["rbind", access, "nosuid", "nodev"],
        }));
    }
    Value::Array(mounts)
}

#[cfg(test)]
mod tests {
    use warren_api::ids::{ReplicaId, ServiceName};
    use warren_api::service::VolumeMount;

    use super::*;

    fn request() -> WorkloadRequest {
        WorkloadRequest {
            replica: ReplicaId::replicated(ServiceName::new("web").unwrap(), 0),
            workload_hash: 7,
            image: Some("busybox".to_owned()),
            argv: vec![],
            env: BTreeMap::from([("MODE".to_owned(), "edge".to_owned())]),
            working_dir: None,
            user: None,
            group: None,
            cap_add: vec!["NET_BIND_SERVICE".to_owned()],
            secrets: vec![("token".to_owned(), b"x".to_vec())],
            volumes: vec![VolumeMount {
                volume: "pg".to_owned(),
                target: "db".to_owned(),
                read_only: true,
            }],
            memory_bytes: Some(32 << 20),
            cpu_millis: Some(500),
            registry_auth: None,
        }
    }

    fn image() -> RunConfig {
        RunConfig {
            env: Some(vec!["PATH=/bin".to_owned(), "MODE=image".to_owned()]),
            entrypoint: Some(vec!["/bin/sh".to_owned(), "-c".to_owned()]),
            cmd: Some(vec!["echo hi".to_owned()]),
            working_dir: Some("/srv".to_owned()),
            user: Some("1000:1001".to_owned()),
        }
    }

    #[test]
    fn process_takes_image_defaults_under_the_spec() {
        let process = container_process(&request(), &image()).unwrap();
        assert_eq!(process.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(
            process.env,
            [
                "MODE=edge",
                "PATH=/bin",
                "WARREN_SECRETS_DIR=/run/secrets",
                "WARREN_VOLUME_DB=/volumes/db"
            ]
        );
        assert_eq!(process.cwd, "/srv");
        assert_eq!((process.uid, process.gid), (1000, 1001));

        let mut with_args = request();
        with_args.argv = vec!["echo bye".to_owned()];
        with_args.user = Some("7".to_owned());
        with_args.working_dir = Some(PathBuf::from("/tmp"));
        let process = container_process(&with_args, &image()).unwrap();
        assert_eq!(process.args, ["/bin/sh", "-c", "echo bye"]);
        assert_eq!(
            (process.uid, process.gid, process.cwd.as_str()),
            (7, 7, "/tmp")
        );

        let mut named = request();
        named.user = Some("nobody".to_owned());
        let err = container_process(&named, &image()).unwrap_err();
        assert!(matches!(err, RuntimeError::RunAs { .. }), "{err}");

        let empty = RunConfig::default();
        let err = container_process(&request(), &empty).unwrap_err();
        assert!(matches!(err, RuntimeError::InvalidRequest { .. }), "{err}");
    }

    #[test]
    fn spec_has_limits_mounts_and_host_network() {
        let request = request();
        let process = container_process(&request, &image()).unwrap();
        let secrets = PathBuf::from("/w/web.0/secrets");
        let resolv = PathBuf::from("/var/lib/warren/resolv.conf");
        let volume_dirs = [PathBuf::from("/var/lib/warren-volumes/pg")];
        let files = HostFiles {
            secrets_dir: Some(&secrets),
            resolv_conf: Some(&resolv),
            volume_dirs: &volume_dirs,
        };
        let spec = runtime_spec(&request, &process, files);
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["cgroupsPath"], "/warren-containers/web.0");
        let namespaces = spec["linux"]["namespaces"].to_string();
        assert!(!namespaces.contains("network"), "{namespaces}");
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            json!(["CAP_NET_BIND_SERVICE"])
        );
        let mounts = spec["mounts"].as_array().unwrap();
        let find = |dest: &str| mounts.iter().find(|m| m["destination"] == dest).unwrap();
        assert_eq!(find("/run/secrets")["source"], "/w/web.0/secrets");
        assert_eq!(
            find("/etc/resolv.conf")["source"],
            "/var/lib/warren/resolv.conf"
        );
        assert!(
            find("/run/secrets")["options"]
                .to_string()
                .contains("\"ro\"")
        );
        let volume = find("/volumes/db");
        assert_eq!(volume["source"], "/var/lib/warren-volumes/pg");
        assert!(volume["options"].to_string().contains("\"ro\""), "{volume}");
        assert!(
            process
                .env
                .contains(&"WARREN_VOLUME_DB=/volumes/db".to_owned()),
            "{:?}",
            process.env
        );
    }
}
