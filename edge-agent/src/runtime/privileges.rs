//! What a workload's process does between `fork` and `exec`: take its resolver file (in a
//! mount namespace of its own), become its user, and keep only its capabilities, with
//! `no_new_privs` so that no setuid binary or file capability gives any back.
//!
//! Everything is decided before the fork ([`ChildSetup`]); the child only makes system calls
//! (rustix's raw wrappers: no allocation, no lock, async-signal-safe), in this order:
//!
//! 1. mounts: `unshare(CLONE_NEWNS)`, mounts made private, the agent's resolv.conf bound
//!    over `/etc/resolv.conf`, each read-only volume bound read-only over itself (needs root,
//!    so before the switch);
//! 2. the bounding set loses every capability not kept (needs CAP_SETPCAP, so before the
//!    switch), so that no exec can bring one back;
//! 3. `PR_SET_KEEPCAPS`, then `setgroups`, `setresgid`, `setresuid`: the user's ids, with the
//!    permitted set kept across the switch;
//! 4. `capset`: permitted = effective = inheritable = the kept capabilities (those the agent
//!    has), then the ambient set raised to them: a non-root uid keeps them across `exec`;
//! 5. `PR_SET_NO_NEW_PRIVS`.
//!
//! The working directory is entered by `std` before this runs (as the agent), the log files
//! are opened by the agent before the fork: neither needs the workload to reach them by path.
//! An agent that is not root skips 1 to 3 (it cannot), and with nothing to keep, step 4 drops
//! whatever the agent had.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags};
use rustix::process::{Gid, Uid};
use rustix::thread::{CapabilitySet, CapabilitySets, UnshareFlags};

use super::credentials::{ALL_CAPABILITIES, Credentials};

/// Where the resolver override is bound.
const RESOLV_CONF_TARGET: &std::ffi::CStr = c"/etc/resolv.conf";

/// Capability numbers tried when dropping from the bounding set; the kernel says EINVAL past
/// its last one.
const CAPABILITY_NUMBERS: std::ops::Range<u32> = 0..64;

/// Everything the child does before `exec`, computed before the fork.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    /// The file to bind over `/etc/resolv.conf` in a mount namespace of the workload's own.
    resolv_conf: Option<CString>,
    /// Volume directories bound read-only over themselves in that namespace.
    read_only: Vec<CString>,
    /// The ids to switch to; `None` when the agent is not root.
    switch: Option<(Uid, Gid, Vec<Gid>)>,
    /// Capability bits to keep ([`ALL_CAPABILITIES`]: every one the agent has).
    keep: u64,
    /// Whether the agent may change the bounding set (it is root).
    drop_bounding: bool,
}

impl ChildSetup {
    /// The setup for a workload that runs as `credentials`, with `resolv_conf` bound over the
    /// host's when given and `read_only` directories made read-only (the caller gives either
    /// only to an agent running as root).
    ///
    /// # Errors
    /// A path with a NUL byte.
    pub(crate) fn new(
        credentials: &Credentials,
        resolv_conf: Option<&Path>,
        read_only: &[PathBuf],
    ) -> io::Result<Self> {
        let c_path = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let resolv_conf = resolv_conf.map(c_path).transpose()?;
        let read_only = read_only
            .iter()
            .map(|p| c_path(p))
            .collect::<io::Result<Vec<_>>>()?;
        let switch = credentials.switched.then(|| {
            (
                Uid::from_raw(credentials.uid),
                Gid::from_raw(credentials.gid),
                credentials
                    .groups
                    .iter()
                    .map(|g| Gid::from_raw(*g))
                    .collect(),
            )
        });
        Ok(ChildSetup {
            resolv_conf,
            read_only,
            switch,
            keep: credentials.capabilities,
            drop_bounding: credentials.switched,
        })
    }

    /// Whether the workload needs a mount namespace of its own (step 1).
    fn own_mounts(&self) -> bool {
        self.resolv_conf.is_some() || !self.read_only.is_empty()
    }

    /// Steps 1 (after the `unshare`) to 5 of the module docs, in the child. Makes system calls
    /// only.
    fn apply(&self) -> io::Result<()> {
        if self.own_mounts() {
            rustix::mount::mount_change(
                c"/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )?;
        }
        if let Some(resolv) = &self.resolv_conf {
            rustix::mount::mount_bind(resolv.as_c_str(), RESOLV_CONF_TARGET)?;
        }
        for dir in &self.read_only {
            // A bind mount takes its flags only from a remount of itself.
            rustix::mount::mount_bind(dir.as_c_str(), dir.as_c_str())?;
            rustix::mount::mount_remount(
                dir.as_c_str(),
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                c"",
            )?;
        }
        if self.drop_bounding && self.keep != ALL_CAPABILITIES {
            for number in CAPABILITY_NUMBERS.filter(|n| self.keep & (1 << n) == 0) {
                let capability = CapabilitySet::from_bits_retain(1 << number);
                match rustix::thread::remove_capability_from_bounding_set(capability) {
                    Ok(()) => {}
                    // Past the kernel's last capability.
                    Err(rustix::io::Errno::INVAL) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if let Some((uid, gid, groups)) = &self.switch {
            rustix::thread::set_keep_capabilities(true)?;
            rustix::thread::set_thread_groups(groups)?;
            rustix::thread::set_thread_res_gid(*gid, *gid, *gid)?;
            rustix::thread::set_thread_res_uid(*uid, *uid, *uid)?;
        }
        let had = rustix::thread::capabilities(None)?.permitted;
        let keep = had & CapabilitySet::from_bits_retain(self.keep);
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: keep,
                permitted: keep,
                inheritable: keep,
            },
        )?;
        rustix::thread::clear_ambient_capability_set()?;
        for number in CAPABILITY_NUMBERS.filter(|n| keep.bits() & (1 << n) != 0) {
            let capability = CapabilitySet::from_bits_retain(1 << number);
            rustix::thread::configure_capability_in_ambient_set(capability, true)?;
        }
        rustix::thread::set_no_new_privs(true)?;
        Ok(())
    }
}

/// Makes `command`'s child run `setup` before it executes the workload.
///
/// The only `unsafe` of the agent: `pre_exec` runs a closure in the forked child, where only
/// async-signal-safe calls are sound.
#[allow(unsafe_code)]
pub(crate) fn install(command: &mut std::process::Command, setup: ChildSetup) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where the parent's other
    // threads do not exist and their locks may be held forever: it must not allocate, lock or
    // touch shared state. It only reads `setup` (moved in, allocated before the fork) and makes
    // raw system calls through rustix, which neither allocates nor locks (paths are `CStr`s
    // built before the fork, errors are `Errno` values). `unshare(CLONE_NEWNS)` is unsafe in
    // rustix for CLONE_FILES, which is not asked for; the child has one thread, whose mount
    // namespace alone changes.
    unsafe {
        command.pre_exec(move || {
            if setup.own_mounts() {
                rustix::thread::unshare_unsafe(UnshareFlags::NEWNS)?;
            }
            setup.apply()
        });
    }
}
