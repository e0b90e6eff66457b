//! Delay and reorder without `sch_netem`: a program that holds packets in an NFQUEUE.
//!
//! Our machines have no `sch_netem`, so the `Delay` fault sends what a namespace sends
//! (output hook, loopback excepted) to an NFQUEUE ([`crate::firewall::Scope::Queue`]) and a
//! holder process inside the same namespace takes each packet, keeps it for `ms` ± uniform
//! random `jitter_ms`, and then lets it through. With jitter, a packet held for less overtakes
//! one held for more: that is the reordering.
//!
//! The parts:
//! - [`DelaySpec`]: the delay and its jitter, with their limits.
//! - [`HeldPackets`]: the sans-IO core. It takes `(now, packet)`, decides each packet's
//!   release time and hands packets back when they are due; a bounded number is held, beyond
//!   which a packet is handed back at once and counted.
//! - [`run_holder`]: the I/O loop of `warren-chaos delay-holder` around the core and the
//!   `nfq` crate.
//! - [`Holder`]: the harness's handle on one running holder process (start it inside a
//!   namespace, wait for its ready line, stop it).
//!
//! The queue is installed with `bypass`: when no holder listens (not started yet, crashed,
//! killed), packets pass undelayed instead of being dropped.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::Signal;

use crate::netns;

/// The longest delay a fault may ask for.
pub const MAX_DELAY_MS: u32 = 10_000;

/// How many packets a holder keeps at once; beyond that a packet passes at once (counted).
pub const MAX_HELD: usize = 10_000;

/// The kernel's queue length for the holder's queue: packets the kernel keeps while they
/// wait for a verdict, those the holder holds included. With fail-open set, a packet that
/// finds the queue full passes undelayed rather than being dropped.
const MAX_KERNEL_QUEUE: u32 = 12_000;

/// The longest the holder sleeps between looks at its queue: it bounds how late a new packet
/// is stamped and so how much longer than asked it may be held.
const MAX_POLL: Duration = Duration::from_micros(500);

/// How long the harness waits for a holder's ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a holder may take to release what it holds and exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The line a holder prints on stdout once its queue is bound.
pub const READY_LINE: &str = "delay-holder ready";

/// A delay of `ms` ± uniform random `jitter_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelaySpec {
    pub ms: u32,
    pub jitter_ms: u32,
}

impl DelaySpec {
    /// Checks 1 ≤ `ms` ≤ [`MAX_DELAY_MS`] and `jitter_ms` ≤ `ms`.
    ///
    /// # Errors
    /// Says which limit is broken.
    pub fn validate(self) -> Result<()> {
        if !(1..=MAX_DELAY_MS).contains(&self.ms) {
            bail!("delay of {} ms: use 1-{MAX_DELAY_MS} ms", self.ms);
        }
        if self.jitter_ms > self.ms {
            bail!(
                "jitter of {} ms exceeds the delay of {} ms: use jitter_ms <= ms \
                 (a packet cannot be held for less than no time)",
                self.jitter_ms,
                self.ms
            );
        }
        Ok(())
    }

    /// How long to hold one packet, with `draw` a uniform sample in `0..=2·jitter` µs.
    fn hold_for(self, draw: u64) -> Duration {
        let jitter_us = u64::from(self.jitter_ms) * 1000;
        let base_us = u64::from(self.ms) * 1000;
        // ms ≥ jitter_ms, so base - jitter ≥ 0.
        Duration::from_micros(base_us - jitter_us + draw.min(2 * jitter_us))
    }

    /// Arguments of `warren-chaos delay-holder` for this delay on queue `queue`.
    pub fn holder_args(self, queue: u16) -> Vec<String> {
        vec![
            "delay-holder".to_owned(),
            "--queue".to_owned(),
            queue.to_string(),
            "--ms".to_owned(),
            self.ms.to_string(),
            "--jitter-ms".to_owned(),
            self.jitter_ms.to_string(),
        ]
    }
}

