//! `warren-chaos cleanup`: what earlier runs left behind, crashed ones too.

use std::path::PathBuf;

use anyhow::Result;
use warren_chaos::netns;
use warren_chaos::preflight;
use warren_chaos::run::{PREFIX, REGISTRY_DIR, RunId, RunRecord};

/// Removes runs' namespaces (and so their links and processes): recorded runs first, then any
/// namespace with the prefix that no record names (a run whose record was lost).
pub(crate) fn cleanup(only: Option<&str>, force: bool) -> Result<()> {
    if !preflight::on_path("ip") {
        anyhow::bail!("`ip` not found: install the iproute2 package");
    }
    let only = only.map(RunId::parse).transpose()?;
    let registry = PathBuf::from(REGISTRY_DIR);
    let records = RunRecord::load_all(&registry);
    let mut live = Vec::new();
    let mut runs: Vec<RunId> = Vec::new();
    for record in &records {
        let Ok(id) = RunId::parse(&record.run_id) else {
            continue;
        };
        if record.harness_alive() && !force {
            live.push(id);
        } else {
            runs.push(id);
        }
    }
    for name in netns::list_namespaces()? {
        if let Some(id) = RunId::of_name(&name)
            && !live.contains(&id)
            && !runs.contains(&id)
        {
            runs.push(id);
        }
    }
    for id in &live {
        if only.as_ref().is_none_or(|o| o == id) {
            say!("run {id}: its harness is still running; skipped (stop it, or pass --force)");
        }
    }
    let mut failed = 0;
    for id in runs
        .iter()
        .filter(|id| only.as_ref().is_none_or(|o| o == *id))
    {
        match netns::remove_namespaces(&id.prefix()) {
            Ok(removed) => {
                // Killed with its namespaces, a run's containerds leave their containers'
                // mounts and runc state behind.
                if let Some(record) = records.iter().find(|r| r.run_id == id.as_str()) {
                    warren_chaos::fleet::forget_containers(&record.run_dir)?;
                }
                RunRecord::forget(&registry, id)?;
                say!("run {id}: removed {} namespaces", removed.len());
            }
            Err(error) => {
                failed += 1;
                eprintln!("run {id}: {error:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} runs could not be cleaned up");
    }
    if runs.is_empty() && live.is_empty() {
        say!("nothing to clean up (no {PREFIX}* namespaces, no recorded runs)");
    }
    Ok(())
}
