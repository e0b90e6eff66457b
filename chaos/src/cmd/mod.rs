//! The binary's subcommands, one file each (they are not part of the library).
//!
//! - [`up`]: bring a fleet up for a person and keep it until a signal.
//! - [`run`]: run scenario files and report on each.
//! - [`cleanup`]: remove what earlier runs left behind.
//! - [`delay_holder`]: the hidden packet holder of the `Delay` fault.
//! - [`signals`]: SIGINT, SIGTERM and SIGHUP, as a future or as a cancel flag.

pub(crate) mod cleanup;
pub(crate) mod delay_holder;
pub(crate) mod run;
pub(crate) mod signals;
pub(crate) mod up;
