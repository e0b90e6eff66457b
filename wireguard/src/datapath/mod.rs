//! The data path: three OS threads per device. `outbound` reads the TUN and encapsulates,
//! `inbound` receives UDP and decapsulates, `timers` drives boringtun's timers. Each reads the
//! current [`Table`] through a [`TableView`], which re-reads it only when its generation
//! moved, so a packet costs no allocation and no shared lock beyond its tunnel's mutex.
//!
//! The TUN is opened with offloads when the kernel allows (as wireguard-go does): a read may
//! return a 64 KB TCP segment that tun-rs splits into MTU-sized packets, and decrypted packets
//! are written in batches that tun-rs coalesces (GRO), so the kernel's TCP stack handles one
//! large packet instead of dozens.
//!
//! Why one thread per direction and not more: boringtun's `Tunn::encapsulate` and
//! `decapsulate` take `&mut self`, so one peer's packets are encrypted one at a time behind
//! its tunnel's mutex whatever the thread count. Splitting each direction into two stages
//! (crypto on one thread, the send or TUN write on another, batches handed over through
//! bounded channels) was measured at 2.2 Gb/s against 2.6 Gb/s for one TCP stream on a
//! loaded two-core machine: the hand-off's wake-ups cost more than the overlap gained.

mod inbound;
mod outbound;
mod timers;
mod udp;

pub(crate) use inbound::run_udp_reader;
pub(crate) use outbound::run_tun_reader;
pub(crate) use timers::run_timers;

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tun_rs::{InterruptEvent, SyncDevice};

use crate::table::Table;

/// How often the timer thread runs boringtun's timers (retransmits, rekeys, keepalives).
pub(crate) const TIMER_TICK: Duration = Duration::from_millis(100);
/// How long the UDP thread blocks in one receive before it looks at the stop flag.
pub(crate) const UDP_POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Largest IP packet: a TUN read (with offloads, a whole TCP segment) or a datagram fits.
const BUFFER_BYTES: usize = 65_536;
/// Room for WireGuard's data header and tag around a packet; a handshake message (148
/// bytes) also fits in a packet buffer this much larger than the MTU.
const WIREGUARD_OVERHEAD_BYTES: usize = 32;
/// WireGuard's transport data message type.
const MESSAGE_DATA: u8 = 4;

/// What the device's threads share.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) table: RwLock<Arc<Table>>,
    /// Bumped after every table swap.
    pub(crate) generation: AtomicU64,
    pub(crate) udp: UdpSocket,
    pub(crate) tun: SyncDevice,
    pub(crate) interrupt: InterruptEvent,
    pub(crate) stop: AtomicBool,
    /// Whether UDP GSO sends work here; cleared at the first refusal.
    pub(crate) udp_gso: AtomicBool,
    pub(crate) invalid_packets: AtomicU64,
}

impl Shared {
    /// Installs a new table; the threads pick it up at their next packet.
    pub(crate) fn swap_table(&self, table: Table) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current table.
    pub(crate) fn current_table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn count_invalid(&self) {
        self.invalid_packets.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn send(&self, bytes: &[u8], to: SocketAddrV4) {
        // A failed send is a lost packet, which WireGuard's timers recover from; nothing to do.
        let _ = self.udp.send_to(bytes, SocketAddr::V4(to));
    }
}

/// One thread's handle on the current table.
pub(super) struct TableView<'a> {
    shared: &'a Shared,
    generation: u64,
    table: Arc<Table>,
}

impl<'a> TableView<'a> {
    pub(super) fn new(shared: &'a Shared) -> TableView<'a> {
        let generation = shared.generation.load(Ordering::Acquire);
        TableView {
            shared,
            generation,
            table: shared.current_table(),
        }
    }

    #[inline]
    pub(super) fn current(&mut self) -> &Table {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.table = self.shared.current_table();
        }
        &self.table
    }
}

/// Errors after which the same call may work: a signal, an empty queue, a timeout.
fn is_transient(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
