//! Keeping `admin.conf`'s `api` list current with the control plane's members, so that a client
//! can fail over to any control node, including ones that joined after the file was written.
//!
//! Every API answer names the members' API addresses (`warren_api::rest::MEMBERS_HEADER`); a
//! running init node sees membership changes directly. Both feed a [`Sighting`] to
//! [`merged`], the pure rule that decides the new list, and [`update_file`] rewrites the file:
//!
//! - Addresses are added from any answer the client can trust to come from this cluster.
//! - An address is dropped only when the answering node had just proven itself caught up with
//!   the leader (a successful linearizable read), so that a node that lags behind cannot drop a
//!   member it has not heard of yet; and only when the address the client dialled is itself one
//!   the cluster advertises — otherwise the client reaches the cluster by another name (a load
//!   balancer, NAT, an alias) and the advertised addresses may not work from here.
//! - `unix:` entries are kept: they are local sockets, not members' addresses.
//! - The list never becomes empty.
//!
//! The file is rewritten atomically (temporary file, fsync, rename, fsync of the directory),
//! changing only the `api` list: every other line, comments included, stays as it was. A file
//! without the owner's write permission is left alone, and so is one this process could only
//! replace by changing its owner.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use warren_api::rest::{MAX_MEMBERS_HEADER, MAX_MEMBERS_HEADER_BYTES, MEMBERS_HEADER};

use crate::client::Target;
use crate::config::{AdminConfig, MAX_ADMIN_CONF_BYTES, read_bounded};

/// What one look at the control plane said about its members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// The members' API addresses (`HOST:PORT`), as the answering node knows them.
    pub members: Vec<String>,
    /// The address that answered, as the client dialled it (`HOST:PORT` or `unix:PATH`).
    pub answered: String,
    /// Whether the answering node had just proven itself caught up with the leader, so that
    /// its membership is current and may drop addresses.
    pub current: bool,
}

/// Parses a [`MEMBERS_HEADER`] value: comma-separated `HOST:PORT` addresses, duplicates
/// removed.
///
/// # Errors
/// A value over the size or count limits, or an entry that is not `HOST:PORT`.
pub fn parse_members(value: &str) -> Result<Vec<String>> {
    if value.len() > MAX_MEMBERS_HEADER_BYTES {
        bail!("{MEMBERS_HEADER}: longer than {MAX_MEMBERS_HEADER_BYTES} bytes");
    }
    let mut members: Vec<String> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match Target::parse(entry) {
            Ok(Target::Tls(addr)) => {
                if !members.contains(&addr) {
                    members.push(addr);
                }
            }
            _ => bail!("{MEMBERS_HEADER}: {entry:?} is not HOST:PORT"),
        }
    }
    if members.len() > MAX_MEMBERS_HEADER {
        bail!("{MEMBERS_HEADER}: more than {MAX_MEMBERS_HEADER} addresses");
    }
    Ok(members)
}

/// The `api` list after `sighting`, or `None` when it stays as it is (see the module doc for
/// the rule). Kept entries keep their order (an operator may have put the nearest node first);
/// new members follow in the order given.
pub fn merged(api: &[String], sighting: &Sighting) -> Option<Vec<String>> {
    if sighting.members.is_empty() {
        return None;
    }
    let vouched = sighting.members.contains(&sighting.answered);
    let may_drop = sighting.current && vouched;
    let mut next: Vec<String> = Vec::with_capacity(api.len() + sighting.members.len());
    for entry in api {
        let keep = !may_drop || entry.starts_with("unix:") || sighting.members.contains(entry);
        if keep && !next.contains(entry) {
            next.push(entry.clone());
        }
    }
    for member in &sighting.members {
        if !next.contains(member) {
            next.push(member.clone());
        }
    }
    (!next.is_empty() && next != api).then_some(next)
}

/// What [`update_file`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Updated {
    /// The file now lists these addresses.
    Rewritten(Vec<String>),
    /// The list was already right.
    Unchanged,
    /// The file was left alone, for the reason given (read-only, another owner, …).
    LeftAlone(&'static str),
}

