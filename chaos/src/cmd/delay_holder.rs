//! `warren-chaos delay-holder`: the packet holder of the `Delay` fault, run inside a node's
//! namespace.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use warren_chaos::delay::{self, DelaySpec};

use super::signals::watch_signals;

/// `warren-chaos delay-holder`: holds queued packets until SIGTERM, then lets them all go.
pub(crate) fn delay_holder(queue: u16, spec: DelaySpec) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone(), "letting every held packet through")?;
    let stats = delay::run_holder(queue, spec, &stop)?;
    eprintln!(
        "delay-holder queue={queue} done: released {} on time, {} at once (over the bound), \
         {} early at the stop",
        stats.released, stats.overflowed, stats.flushed
    );
    Ok(())
}
