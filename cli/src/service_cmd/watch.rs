//! Watching a write roll out: `service update`, `scale`, `rollback` and `apply` follow the
//! service until every replica runs the version written, the rollout stops (paused, rolled
//! back) or nothing has moved for [`STALL_LIMIT`], with a line each time something moves, as
//! `docker service update` does. `--detach` skips all this.
//!
//! A replica whose node is cut off does not hold the command forever: once every other
//! replica runs the version, the watch ends, naming those replicas `pending: node
//! unreachable` (their agents pick the version up when they reconnect).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use warren_api::rest::{ReplicaInfo, RolloutInfo, ServiceInfo};
use warren_api::routes::Route;

use crate::client::Client;
use crate::output::OutputFormat;

/// How often the service is read while watching.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// How long the watch waits without any change before giving up (the rollout goes on).
const STALL_LIMIT: Duration = Duration::from_secs(180);

/// Where the service stands, reduced to what the watch prints and decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The version every replica should end up running.
    pub(crate) version: u64,
    /// Replicas control has placed.
    pub(crate) total: usize,
    /// Of those, on `version`.
    pub(crate) updated: usize,
    /// Of those, reported running (and healthy, when the service has a check).
    pub(crate) running: usize,
    /// Replicas on `version` reported failed, with the agent's words (`web.0 on edge-1: …`).
    pub(crate) failed: Vec<String>,
    /// Replicas whose node is cut off (`web.2 on edge-3`).
    pub(crate) unreachable: Vec<String>,
    /// The rollout as control tells it, when one is on or just ended.
    pub(crate) rollout: Option<(String, String)>,
    /// Replicas no node can take, and why.
    pub(crate) pending: Option<String>,
}

/// How a watch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Every reachable replica runs the version.
    Converged,
    /// The rollout stopped short; the words say how.
    Stopped(String),
}

impl Progress {
    /// Reads `info` and its `replicas` against the `version` written.
    pub(crate) fn of(info: &ServiceInfo, replicas: &[ReplicaInfo], version: u64) -> Progress {
        let checked = info.spec.health.is_some();
        let on_version: Vec<&ReplicaInfo> = replicas
            .iter()
            .filter(|r| r.service_version == version)
            .collect();
        let where_ = |r: &ReplicaInfo| format!("{} on {}", r.id, r.node_name);
        Progress {
            version,
            total: replicas.len(),
            updated: on_version.len(),
            running: on_version
                .iter()
                .filter(|r| r.state == "running" && (!checked || r.health == "healthy"))
                .count(),
            failed: on_version
                .iter()
                .filter(|r| matches!(r.state.as_str(), "failed" | "rejected"))
                .map(|r| match &r.message {
                    Some(message) => format!("{}: {message}", where_(r)),
                    None => where_(r),
                })
                .collect(),
            unreachable: replicas
                .iter()
                .filter(|r| r.node_state == "unreachable" || r.stale)
                .map(where_)
                .collect(),
            rollout: info
                .rollout
                .as_ref()
                .map(|r: &RolloutInfo| (r.state.clone(), r.message.clone())),
            pending: super::pending_text(info),
        }
    }

    /// The line printed when this differs from what was printed last.
    pub(crate) fn line(&self, name: &str) -> String {
        let mut line = format!(
            "{name}: version {}: {}/{} updated, {} running",
            self.version, self.updated, self.total, self.running
        );
        if !self.failed.is_empty() {
            line.push_str(&format!(", {} failed", self.failed.len()));
        }
        if !self.unreachable.is_empty() {
            line.push_str(&format!(
                ", {} on unreachable nodes",
                self.unreachable.len()
            ));
        }
        if let Some((state, message)) = &self.rollout {
            line.push_str(&format!(" [{state}]"));
            if !message.is_empty() {
                line.push_str(&format!(" {message}"));
            }
        }
        line
    }

    /// `Some` once the watch can end: everything reachable runs the version, or the rollout
    /// stopped.
    pub(crate) fn end(&self) -> Option<End> {
        if let Some((state, message)) = &self.rollout {
            // Control's message says it in full (`paused: web.1 on edge-1 failed: …`, `rolled
            // back from version 2: …`); the state alone when it has none.
            let said = |fallback: &str| {
                Some(End::Stopped(if message.is_empty() {
                    fallback.to_owned()
                } else {
                    message.clone()
                }))
            };
            match state.as_str() {
                "paused" => return said("rollout paused"),
                "rolled_back" => return said("rolled back"),
                "updating" | "rolling_back" => return None,
                _ => {}
            }
        }
        let reachable = self.total - self.unreachable.len();
        if self.running < reachable {
            return None;
        }
        if let Some(pending) = &self.pending {
            return Some(End::Stopped(pending.clone()));
        }
        Some(End::Converged)
    }
}

