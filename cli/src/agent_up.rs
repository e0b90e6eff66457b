//! `warren agent up --config FILE`: a box brought up from one config file, on every boot. A
//! data dir with no agent in it joins the cluster with the file's settings and runs in this
//! same process; a joined one runs from its data dir, as `agent run` with the file's settings
//! would. The token is read from the file's `token_file` (or `token`) only when joining: never
//! from the command line or the environment, never logged.
//!
//! What it must not do is hammer control or block the next boot: control that cannot be
//! reached is retried with capped, jittered backoff, but a refusal that retrying cannot change
//! (the token is invalid, used, expired or revoked; the server is another cluster) and a
//! config file that does not parse end with [`EXIT_PERMANENT`], the status the systemd unit's
//! `RestartPreventExitStatus=` names. A join interrupted after control admitted the box (a
//! crash or power loss before `agent.json` was written) is finished from the saved grant
//! ([`agent::finish_interrupted_join`]) rather than done again, which a single-use token
//! would refuse; what a join cut short before the grant was whole leaves is set aside
//! ([`set_aside_aborted_join`]) so that it cannot block the next attempt.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use warren_edge_agent::agent::{self, AgentError};
use warren_transport::Backoff;

use crate::agent_cmd::{self, JoinPlan};
use crate::agent_config::{AgentConfig, DEFAULT_AGENT_CONFIG};
use crate::control_cmd::{Signals, say};

/// `warren agent up`'s flags.
#[derive(Debug, clap::Args)]
pub struct UpFlags {
    /// The box's config file (YAML). Root-only (0600): it names the token file, or holds the
    /// token itself.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_AGENT_CONFIG)]
    pub config: PathBuf,
    /// Read and check the file, say whether the box would join or run, and exit: nothing is
    /// bound, no token read, control not asked.
    #[arg(long)]
    pub check: bool,
}

/// Exit status of a failure that starting again cannot mend: a config file that does not
/// parse, a join control refused for good. 78 is `EX_CONFIG` of sysexits.h; the unit's
/// `RestartPreventExitStatus=78` keeps systemd from starting the agent again and again.
pub const EXIT_PERMANENT: u8 = 78;

/// First delay between join attempts while control cannot be reached.
const JOIN_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between join attempts: a box that came up before its uplink joins within a
/// minute of the uplink's return.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(60);

/// Known files of a join that got through to control: credentials, the node secret key and
/// the cache (claimed for the node) — everything [`agent::join`] writes before `agent.json`.
const JOIN_FILES: [&str; 5] = ["node.crt", "node.key", "ca.crt", "secret.key", "cache"];

/// A failure that restarting cannot mend (in an error's chain; see [`exit_code`]).
#[derive(Debug)]
pub struct Permanent(String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Permanent {}

/// The exit status for `error`: [`EXIT_PERMANENT`] when its chain holds a [`Permanent`],
/// else 1.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    if error.chain().any(|cause| cause.is::<Permanent>()) {
        ExitCode::from(EXIT_PERMANENT)
    } else {
        ExitCode::FAILURE
    }
}

/// `error` marked [`Permanent`], as one line.
pub(crate) fn permanent(error: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(Permanent(crate::output::one_line(&error)))
}

/// Runs `warren agent up`.
///
/// # Errors
/// The file is unreadable or wrong ([`Permanent`]), the join was refused ([`Permanent`]), or
/// the agent failed.
pub fn run(flags: &UpFlags) -> Result<()> {
    let selfcheck = agent_cmd::selfcheck_knob()?;
    let config = AgentConfig::load(&flags.config).map_err(permanent)?;
    let in_file = |error: anyhow::Error| AgentConfig::error(&flags.config, &error);
    let joined = config.data_dir.join(agent::AGENT_FILE).exists();
    // What the file says is checked first, as a whole: a wrong value is permanent, unlike a
    // port still taken or a token file not there yet, which the checks below find.
    let checked =
        agent_cmd::check_join_flags(&config.join_flags()).map_err(|e| permanent(in_file(e)))?;
    warn_if_others_read_the_token(&flags.config, &config);
    if flags.check {
        return check(&config, &checked.name, joined);
    }
    if joined {
        let options = agent_cmd::run_options(&config.run_flags(), selfcheck).map_err(in_file)?;
        return agent_cmd::run_joined(options, config.data_dir);
    }
    let JoinPlan {
        data_dir,
        request,
        runtime,
        overlay,
        options,
    } = agent_cmd::join_plan(config.join_flags(), selfcheck).map_err(in_file)?;
    agent_cmd::foreground(options, || async move {
        let identity = match agent::finish_interrupted_join(&data_dir, request.clone()).await {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                set_aside_aborted_join(&data_dir)?;
                join_until_admitted(&data_dir, request).await?
            }
            Err(error) => {
                return Err(error)
                    .context("finish the join interrupted after control admitted this box");
            }
        };
        agent_cmd::keep_after_join(&data_dir, &identity, &runtime, &overlay)?;
        Ok(data_dir)
    })
}

