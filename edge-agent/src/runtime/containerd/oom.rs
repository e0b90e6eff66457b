//! Whether the kernel's OOM killer ended a container: its memory cgroup counts the kills
//! (`oom_kill` in cgroup v1's `memory.oom_control`, in cgroup v2's `memory.events`) and holds
//! the limit it ran under. runc keeps the cgroup until the task is deleted, so both can be
//! read after the task has exited.

use std::path::{Path, PathBuf};

use super::CGROUP_PARENT;

/// Above this a cgroup v1 `memory.limit_in_bytes` means "no limit" (the kernel reports
/// `PAGE_COUNTER_MAX` pages, just under 2^63).
const V1_NO_LIMIT_BYTES: u64 = 1 << 62;

/// An OOM kill found in a container's memory cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OomKill {
    /// The cgroup's memory limit, when it has one.
    pub(crate) memory_limit_bytes: Option<u64>,
}

/// The OOM kill in container `id`'s memory cgroup under `cgroup_root`, cgroup v1 or v2; `None`
/// when there was none or the cgroup cannot be read.
pub(crate) fn find(cgroup_root: &Path, id: &str) -> Option<OomKill> {
    let v1 = cgroup_root.join("memory").join(CGROUP_PARENT).join(id);
    if let Ok(control) = std::fs::read_to_string(v1.join("memory.oom_control")) {
        return (kill_count(&control) > 0).then(|| OomKill {
            memory_limit_bytes: read(v1.join("memory.limit_in_bytes"))
                .and_then(|limit| limit.trim().parse().ok())
                .filter(|&bytes| bytes < V1_NO_LIMIT_BYTES),
        });
    }
    let v2 = cgroup_root.join(CGROUP_PARENT).join(id);
    let events = read(v2.join("memory.events"))?;
    (kill_count(&events) > 0).then(|| OomKill {
        // `max` means no limit, and does not parse.
        memory_limit_bytes: read(v2.join("memory.max")).and_then(|l| l.trim().parse().ok()),
    })
}

fn read(path: PathBuf) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `oom_kill N` line of a `memory.oom_control` or `memory.events` file; 0 without one.
fn kill_count(text: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join(name), text).expect("write");
    }

    #[test]
    fn kill_counts() {
        let check = |text: &str, expected: u64| assert_eq!(kill_count(text), expected, "{text}");
        check("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n", 1);
        check("low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n", 2);
        check("oom_kill_disable 0\nunder_oom 0\n", 0);
        check("oom_kill x\n", 0);
        check("", 0);
    }

    #[test]
    fn finds_kills_in_v1_and_v2_cgroups() {
        let root = tempfile::tempdir().expect("tempdir");
        let v1 = root.path().join("memory").join(CGROUP_PARENT).join("a.0");
        write(
            &v1,
            "memory.oom_control",
            "oom_kill_disable 0\noom_kill 1\n",
        );
        write(&v1, "memory.limit_in_bytes", "16777216\n");
        assert_eq!(
            find(root.path(), "a.0"),
            Some(OomKill {
                memory_limit_bytes: Some(16 << 20)
            })
        );
        let unlimited = root.path().join("memory").join(CGROUP_PARENT).join("b.0");
        write(&unlimited, "memory.oom_control", "oom_kill 3\n");
        write(&unlimited, "memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(
            find(root.path(), "b.0"),
            Some(OomKill {
                memory_limit_bytes: None
            })
        );
        let v2 = root.path().join(CGROUP_PARENT).join("c.0");
        write(&v2, "memory.events", "oom 1\noom_kill 1\n");
        write(&v2, "memory.max", "max\n");
        assert_eq!(
            find(root.path(), "c.0"),
            Some(OomKill {
                memory_limit_bytes: None
            })
        );
        let calm = root.path().join(CGROUP_PARENT).join("d.0");
        write(&calm, "memory.events", "oom 0\noom_kill 0\n");
        assert_eq!(find(root.path(), "d.0"), None);
        assert_eq!(find(root.path(), "missing.0"), None);
    }
}