/// One held packet with its release time; `seq` keeps packets due at the same instant in
/// arrival order.
#[derive(Debug)]
struct Held<T> {
    release: Instant,
    seq: u64,
    packet: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}

impl<T> Eq for Held<T> {}

impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Held<T> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest release must be on top.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// The holder's decisions, free of I/O: which packet leaves when.
#[derive(Debug)]
pub struct HeldPackets<T> {
    spec: DelaySpec,
    held_max: usize,
    heap: BinaryHeap<Held<T>>,
    rng: fastrand::Rng,
    seq: u64,
    /// Packets held and released on time.
    pub released: u64,
    /// Packets let through at once because `held_max` were already held.
    pub overflowed: u64,
}

impl<T> HeldPackets<T> {
    /// An empty holder for `spec`, keeping at most `held_max` packets, drawing jitter from
    /// `rng` (seeded in tests).
    pub fn new(spec: DelaySpec, held_max: usize, rng: fastrand::Rng) -> HeldPackets<T> {
        HeldPackets {
            spec,
            held_max,
            heap: BinaryHeap::new(),
            rng,
            seq: 0,
            released: 0,
            overflowed: 0,
        }
    }

    /// Takes `packet`, arrived at `now`. Returns it at once (to be let through now) when
    /// `held_max` packets are already held.
    pub fn hold(&mut self, now: Instant, packet: T) -> Option<T> {
        if self.heap.len() >= self.held_max {
            self.overflowed += 1;
            return Some(packet);
        }
        let jitter_us = u64::from(self.spec.jitter_ms) * 1000;
        let draw = if jitter_us == 0 {
            0
        } else {
            self.rng.u64(0..=2 * jitter_us)
        };
        self.seq += 1;
        self.heap.push(Held {
            release: now + self.spec.hold_for(draw),
            seq: self.seq,
            packet,
        });
        None
    }

    /// The next packet due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.release > now {
            return None;
        }
        self.released += 1;
        self.heap.pop().map(|held| held.packet)
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|held| held.release)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Every held packet, earliest release first, for letting all through at shutdown.
    pub fn drain(&mut self) -> Vec<T> {
        let mut all = Vec::with_capacity(self.heap.len());
        while let Some(held) = self.heap.pop() {
            all.push(held.packet);
        }
        all
    }
}

/// What a holder did, printed when it exits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HolderStats {
    pub released: u64,
    pub overflowed: u64,
    /// Packets let through early because the holder was stopped.
    pub flushed: u64,
}