/// Reads service `name` and its replicas.
async fn read(client: &Client, name: &str) -> Result<(ServiceInfo, Vec<ReplicaInfo>)> {
    let info: ServiceInfo = client
        .request(Route::GetService { service: name })
        .await?
        .json()?;
    let replicas: Vec<ReplicaInfo> = client
        .request(Route::ServiceReplicas { service: name })
        .await?
        .json()?;
    Ok((info, replicas))
}

/// Follows service `name` until every reachable replica runs `version` (Ok), or the rollout
/// stops, someone else changes the service, or nothing moves for [`STALL_LIMIT`] (an error
/// saying which). Progress lines go to stdout, or stderr under `-o json` (whose stdout is the
/// write's JSON).
///
/// # Errors
/// As above, and when control cannot be read.
pub(crate) async fn follow(
    client: &Client,
    format: OutputFormat,
    name: &str,
    version: u64,
) -> Result<()> {
    let began = Instant::now();
    let mut last_change = Instant::now();
    let mut printed = String::new();
    loop {
        let (info, replicas) = read(client, name).await?;
        let rolling_back = info
            .rollout
            .as_ref()
            .is_some_and(|r| matches!(r.state.as_str(), "rolling_back" | "rolled_back"));
        if info.version != version && !rolling_back {
            bail!(
                "service {name} is now at version {} (changed by someone else while this \
                 rollout ran); stopped watching",
                info.version
            );
        }
        let progress = Progress::of(&info, &replicas, info.version);
        let line = progress.line(name);
        if line != printed {
            say(format, &line);
            printed = line;
            last_change = Instant::now();
        }
        match progress.end() {
            Some(End::Converged) => {
                let mut done = format!(
                    "{name}: version {} runs on {}/{} replicas ({:.1} s)",
                    progress.version,
                    progress.running,
                    progress.total,
                    began.elapsed().as_secs_f64()
                );
                if !progress.unreachable.is_empty() {
                    done.push_str(&format!(
                        "; pending: node unreachable: {} (they update when their node \
                         reconnects)",
                        progress.unreachable.join(", ")
                    ));
                }
                say(format, &done);
                return Ok(());
            }
            Some(End::Stopped(why)) => bail!("service {name}: {why}"),
            None => {}
        }
        if last_change.elapsed() >= STALL_LIMIT {
            let mut why = format!(
                "service {name}: no progress for {}s; the rollout goes on (watch it with \
                 `warren service ps {name}`)",
                STALL_LIMIT.as_secs()
            );
            if let Some(failed) = progress.failed.first() {
                why.push_str(&format!("; last failure: {failed}"));
            }
            bail!(why);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn say(format: OutputFormat, line: &str) {
    match format {
        OutputFormat::Table => crate::output::out(&format!("{line}\n")),
        OutputFormat::Json => eprintln!("{line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            version: 3,
            total: 3,
            updated: 3,
            running: 3,
            failed: vec![],
            unreachable: vec![],
            rollout: None,
            pending: None,
        }
    }

    #[test]
    fn a_watch_ends_when_every_reachable_replica_runs_the_version() {
        assert_eq!(progress().end(), Some(End::Converged));
        let halfway = Progress {
            updated: 2,
            running: 1,
            rollout: Some(("updating".into(), String::new())),
            ..progress()
        };
        assert_eq!(halfway.end(), None);
        assert_eq!(
            halfway.line("web"),
            "web: version 3: 2/3 updated, 1 running [updating]"
        );
        let cut_off = Progress {
            running: 2,
            unreachable: vec!["web.2 on edge-3".into()],
            ..progress()
        };
        assert_eq!(cut_off.end(), Some(End::Converged));
        assert!(cut_off.line("web").ends_with(", 1 on unreachable nodes"));
    }

    #[test]
    fn a_stopped_rollout_or_pending_replicas_end_the_watch_with_the_reason() {
        let paused = Progress {
            running: 1,
            failed: vec!["web.0 on edge-1: command not found: /nope".into()],
            rollout: Some(("paused".into(), "paused: web.0 on edge-1 failed".into())),
            ..progress()
        };
        assert_eq!(
            paused.end(),
            Some(End::Stopped("paused: web.0 on edge-1 failed".into()))
        );
        let rolled_back = Progress {
            rollout: Some(("rolled_back".into(), "rolled back from version 2: …".into())),
            ..progress()
        };
        assert_eq!(
            rolled_back.end(),
            Some(End::Stopped("rolled back from version 2: …".into()))
        );
        let silent = Progress {
            rollout: Some(("paused".into(), String::new())),
            ..progress()
        };
        assert_eq!(silent.end(), Some(End::Stopped("rollout paused".into())));
        let rolling_back = Progress {
            rollout: Some(("rolling_back".into(), String::new())),
            ..progress()
        };
        assert_eq!(rolling_back.end(), None);
        let pending = Progress {
            pending: Some("1 replica pending: no node in site madrid".into()),
            ..progress()
        };
        assert_eq!(
            pending.end(),
            Some(End::Stopped(
                "1 replica pending: no node in site madrid".into()
            ))
        );
    }
}
