//! Run ids, the name prefix, and the registry of runs that `cleanup` reads.
//!
//! Every namespace of a run is named `wchaos-<run id>-<what>`. The registry holds one small
//! JSON file per live run under [`REGISTRY_DIR`], written before anything is created, so a
//! harness that crashed (or was SIGKILLed) leaves a record naming its run dir and its pid.
//! Cleanup does not depend on it, though: it also scans `ip netns list` for the prefix.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Every object a run creates carries this prefix, then the run id and a dash.
pub const PREFIX: &str = "wchaos-";

/// Where runs are recorded (tmpfs: a reboot forgets them, as it forgets the namespaces).
pub const REGISTRY_DIR: &str = "/run/warren-chaos";

/// Six lowercase hex digits naming one run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(String);

impl RunId {
    /// A fresh random id.
    pub fn random() -> RunId {
        RunId(format!("{:06x}", fastrand::u32(..0x100_0000)))
    }

    /// Parses an id as printed by [`fmt::Display`].
    ///
    /// # Errors
    /// When `text` is not six lowercase hex digits.
    pub fn parse(text: &str) -> Result<RunId> {
        let ok = text.len() == 6
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            bail!("run id {text:?}: expected six lowercase hex digits");
        }
        Ok(RunId(text.to_owned()))
    }

    /// The run id of a namespace name this harness made, if it is one.
    pub fn of_name(name: &str) -> Option<RunId> {
        let rest = name.strip_prefix(PREFIX)?;
        let (id, tail) = rest.split_once('-')?;
        if tail.is_empty() {
            return None;
        }
        RunId::parse(id).ok()
    }

    /// `wchaos-<id>-`: what every name of this run starts with.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}-", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the registry remembers of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub run_id: String,
    /// The harness process; a run whose harness is alive is not cleaned up without `--force`.
    pub harness_pid: u32,
    pub run_dir: PathBuf,
}

impl RunRecord {
    fn path(registry: &Path, id: &RunId) -> PathBuf {
        registry.join(format!("{id}.json"))
    }

    /// Writes the record for `id`.
    ///
    /// # Errors
    /// When the registry dir cannot be created or written.
    pub fn save(&self, registry: &Path) -> Result<()> {
        std::fs::create_dir_all(registry)
            .with_context(|| format!("create the run registry {}", registry.display()))?;
        let id = RunId::parse(&self.run_id)?;
        let path = Self::path(registry, &id);
        let text = serde_json::to_string_pretty(self).context("encode the run record")?;
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    /// Removes the record of `id`, if any.
    ///
    /// # Errors
    /// When the file exists and cannot be removed.
    pub fn forget(registry: &Path, id: &RunId) -> Result<()> {
        let path = Self::path(registry, id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("remove {}", path.display())),
        }
    }

    /// Every readable record; unreadable files are reported and skipped.
    pub fn load_all(registry: &Path) -> Vec<RunRecord> {
        let Ok(entries) = std::fs::read_dir(registry) else {
            return Vec::new();
        };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .context("read")
                .and_then(|text| serde_json::from_str::<RunRecord>(&text).context("parse"));
            match parsed {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(path = %path.display(), error = %error, "skipping run record")
                }
            }
        }
        records
    }

    /// Whether the harness that made this run still lives (a `warren-chaos` with that pid).
    pub fn harness_alive(&self) -> bool {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.harness_pid));
        comm.is_ok_and(|c| c.trim().starts_with("warren-chaos"))
            && self.harness_pid != std::process::id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_round_trip_and_reject_junk() {
        let id = RunId::random();
        assert_eq!(RunId::parse(id.as_str()).expect("valid"), id);
        for bad in ["", "12345", "1234567", "ABCDEF", "12345g", "../../"] {
            assert!(RunId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_of_this_harness_are_recognised() {
        let check = |name: &str, expected: Option<&str>| {
            assert_eq!(
                RunId::of_name(name).as_ref().map(RunId::as_str),
                expected,
                "{name}"
            );
        };
        check("wchaos-0a1b2c-bridge", Some("0a1b2c"));
        check("wchaos-0a1b2c-a-1", Some("0a1b2c"));
        check("wchaos-0a1b2c-", None);
        check("wchaos-0a1b2-x", None);
        check("other-0a1b2c-x", None);
        check("wchaosx0a1b2c-x", None);
    }

    #[test]
    fn records_are_saved_listed_and_forgotten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let id = RunId::random();
        let record = RunRecord {
            run_id: id.to_string(),
            harness_pid: 1,
            run_dir: "/tmp/x".into(),
        };
        record.save(dir.path()).expect("save");
        let all = RunRecord::load_all(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].run_id, id.as_str());
        RunRecord::forget(dir.path(), &id).expect("forget");
        RunRecord::forget(dir.path(), &id).expect("forget twice");
        assert!(RunRecord::load_all(dir.path()).is_empty());
    }
}