/// The holder's loop: binds NFQUEUE `queue`, prints [`READY_LINE`] on stdout, holds every
/// packet per `spec` and accepts it when due, until `stop` is set; then accepts everything
/// still held and unbinds.
///
/// The `nfq` crate's socket is not exposed for `poll`, so the loop drains the queue without
/// blocking, releases what is due and sleeps until the next release or `MAX_POLL`,
/// whichever comes first. Only metadata is copied from the kernel (the holder never reads a
/// payload), which keeps each held packet's buffer small.
///
/// # Errors
/// When the queue cannot be opened or bound (another program holds it, or NFQUEUE is
/// missing), or a verdict cannot be sent.
pub fn run_holder(queue_num: u16, spec: DelaySpec, stop: &AtomicBool) -> Result<HolderStats> {
    spec.validate()?;
    let mut queue = nfq::Queue::open().context("open a netfilter queue socket")?;
    queue
        .bind(queue_num)
        .with_context(|| format!("bind NFQUEUE {queue_num}"))?;
    queue
        .set_copy_range(queue_num, 0)
        .context("copy metadata only")?;
    queue
        .set_queue_max_len(queue_num, MAX_KERNEL_QUEUE)
        .context("set the queue length")?;
    queue
        .set_fail_open(queue_num, true)
        .context("set fail-open")?;
    // Take GSO packets whole: the kernel need not split them before queueing.
    queue
        .set_recv_gso(queue_num, true)
        .context("accept GSO packets")?;
    queue.set_nonblocking(true);
    say_ready(queue_num)?;

    let mut held = HeldPackets::new(spec, MAX_HELD, fastrand::Rng::new());
    while !stop.load(AtomicOrdering::SeqCst) {
        loop {
            match queue.recv() {
                Ok(message) => {
                    if let Some(message) = held.hold(Instant::now(), message) {
                        queue
                            .verdict(message)
                            .context("accept an overflow packet")?;
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error).context("receive from the queue"),
            }
        }
        let now = Instant::now();
        while let Some(message) = held.pop_due(now) {
            queue.verdict(message).context("accept a due packet")?;
        }
        let sleep = held.next_due().map_or(MAX_POLL, |due| {
            due.saturating_duration_since(now).min(MAX_POLL)
        });
        std::thread::sleep(sleep);
    }
    let mut stats = HolderStats {
        released: held.released,
        overflowed: held.overflowed,
        flushed: 0,
    };
    for message in held.drain() {
        queue.verdict(message).context("accept a held packet")?;
        stats.flushed += 1;
    }
    queue
        .unbind(queue_num)
        .with_context(|| format!("unbind NFQUEUE {queue_num}"))?;
    Ok(stats)
}

fn say_ready(queue_num: u16) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY_LINE} queue={queue_num}").context("print the ready line")?;
    stdout.flush().context("print the ready line")
}

/// A running holder process, started by the harness inside a namespace.
#[derive(Debug)]
pub struct Holder {
    child: Child,
    netns: String,
}

