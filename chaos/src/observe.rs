//! The observer: a thread that watches every agent from outside while a scenario runs.
//!
//! Every [`SAMPLE_EVERY`] it reads each agent's `status.json` (written by the agent, read by
//! `warren agent status`) and checks every workload process it has seen in `/proc`. From that
//! it keeps a [`History`]:
//! - each agent's view revision over time, and any step back ([`Regression`]);
//! - every workload process it saw: node, replica, pid, when first seen, when last seen alive
//!   and when it was found gone ([`Workload`]).
//!
//! It never asks Warren whether a workload runs: a process is alive when `/proc/<pid>` says so
//! (and its start time is the one first seen, so a reused pid is not mistaken for it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often the observer samples.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// An agent to watch.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: String,
    pub data_dir: PathBuf,
}

/// The part of an agent's `status.json` the harness reads (the file has more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatusFile {
    pub revision: u64,
    pub agent_pid: u32,
    pub link: LinkFile,
    pub replicas: Vec<ReplicaFile>,
}

/// `status.json`'s `link`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkFile {
    pub connected: bool,
    pub revision: u64,
    #[serde(default)]
    pub control_revision: u64,
}

/// One replica in `status.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFile {
    pub replica: warren_api::ReplicaId,
    pub state: String,
    pub pid: Option<u32>,
}

/// An agent's revision went back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Regression {
    pub node: String,
    pub t_ms: u64,
    pub from: u64,
    pub to: u64,
}

/// One workload process seen on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub node: String,
    /// `web.2`, or `web.<node id>` for a global service.
    pub replica: String,
    pub service: String,
    pub pid: u32,
    pub first_seen_ms: u64,
    pub last_alive_ms: u64,
    /// When it was first found gone.
    pub died_ms: Option<u64>,
    /// `/proc/<pid>/stat` start time, to tell a reused pid apart.
    #[serde(skip)]
    start_ticks: u64,
}

/// Everything the observer saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Per agent: (time, revision) at every change, 0s skipped (an agent that has not loaded
    /// its view yet acts on nothing, not on an older view).
    pub revisions: BTreeMap<String, Vec<(u64, u64)>>,
    pub regressions: Vec<Regression>,
    pub workloads: Vec<Workload>,
    /// Agents removed from the cluster: their view is wiped, so revisions are not followed.
    pub removed: BTreeSet<String>,
    /// The latest readable `status.json` of each agent.
    #[serde(skip)]
    pub latest: BTreeMap<String, AgentStatusFile>,
    /// Samples taken.
    pub samples: u64,
    /// When the latest sample was taken.
    pub last_sample_ms: u64,
}

impl History {
    /// Workloads of `node` still alive at the last sample.
    pub fn alive_on(&self, node: &str) -> Vec<&Workload> {
        self.workloads
            .iter()
            .filter(|w| w.node == node && w.died_ms.is_none())
            .collect()
    }

    /// Takes one sample of `node`'s status (already read) at `t_ms`.
    pub fn record_status(&mut self, node: &str, t_ms: u64, status: AgentStatusFile) {
        if status.revision > 0 && !self.removed.contains(node) {
            let series = self.revisions.entry(node.to_owned()).or_default();
            match series.last() {
                Some(&(_, last)) if status.revision < last => {
                    self.regressions.push(Regression {
                        node: node.to_owned(),
                        t_ms,
                        from: last,
                        to: status.revision,
                    });
                    series.push((t_ms, status.revision));
                }
                Some(&(_, last)) if status.revision == last => {}
                _ => series.push((t_ms, status.revision)),
            }
        }
        for replica in &status.replicas {
            let Some(pid) = replica.pid else { continue };
            let known = self
                .workloads
                .iter()
                .any(|w| w.node == node && w.pid == pid && w.died_ms.is_none());
            if known {
                continue;
            }
            // A pid the status names but that is gone already is not a workload we saw.
            let Some(start_ticks) = proc_start_ticks(pid) else {
                continue;
            };
            self.workloads.push(Workload {
                node: node.to_owned(),
                replica: replica.replica.to_string(),
                service: replica.replica.service.to_string(),
                pid,
                first_seen_ms: t_ms,
                last_alive_ms: t_ms,
                died_ms: None,
                start_ticks,
            });
        }
        self.latest.insert(node.to_owned(), status);
    }

    /// Checks every workload believed alive against `/proc`.
    pub fn check_processes(&mut self, t_ms: u64) {
        for workload in self.workloads.iter_mut().filter(|w| w.died_ms.is_none()) {
            if proc_start_ticks(workload.pid) == Some(workload.start_ticks) {
                workload.last_alive_ms = t_ms;
            } else {
                workload.died_ms = Some(t_ms);
            }
        }
    }
}