/// Says so (once, at start) when the file that holds the token — the config file with a
/// `token:`, or `token_file` — can be read by users other than its owner: any of them could
/// join a node of their own with it.
fn warn_if_others_read_the_token(config_path: &Path, config: &AgentConfig) {
    use std::os::unix::fs::PermissionsExt;
    let holder = match (&config.token, &config.token_file) {
        (Some(_), _) => config_path,
        (None, Some(file)) => file.as_path(),
        (None, None) => return,
    };
    if let Ok(meta) = std::fs::metadata(holder)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            file = %holder.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the file holding the join token is readable by other users; chmod 0600 it"
        );
    }
}

/// `--check`'s answer, once the file passed the checks.
fn check(config: &AgentConfig, name: &str, joined: bool) -> Result<()> {
    let data_dir = config.data_dir.display();
    if joined {
        say(&format!(
            "ok: {data_dir} holds a joined agent; `up` runs it"
        ))
    } else {
        say(&format!(
            "ok: {data_dir} holds no agent; `up` joins {} as {name} (site {})",
            config.control.join(","),
            config.site.as_deref().unwrap_or("default")
        ))
    }
}

/// Whether another attempt at the same join may succeed: control was not reached, or said
/// "not now".
fn is_retryable(error: &AgentError) -> bool {
    match error {
        AgentError::NoControl(_) => true,
        AgentError::Join { source, .. } => source.is_retryable(),
        _ => false,
    }
}

/// Joins, trying again with capped jittered backoff while control cannot be reached (each
/// attempt logged, without the token). SIGTERM or SIGINT while waiting ends the process at
/// once: nothing was joined.
///
/// # Errors
/// A refusal ([`Permanent`]), or a data dir that cannot hold the agent.
async fn join_until_admitted(
    data_dir: &Path,
    request: agent::JoinRequest,
) -> Result<agent::AgentIdentity> {
    let mut signals = Signals::new()?;
    let mut backoff = Backoff::new(JOIN_RETRY_FIRST, JOIN_RETRY_MAX);
    let control = request.control_addrs.join(",");
    loop {
        // Not raced against signals: a join dropped half-way may leave half a data dir.
        let error = match agent::join(data_dir, request.clone()).await {
            Ok(identity) => return Ok(identity),
            Err(error) => error,
        };
        if !is_retryable(&error) {
            let refused = matches!(error, AgentError::Join { .. });
            let error = anyhow!(error).context(format!("join the cluster at {control}"));
            return Err(if refused {
                permanent(error.context(
                    "cannot join, and trying again will not help (a new token in the token file, or another name, will)",
                ))
            } else {
                error
            });
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            attempt = backoff.attempts(),
            control = %control,
            error = %error,
            retry_in_ms = delay.as_millis(),
            "cannot join yet; trying again"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            which = signals.next() => {
                say(&format!("stopped ({which}) before joining; nothing was joined"))?;
                // Nothing runs yet and nothing was written for the node: leave at once, with
                // the status of a clean stop.
                std::process::exit(0);
            }
        }
    }
}

/// Sets aside what a join cut short before its grant was whole left (a secret key without
/// credentials, half the credentials: see [`JOIN_FILES`]) in `DATA_DIR/aborted-join-SECS/`,
/// so that the next join starts clean instead of failing on leftovers. Kept, not deleted, for
/// the operator to look at; control then knows a node of that name that never ran, and says
/// so (`warren node rm` it).
///
/// # Errors
/// A file cannot be moved.
fn set_aside_aborted_join(data_dir: &Path) -> Result<()> {
    let left: Vec<&str> = JOIN_FILES
        .into_iter()
        .filter(|name| data_dir.join(name).exists())
        .collect();
    // A cache alone is what a join that never reached control leaves: harmless.
    if left.iter().all(|name| *name == "cache") {
        return Ok(());
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = data_dir.join(format!("aborted-join-{secs}"));
    std::fs::create_dir(&aside).with_context(|| format!("create {}", aside.display()))?;
    for name in &left {
        std::fs::rename(data_dir.join(name), aside.join(name)).with_context(|| {
            format!("move {name} of an interrupted join to {}", aside.display())
        })?;
    }
    tracing::warn!(
        moved_to = %aside.display(),
        "an earlier join was cut short after control admitted this box; its files are set aside and the box joins again (`warren node ls` may list the abandoned node: remove it with `warren node rm`)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aborted_join_is_set_aside_and_a_cache_alone_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cache")).unwrap();
        set_aside_aborted_join(dir.path()).unwrap();
        assert!(dir.path().join("cache").exists(), "a cache alone stays");
        std::fs::write(dir.path().join("node.crt"), "x").unwrap();
        set_aside_aborted_join(dir.path()).unwrap();
        assert!(!dir.path().join("node.crt").exists());
        assert!(!dir.path().join("cache").exists());
        let aside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn permanent_failures_have_their_own_exit_status() {
        let error = permanent(anyhow!("join refused")).context("up");
        assert_eq!(exit_code(&error), ExitCode::from(EXIT_PERMANENT));
        assert_eq!(exit_code(&anyhow!("other")), ExitCode::FAILURE);
    }
}