impl Holder {
    /// Starts `program delay-holder …` (this harness's own binary) inside `netns` and waits
    /// until it has bound `queue`, so the queue rule can go in without a moment of undelayed
    /// traffic. Its stderr (the summary it prints when it stops) goes to `stderr`.
    ///
    /// # Errors
    /// When it cannot start, exits, or prints no ready line within a few seconds.
    pub fn start(
        program: &Path,
        netns: &str,
        queue: u16,
        spec: DelaySpec,
        stderr: Stdio,
    ) -> Result<Holder> {
        spec.validate()?;
        let mut child = netns::exec_in(netns, &program.display().to_string())
            .args(spec.holder_args(queue))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            // Its own process group, like the nodes: a Ctrl-C at the terminal reaches the
            // harness only, which then heals in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("start the delay holder in {netns}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // A thread, so the wait has a deadline; it ends with the holder's stdout.
        std::thread::spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
        });
        let holder = Holder {
            child,
            netns: netns.to_owned(),
        };
        let ready = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(line)) if line.starts_with(READY_LINE) => Ok(()),
            Ok(Ok(line)) if line.is_empty() => Err(anyhow!("it exited before binding its queue")),
            Ok(Ok(line)) => Err(anyhow!("unexpected output {:?}", line.trim())),
            Ok(Err(error)) => Err(error).context("read its ready line"),
            Err(_) => Err(anyhow!("no ready line within {READY_TIMEOUT:?}")),
        };
        if let Err(error) = ready {
            let _ = holder.stop();
            return Err(error).with_context(|| format!("delay holder in {netns}"));
        }
        Ok(holder)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs (a reboot step or a cleanup may have killed it).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (it lets everything it holds through and exits), then SIGKILL after a grace
    /// period; reaps it.
    ///
    /// # Errors
    /// When it had to be killed or exited with a failure.
    pub fn stop(mut self) -> Result<()> {
        let _ = netns::signal(self.child.id(), Signal::TERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("poll the delay holder")? {
                if status.success() {
                    return Ok(());
                }
                bail!("delay holder in {} exited with {status}", self.netns);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!(
            "delay holder in {} did not stop within {STOP_GRACE:?}; killed",
            self.netns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ms: u32, jitter_ms: u32) -> DelaySpec {
        DelaySpec { ms, jitter_ms }
    }

    #[test]
    fn limits_are_checked() {
        for (ms, jitter_ms) in [(1, 0), (100, 30), (100, 100), (MAX_DELAY_MS, 0)] {
            assert!(spec(ms, jitter_ms).validate().is_ok(), "{ms} {jitter_ms}");
        }
        let error = |ms, jitter_ms| format!("{:#}", spec(ms, jitter_ms).validate().unwrap_err());
        assert_eq!(error(0, 0), "delay of 0 ms: use 1-10000 ms");
        assert_eq!(error(10_001, 0), "delay of 10001 ms: use 1-10000 ms");
        assert!(
            error(100, 101).starts_with("jitter of 101 ms exceeds the delay of 100 ms"),
            "{}",
            error(100, 101)
        );
    }

    #[test]
    fn holder_args_name_the_queue_and_the_delay() {
        assert_eq!(
            spec(150, 50).holder_args(7),
            [
                "delay-holder",
                "--queue",
                "7",
                "--ms",
                "150",
                "--jitter-ms",
                "50"
            ]
        );
    }

    #[test]
    fn without_jitter_packets_leave_after_the_delay_in_order() {
        let start = Instant::now();
        let mut held = HeldPackets::new(spec(100, 0), 10, fastrand::Rng::with_seed(1));
        for (index, at_ms) in [0u64, 1, 1, 5].into_iter().enumerate() {
            assert!(
                held.hold(start + Duration::from_millis(at_ms), index)
                    .is_none()
            );
        }
        assert_eq!(held.next_due(), Some(start + Duration::from_millis(100)));
        assert_eq!(held.pop_due(start + Duration::from_millis(99)), None);
        let due: Vec<usize> =
            std::iter::from_fn(|| held.pop_due(start + Duration::from_millis(101))).collect();
        // Packets due at the same instant leave in arrival order.
        assert_eq!(due, [0, 1, 2]);
        assert_eq!(held.pop_due(start + Duration::from_millis(105)), Some(3));
        assert!(held.is_empty());
        assert_eq!(held.released, 4);
    }

    #[test]
    fn jitter_stays_in_bounds_and_reorders() {
        let start = Instant::now();
        let mut held = HeldPackets::new(spec(100, 30), 1000, fastrand::Rng::with_seed(7));
        // One packet a millisecond for 200 ms.
        for index in 0..200u64 {
            let _ = held.hold(start + Duration::from_millis(index), index);
        }
        let mut order = Vec::new();
        let mut now = start;
        while !held.is_empty() {
            let due = held.next_due().expect("not empty");
            #[allow(clippy::cast_precision_loss)]
            let held_for_ms = |index: u64| (due - start).as_secs_f64() * 1000.0 - index as f64;
            now = now.max(due);
            let index = held.pop_due(now).expect("due");
            let waited = held_for_ms(index);
            assert!((70.0..=130.0).contains(&waited), "{index} held {waited} ms");
            order.push(index);
        }
        let overtaken = order.windows(2).filter(|w| w[0] > w[1]).count();
        assert!(
            overtaken > 20,
            "jitter of 30 ms at 1 ms spacing reorders: {overtaken}"
        );
    }

    #[test]
    fn beyond_the_bound_packets_pass_at_once_and_are_counted() {
        let start = Instant::now();
        let mut held = HeldPackets::new(spec(10, 0), 2, fastrand::Rng::with_seed(1));
        assert_eq!(held.hold(start, 'a'), None);
        assert_eq!(held.hold(start, 'b'), None);
        assert_eq!(held.hold(start, 'c'), Some('c'));
        assert_eq!(held.overflowed, 1);
        assert_eq!(held.len(), 2);
        assert_eq!(held.drain(), ['a', 'b']);
        assert!(held.is_empty());
    }
}