/// Applies `sighting` to the admin config at `path` (a symlink is followed: its target is
/// rewritten). The file is read again here, so that an edit made since it was loaded is kept.
///
/// # Errors
/// I/O errors, or a file that no longer parses or now belongs to another cluster (it is then
/// not touched).
pub fn update_file(path: &Path, sighting: &Sighting, fingerprint: &str) -> Result<Updated> {
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("resolve admin config {}", path.display()))?;
    let metadata = std::fs::metadata(&real).with_context(|| format!("stat {}", real.display()))?;
    if metadata.permissions().mode() & 0o200 == 0 {
        return Ok(Updated::LeftAlone("the file is read-only"));
    }
    let text = read_bounded(&real, MAX_ADMIN_CONF_BYTES)
        .with_context(|| format!("read admin config {}", real.display()))?;
    let config =
        AdminConfig::parse(&text).with_context(|| format!("admin config {}", real.display()))?;
    if !config
        .fingerprint
        .trim()
        .eq_ignore_ascii_case(fingerprint.trim())
    {
        bail!(
            "{} now belongs to another cluster; its addresses are not updated",
            real.display()
        );
    }
    let Some(api) = merged(&config.api, sighting) else {
        return Ok(Updated::Unchanged);
    };
    let new_text = with_api(&text, &config, &api)?;
    match replace_file(&real, &metadata, new_text.as_bytes())? {
        Some(reason) => Ok(Updated::LeftAlone(reason)),
        None => Ok(Updated::Rewritten(api)),
    }
}

/// `text` with its `api` list replaced by `api`, every other line unchanged; when the file's
/// layout defeats that (checked by parsing the result), the whole config re-encoded instead,
/// which keeps every field but not the comments.
///
/// # Errors
/// Only if the config cannot be encoded at all.
pub fn with_api(text: &str, config: &AdminConfig, api: &[String]) -> Result<String> {
    let mut wanted = config.clone();
    wanted.api = api.to_vec();
    if let Some(spliced) = splice_api(text, api)?
        && AdminConfig::parse(&spliced).is_ok_and(|parsed| parsed == wanted)
    {
        return Ok(spliced);
    }
    wanted.to_text()
}

/// Replaces the top-level `api:` entry (its line and the indented or `-` lines under it).
/// `None` when there is no such entry.
fn splice_api(text: &str, api: &[String]) -> Result<Option<String>> {
    #[derive(Serialize)]
    struct ApiOnly<'a> {
        api: &'a [String],
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(start) = lines.iter().position(|line| {
        line.strip_prefix("api")
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    }) else {
        return Ok(None);
    };
    let end = lines[start + 1..]
        .iter()
        .position(|line| !(line.starts_with([' ', '\t', '-'])))
        .map_or(lines.len(), |n| start + 1 + n);
    let replacement = serde_norway::to_string(&ApiOnly { api }).context("encode the api list")?;
    let mut spliced: String = lines[..start].concat();
    spliced.push_str(&replacement);
    spliced.push_str(&lines[end..].concat());
    Ok(Some(spliced))
}

/// Atomically replaces `path` with `bytes`, keeping the old file's mode and owner. Returns why
/// it did nothing, if it did nothing.
fn replace_file(
    path: &Path,
    old: &std::fs::Metadata,
    bytes: &[u8],
) -> Result<Option<&'static str>> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name of its own per writer: two commands updating the file at once must not write into
    // each other's temporary file.
    let mut temp = match tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
    {
        Ok(temp) => temp,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(Some("its directory is not writable"));
        }
        Err(error) if error.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
            return Ok(Some("it is on a read-only file system"));
        }
        Err(error) => {
            return Err(error).with_context(|| format!("create a file in {}", dir.display()));
        }
    };
    let mine = temp.as_file().metadata().context("stat the new file")?;
    if (mine.uid(), mine.gid()) != (old.uid(), old.gid())
        && std::os::unix::fs::fchown(temp.as_file(), Some(old.uid()), Some(old.gid())).is_err()
    {
        // Replacing it would hand another user's file to us.
        return Ok(Some("it belongs to another user"));
    }
    let mode = old.permissions().mode() & 0o7777;
    let file = temp.as_file_mut();
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .context("set the new file's mode")?;
    file.write_all(bytes).context("write the new file")?;
    file.sync_all().context("flush the new file")?;
    temp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("replace {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flush {}", dir.display()))?;
    Ok(None)
}

#[cfg(test)]
mod tests;
