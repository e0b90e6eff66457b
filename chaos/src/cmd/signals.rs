//! SIGINT, SIGTERM and SIGHUP: what stops a run, a fleet or a holder.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// Sets `cancel` on SIGINT, SIGTERM or SIGHUP (a thread with its own runtime), so a run
/// stops at its next check and tears its fleet down (or a holder lets its packets go);
/// `then` says what happens next, for the log.
pub(crate) fn watch_signals(cancel: Arc<AtomicBool>, then: &'static str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start async runtime")?;
    let mut signals = runtime.block_on(async { Signals::new() })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                loop {
                    let which = signals.next().await;
                    tracing::warn!("{which}: {then}");
                    cancel.store(true, Ordering::SeqCst);
                }
            });
        })
        .context("start the signal thread")?;
    Ok(())
}

/// SIGINT, SIGTERM and SIGHUP, whichever comes first.
pub(crate) struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("handle SIGHUP")?,
        })
    }

    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}
