//! Reading `/proc`: a process's state, process group and start time, and the boot id.
//!
//! Parsing is separate from reading so that it can be tested on fixed input.

use std::io;
use std::path::Path;

/// The fields of `/proc/<pid>/stat` the runtime uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub(crate) state: char,
    /// Field 5: process group id.
    pub(crate) pgrp: i32,
    /// Field 22: start time in clock ticks since boot.
    pub(crate) start_time_ticks: u64,
}

impl ProcStat {
    /// Whether the process has exited (a zombie waiting to be reaped counts as exited).
    pub(crate) fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the content of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub(crate) fn parse_stat(content: &str) -> Option<ProcStat> {
    let after_comm = &content[content.rfind(')')? + 1..];
    // Fields from 3 on; field n is at index n - 3.
    let fields: Vec<&str> = after_comm.split_ascii_whitespace().collect();
    let mut state_chars = fields.first()?.chars();
    let state = state_chars.next()?;
    if state_chars.next().is_some() {
        return None;
    }
    Some(ProcStat {
        state,
        pgrp: fields.get(5 - 3)?.parse().ok()?,
        start_time_ticks: fields.get(22 - 3)?.parse().ok()?,
    })
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` when there is no such process.
pub(crate) fn read_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    read_stat_at(&Path::new("/proc").join(pid.to_string()).join("stat"))
}

fn read_stat_at(path: &Path) -> io::Result<Option<ProcStat>> {
    match std::fs::read_to_string(path) {
        Ok(content) => parse_stat(&content).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unparsable {}", path.display()),
            )
        }),
        // ESRCH shows up when the process exits between open and read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(3) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether some process other than a zombie is in process group `pgid`. Scans `/proc`, so
/// call it only after cheaper checks said the group may be non-empty.
pub(crate) fn group_has_live_member(pgid: u32) -> io::Result<bool> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Ok(false);
    };
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        // A process may exit while we scan; an unreadable entry is not a member.
        if let Ok(Some(stat)) = read_stat_at(&entry.path().join("stat"))
            && stat.pgrp == pgid
            && !stat.has_exited()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The current boot's id, from `/proc/sys/kernel/random/boot_id`.
pub(crate) fn boot_id() -> io::Result<String> {
    let content = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    Ok(content.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_fields() {
        fn check(input: &str, expected: Option<(char, i32, u64)>) {
            let got = parse_stat(input).map(|s| (s.state, s.pgrp, s.start_time_ticks));
            assert_eq!(got, expected, "{input}");
        }
        let tail = "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20";
        check(
            &format!("42 (sleep) S 1 42 {tail}"),
            // After the state: ppid=1, pgrp=42, then field 6 on; field 22 is the 17th of the
            // tail (fields 6..=25 are 1..=20).
            Some(('S', 42, 17)),
        );
        check(&format!("7 (a b) (c)) Z 1 9 {tail}"), Some(('Z', 9, 17)));
        check("42 (sleep) S 1 42", None);
        check("garbage", None);
        check(&format!("42 (x) SS 1 42 {tail}"), None);
    }

    #[test]
    fn reads_own_stat_and_boot_id() {
        let stat = read_stat(std::process::id()).unwrap().unwrap();
        assert!(!stat.has_exited());
        assert!(stat.start_time_ticks > 0);
        assert_eq!(boot_id().unwrap().len(), 36);
        assert_eq!(read_stat(u32::MAX).unwrap(), None);
    }
}