/// The start time of a live (not zombie) process, from `/proc/<pid>/stat`.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is the state (field 3); start time is field 22.
    if matches!(fields.first(), Some(&"Z" | &"X" | &"x")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The running observer.
#[derive(Debug)]
pub struct Observer {
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    /// Starts watching `agents`; times are milliseconds since `epoch`.
    pub fn start(agents: Vec<Watched>, epoch: Instant) -> Observer {
        let history = Arc::new(Mutex::new(History::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let history = history.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("observer".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        sample(&agents, epoch, &history);
                        std::thread::sleep(SAMPLE_EVERY);
                    }
                })
                .ok()
        };
        if thread.is_none() {
            tracing::error!("cannot start the observer thread; nothing will be observed");
        }
        Observer {
            history,
            stop,
            thread,
        }
    }

    /// Samples right now (on the caller's thread), so a check sees the latest state.
    pub fn sample_now(&self, agents: &[Watched], epoch: Instant) {
        sample(agents, epoch, &self.history);
    }

    /// Runs `f` on the history as it is now.
    pub fn with<T>(&self, f: impl FnOnce(&mut History) -> T) -> T {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut history)
    }

    /// Stops the thread and returns what it saw.
    pub fn finish(mut self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.with(|h| h.clone())
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn sample(agents: &[Watched], epoch: Instant, history: &Mutex<History>) {
    // The whole sample under the lock: a sample from the runner's thread and one from the
    // observer's must not interleave, or an older status could land after a newer one.
    let mut history = history.lock().unwrap_or_else(PoisonError::into_inner);
    let t_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let statuses: Vec<(String, Option<AgentStatusFile>)> = agents
        .iter()
        .map(|agent| {
            let status = std::fs::read(agent.data_dir.join("status.json"))
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            (agent.name.clone(), status)
        })
        .collect();
    history.samples += 1;
    history.last_sample_ms = t_ms;
    history.check_processes(t_ms);
    for (name, status) in statuses {
        if let Some(status) = status {
            history.record_status(&name, t_ms, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(revision: u64, replicas: &[(&str, u32)]) -> AgentStatusFile {
        AgentStatusFile {
            revision,
            agent_pid: 1,
            link: LinkFile {
                connected: true,
                revision,
                control_revision: revision,
            },
            replicas: replicas
                .iter()
                .map(|(id, pid)| ReplicaFile {
                    replica: id.parse().expect("replica id"),
                    state: "running".into(),
                    pid: Some(*pid),
                })
                .collect(),
        }
    }

    #[test]
    fn revisions_that_go_back_are_caught_and_zero_is_not_a_view() {
        let mut history = History::default();
        history.record_status("a-1", 10, status(3, &[]));
        history.record_status("a-1", 20, status(0, &[]));
        history.record_status("a-1", 30, status(5, &[]));
        history.record_status("a-1", 40, status(5, &[]));
        assert!(history.regressions.is_empty());
        history.record_status("a-1", 50, status(4, &[]));
        assert_eq!(
            history.regressions,
            [Regression {
                node: "a-1".into(),
                t_ms: 50,
                from: 5,
                to: 4
            }]
        );
        assert_eq!(history.revisions["a-1"], [(10, 3), (30, 5), (50, 4)]);
        history.removed.insert("a-2".into());
        history.record_status("a-2", 60, status(9, &[]));
        history.record_status("a-2", 70, status(1, &[]));
        assert_eq!(
            history.regressions.len(),
            1,
            "removed nodes are not followed"
        );
    }

    #[test]
    fn a_workload_is_followed_until_its_process_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        let mut history = History::default();
        history.record_status("a-1", 10, status(1, &[("web.1", pid), ("web.2", u32::MAX)]));
        assert_eq!(
            history.workloads.len(),
            1,
            "a pid that is gone is never followed"
        );
        history.check_processes(20);
        assert_eq!(history.workloads[0].last_alive_ms, 20);
        assert_eq!(history.alive_on("a-1").len(), 1);
        child.kill().expect("kill");
        // A zombie is dead too (the kill lands asynchronously).
        let deadline = Instant::now() + Duration::from_secs(5);
        while history.workloads[0].died_ms.is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            history.check_processes(30);
        }
        assert_eq!(history.workloads[0].died_ms, Some(30));
        child.wait().expect("reap");
        history.check_processes(40);
        assert_eq!(history.workloads[0].died_ms, Some(30), "first time gone");
        assert_eq!(history.workloads[0].service, "web");
        assert!(history.alive_on("a-1").is_empty());
    }
}
