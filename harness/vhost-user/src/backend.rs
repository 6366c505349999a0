//! The vhost-user backend session (vhost-user.rst "Communication",
//! "Ring states", "Front-end message types"): a [`VirtioDevice`] served to
//! one frontend at a time over a unix socket.
//!
//! - Features: the device's own features plus
//!   `VHOST_USER_F_PROTOCOL_FEATURES`; protocol features MQ, REPLY_ACK,
//!   CONFIG, RESET_DEVICE, CONFIGURE_MEM_SLOTS.
//! - Memory: the frontend's regions mapped into a [`SharedMemory`] the
//!   device was built over (see `memory`). A frontend that shrinks a
//!   region's file under the mapping (issue 16, finding 3) ends its own
//!   session: the SIGBUS an access past the new end raises is caught (see
//!   `guard`), every later access to the table fails, and after each
//!   request and each round of device calls the session looks at its
//!   regions and ends, naming the one that faulted, before any reply or
//!   further call; the next frontend is served as usual.
//! - Order: requests are taken in every order real frontends send them
//!   (QEMU, rust-vmm's `vhost`, DPDK's virtio-user, crosvm, Cloud
//!   Hypervisor). `VHOST_USER_F_PROTOCOL_FEATURES` is in force once the
//!   frontend sent `SET_PROTOCOL_FEATURES` (the backend always offers it)
//!   or acknowledged the bit; "enabled", "addressed" and "started" are
//!   three independent states of a ring, each set by its own request in
//!   any order. Order never loosens a check: sizes, ring addresses (inside
//!   mapped memory, §2.7 alignment) and descriptors are validated when
//!   they arrive, and a ring only runs once all three states hold.
//! - Rings: a ring runs when it is started (kick descriptor received, not
//!   stopped by `GET_VRING_BASE`), enabled (at once without protocol
//!   features, else by `SET_VRING_ENABLE`) and addressed. Whenever the set
//!   of running rings grows (or a running ring moves), the device is reset
//!   and activated again with exactly those rings
//!   ([`VirtioDevice::activate`], as the in-process transport does at
//!   DRIVER_OK), then every running ring is served once. The same happens
//!   when rings only stop (every ring keeps its position, see below), so a
//!   stopped ring is out of the device's reach; only a device that cannot
//!   report positions stays live with the stopped rings masked instead.
//!   When the last ring stops, the device is reset. A device that needs the
//!   stopped ring (e.g. console without its receiveq) is not active until
//!   it runs again.
//! - Notifications: kick eventfds, the socket and the backend's readiness
//!   fds are polled by one epoll loop on the serving thread, which is the
//!   only thread that calls the device. After an event the loop busy-polls
//!   for an adaptive window before it sleeps ([`Backend::set_poll`], as
//!   QEMU's `poll-max-ns`). A used-buffer notification writes
//!   the call eventfd of every running ring (the device's decision does not
//!   name the queue; a spare interrupt is harmless, §2.7.7); a device error
//!   writes the ring's error eventfd.
//! - Ring positions: `SET_VRING_BASE` takes any split-ring index; it is
//!   kept per ring and applied after every activation with
//!   [`VirtioDevice::set_queue_position`] (next available index and used
//!   index both at the base). `GET_VRING_BASE` stops the ring and reports
//!   [`VirtioDevice::queue_position`], which is rewound past chains the
//!   device holds (they are popped again when the ring resumes); only a
//!   device that does not know its position falls back to the used index
//!   in guest memory. Before the device is reset to run a different set of
//!   rings, every running ring's position is saved and restored after the
//!   re-activation, so a ring that starts while others run moves none of
//!   them. A device that cannot start a queue at a non-zero base is not
//!   activated (its error eventfd is written).
//!
//! Errors: a request the session refuses gets a `REPLY_ACK` failure when
//! the frontend asked for one; otherwise the connection closes (the
//! frontend would go on believing in a ring or a mapping the backend does
//! not have, and its guest would wait for ever), except for a configuration
//! write outside the configuration space, which is dropped. Each kind of
//! refusal is logged once per session, with the request and the reason;
//! repeats are counted and the counts logged when the session ends.
//!
//! Log: every line a frontend can cause (refusals, device errors, the end
//! of a session, the counters logged when it ends) is rate-limited per
//! kind across sessions: at most [`LOG_BURST`] lines of a kind every
//! [`LOG_WINDOW`], then one line with the number suppressed (when the
//! window is over, at the end of a later session, or when the backend is
//! dropped), so a frontend that refuses, fails or reconnects in a loop
//! cannot fill the disk. Only `set_verbose` logs every request and every
//! line. Lines go to stderr, or to the caller's sink
//! ([`Backend::set_log_sink`]). The
//! refusals that remain, and why: a ring size that is not a power of two
//! up to the device's maximum (§2.7; `queue-size` raises it), a ring whose
//! areas are not inside the mapped memory or misaligned (§2.7), a ring
//! index past the device's queues, features or protocol features not
//! offered, a kick, call or error descriptor that is not an eventfd, a
//! kick without descriptor (polling is not offered), a ring resized or
//! rebased while it runs, a memory table that overlaps itself or reaches
//! past its file, and requests this backend does not implement. A
//! frontend that disconnects
//! at any point ends the session: rings stop, the device is reset, the
//! memory is unmapped, and the daemon accepts the next frontend. A device
//! that panics, in any call, ends the session the same way (every device
//! call runs under `catch_unwind`, also those made as the session ends),
//! and is reset before the next frontend even if it was not active.
//!
//! Serving: [`Backend::serve`] accepts frontends one after the other;
//! [`Backend::serve_connection`] serves one, in a loop that waits for
//! events; [`Backend::serve_stepped`] hands the same loop to its caller,
//! one round at a time and never waiting, so that a test or a fuzz target
//! can be the frontend on the same thread and run a session
//! deterministically.
//!
//! Not done: a stopped ring of a device that cannot report positions is
//! only masked, so such a device serving queues on backend readiness may
//! still move it after `GET_VRING_BASE` reported its place. No dirty
//! logging, inflight tracking, backend-initiated channel (so no
//! config-change message), or polling mode (a kick without descriptor).

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use virtio_core::GuestMemory;
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::codec::{
    self, CodecError, Config, Frame, Header, MAX_CONFIG, MAX_MEM_SLOTS, Message, RecvError,
    Request, VHOST_USER_F_PROTOCOL_FEATURES, VringAddr, VringFd, VringState, protocol,
};
use crate::log_limit::LogLimit;
use crate::memory::{MemError, Regions, SharedMemory};

/// The protocol features this backend offers.
pub const PROTOCOL_FEATURES: u64 = protocol::MQ
    | protocol::REPLY_ACK
    | protocol::CONFIG
    | protocol::RESET_DEVICE
    | protocol::CONFIGURE_MEM_SLOTS;

/// The session a `CREATE_CRYPTO_SESSION` asks for: a cipher session
/// (QEMU 7.2 sends nothing else); `None` for what the device cannot make
/// (algorithm chaining, an unknown cipher or direction, a key longer than
/// the message holds).
fn crypto_session_spec(c: &codec::CryptoSession) -> Option<backends::crypto::SessionSpec<'_>> {
    use virtio_core::crypto::{OP_DECRYPT, OP_ENCRYPT, SYM_OP_CIPHER};
    if u32::from(c.op_type) != SYM_OP_CIPHER {
        return None;
    }
    let direction = match u32::from(c.direction) {
        OP_ENCRYPT => backends::crypto::Direction::Encrypt,
        OP_DECRYPT => backends::crypto::Direction::Decrypt,
        _ => return None,
    };
    Some(backends::crypto::SessionSpec::Cipher {
        algo: virtio_devices::crypto::wire::cipher_algo(c.cipher_alg)?,
        key: c.key.get(..usize::try_from(c.key_len).ok()?)?,
        direction,
    })
}

/// Longest a frontend may pause inside one message, or leave a reply
/// unread, before the connection is closed (between messages it may idle
/// for ever).
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The default longest busy-polling window ([`Backend::set_poll`]): long
/// enough for a driver with 32 requests in flight to answer a call on the
/// machines we measure on (`bench --user`); QEMU's iothreads default to
/// 32 µs.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_micros(128);

/// The first polling window once events come close together.
pub const POLL_START: Duration = Duration::from_micros(4);

/// Adaptive busy polling: the current window and where the loop is.
#[derive(Debug)]
struct Poll {
    max: Duration,
    window: Duration,
    phase: Phase,
}

/// Where the serving loop is, for [`Poll`].
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No event seen yet.
    Idle,
    /// Polling until then.
    Polling(Instant),
    /// Sleeping (or about to) since then.
    Sleeping(Instant),
}

impl Poll {
    fn new(max: Duration) -> Self {
        Poll {
            // A second is already far beyond any use.
            max: max.min(Duration::from_secs(1)),
            window: Duration::ZERO,
            phase: Phase::Idle,
        }
    }

    /// Whether the wait starting at `now` should look without sleeping.
    fn polling(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Polling(until) if now < until => true,
            Phase::Polling(_) => {
                // The window ran out: the loop sleeps from now.
                self.phase = Phase::Sleeping(now);
                false
            }
            Phase::Idle | Phase::Sleeping(_) => false,
        }
    }

    /// Records a wait: `polled` when it did not sleep, `event` when it
    /// found something. An event opens a window; a sleep that ended with
    /// an event adapts the window to how long it took.
    fn waited(&mut self, now: Instant, polled: bool, event: bool) {
        if self.max.is_zero() || !event {
            return;
        }
        if !polled && let Phase::Sleeping(since) = self.phase {
            if now.saturating_duration_since(since) <= self.max {
                self.window = (self.window * 2).clamp(POLL_START, self.max);
            } else {
                self.window /= 2;
                if self.window < POLL_START {
                    self.window = Duration::ZERO;
                }
            }
        }
        self.phase = if self.window.is_zero() {
            // No window: the next wait sleeps, and its length is measured.
            Phase::Sleeping(now)
        } else {
            Phase::Polling(now + self.window)
        };
    }
}

#[cfg(test)]
mod poll_tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    /// Each event 10 µs after the window closed: the window grows from
    /// `POLL_START` by doubling to the maximum, and an event found while
    /// polling keeps it open.
    #[test]
    fn the_window_grows_while_events_come_close_together() {
        let mut p = Poll::new(64 * US);
        let mut t = Instant::now();
        p.waited(t, false, true);
        assert!(!p.polling(t), "no window before the first measured gap");
        let mut windows = Vec::new();
        for _ in 0..6 {
            // The window (if any) runs out: the loop sleeps from its end.
            let end = t + p.window;
            assert!(!p.polling(end));
            t = end + 10 * US;
            p.waited(t, false, true);
            windows.push(p.window);
        }
        assert_eq!(
            windows,
            [4, 8, 16, 32, 64, 64].map(|n| n * US).to_vec(),
            "doubles from POLL_START, capped at the maximum"
        );
        // Within the window: polling, and an event there keeps polling.
        assert!(p.polling(t + 5 * US));
        p.waited(t + 5 * US, true, true);
        assert!(p.polling(t + 60 * US));
    }

    /// Events further apart than the maximum halve the window to nothing;
    /// a wait that found nothing (the backend tick) changes nothing.
    #[test]
    fn the_window_shrinks_to_nothing_when_events_come_late() {
        let mut p = Poll::new(64 * US);
        p.window = 64 * US;
        let mut t = Instant::now();
        p.waited(t, false, true);
        let mut windows = Vec::new();
        for _ in 0..6 {
            let end = t + p.window;
            assert!(!p.polling(end));
            t = end + 1000 * US;
            p.waited(t - 500 * US, false, false);
            p.waited(t, false, true);
            windows.push(p.window);
        }
        assert_eq!(windows, [32, 16, 8, 4, 0, 0].map(|n| n * US).to_vec());
    }

    /// A maximum of zero never polls.
    #[test]
    fn zero_turns_polling_off() {
        let mut p = Poll::new(Duration::ZERO);
        let t = Instant::now();
        for i in 0..10 {
            p.waited(t + i * US, false, true);
            assert!(!p.polling(t + i * US));
        }
    }
}

/// How often the loop calls `backend_ready` when the device has backend
/// fds (a safety net, as in the in-process worker).
pub const BACKEND_TICK: Duration = Duration::from_millis(20);

/// The most log lines of one kind (a kind of refusal, device errors,
/// session ends, session counters) written in a [`LOG_WINDOW`]; the rest
/// are counted, and the count logged.
pub const LOG_BURST: u32 = 5;

/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

/// The log kind of the per-session refusal counts.
const LOG_REFUSAL_COUNTS: &str = "refusal counts";
/// The log kind of a session's end.
const LOG_SESSION_END: &str = "session end";
/// The log kind of a device error.
const LOG_DEVICE_ERROR: &str = "device error";
/// The log kind of a session's ring counters.
const LOG_RING_COUNTERS: &str = "session ring counters";
/// The log kind of the device's counters at the end of a session.
const LOG_DEVICE_COUNTERS: &str = "device counters";

/// Why the session refused a request.
#[derive(Debug)]
pub enum BackendError {
    /// The request is not valid vhost-user.
    Codec(CodecError),
    /// A request this backend does not implement.
    Unsupported(Request),
    /// A ring index beyond the device's queues.
    NoSuchRing(u32),
    /// Features the backend did not offer.
    FeaturesNotOffered {
        /// The acknowledged bits.
        acked: u64,
        /// The offered bits.
        offered: u64,
    },
    /// A ring size that is not a power of two up to the device's maximum.
    BadRingSize {
        /// The ring.
        index: u32,
        /// The size asked.
        num: u32,
        /// The device's maximum.
        max: u16,
    },
    /// `SET_VRING_ADDR` before `SET_VRING_NUM`.
    SizeNotSet(u32),
    /// A ring area outside the mapped memory.
    RingOutsideMemory {
        /// The ring.
        index: u32,
        /// Which area.
        area: &'static str,
        /// Its frontend address.
        addr: u64,
    },
    /// The ring's layout is invalid (alignment, wrap).
    BadLayout {
        /// The ring.
        index: u32,
        /// Why.
        why: String,
    },
    /// A ring changed while it runs (size, base).
    RingRunning(u32),
    /// `SET_VRING_BASE` with an index that is no split-ring index (more
    /// than 16 bits; packed rings are not offered).
    BadBase {
        /// The ring.
        index: u32,
        /// The index asked.
        base: u32,
    },
    /// A kick without a descriptor (polling mode is not offered).
    KickWithoutFd(u8),
    /// A descriptor that is not an eventfd where one is needed.
    NotAnEventFd,
    /// Registering a kick with epoll failed.
    Epoll(io::Error),
    /// A memory region the session cannot use.
    Memory(MemError),
    /// A configuration access outside the configuration space.
    ConfigRange {
        /// Its offset.
        offset: u32,
        /// Its size.
        size: usize,
    },
    /// `SET_VRING_ENABLE` with a value other than 0 or 1.
    BadEnable(u32),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendError::Codec(e) => write!(f, "{e}"),
            BackendError::Unsupported(r) => write!(f, "{r:?} is not supported"),
            BackendError::NoSuchRing(i) => write!(f, "no ring {i}"),
            BackendError::FeaturesNotOffered { acked, offered } => write!(
                f,
                "features {acked:#x} include bits not offered ({offered:#x})"
            ),
            BackendError::BadRingSize { index, num, max } => write!(
                f,
                "ring {index}: size {num} is not a power of two up to {max}"
            ),
            BackendError::SizeNotSet(i) => write!(f, "ring {i}: addresses before the size"),
            BackendError::RingOutsideMemory { index, area, addr } => write!(
                f,
                "ring {index}: {area} at frontend address {addr:#x} is outside the mapped memory"
            ),
            BackendError::BadLayout { index, why } => write!(f, "ring {index}: {why}"),
            BackendError::RingRunning(i) => write!(f, "ring {i} is running"),
            BackendError::BadBase { index, base } => write!(
                f,
                "ring {index}: base {base:#x} is not a split-ring index (16 bits)"
            ),
            BackendError::KickWithoutFd(i) => {
                write!(
                    f,
                    "ring {i}: a kick without descriptor (polling) is not supported"
                )
            }
            BackendError::NotAnEventFd => f.write_str("the descriptor is not an eventfd"),
            BackendError::Epoll(e) => write!(f, "epoll: {e}"),
            BackendError::Memory(e) => write!(f, "{e}"),
            BackendError::ConfigRange { offset, size } => write!(
                f,
                "configuration access of {size} bytes at {offset} is out of range"
            ),
            BackendError::BadEnable(n) => write!(f, "SET_VRING_ENABLE with {n}"),
        }
    }
}

impl std::error::Error for BackendError {}

impl BackendError {
    /// The kind of refusal, for logging each kind once per session.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendError::Codec(_) => "malformed message",
            BackendError::Unsupported(_) => "unsupported request",
            BackendError::NoSuchRing(_) => "no such ring",
            BackendError::FeaturesNotOffered { .. } => "features not offered",
            BackendError::BadRingSize { .. } => "bad ring size",
            BackendError::SizeNotSet(_) => "ring addresses before its size",
            BackendError::RingOutsideMemory { .. } => "ring outside memory",
            BackendError::BadLayout { .. } => "bad ring layout",
            BackendError::RingRunning(_) => "ring changed while running",
            BackendError::BadBase { .. } => "bad ring base",
            BackendError::KickWithoutFd(_) => "kick without descriptor",
            BackendError::NotAnEventFd => "not an eventfd",
            BackendError::Epoll(_) => "epoll",
            BackendError::Memory(_) => "bad memory region",
            BackendError::ConfigRange { .. } => "configuration access out of range",
            BackendError::BadEnable(_) => "bad SET_VRING_ENABLE value",
        }
    }

    /// Whether the session can go on without the request: only a
    /// configuration write outside the configuration space (it is dropped,
    /// as a device drops a driver's write to a read-only field). Every
    /// other refusal leaves the frontend believing in a state the backend
    /// does not have (a ring that will never run, memory that is not
    /// mapped), so without `REPLY_ACK` to tell it, the connection closes
    /// rather than leave the guest waiting.
    pub fn recoverable(&self) -> bool {
        matches!(self, BackendError::ConfigRange { .. })
    }
}

/// Each kind of refusal in one session, logged the first time and counted
/// after; the counts are logged when the session ends.
#[derive(Debug, Default)]
struct Refusals {
    kinds: Vec<(&'static str, u64)>,
}

impl Refusals {
    /// Counts `e`; true the first time its kind is seen this session.
    fn first(&mut self, e: &BackendError) -> bool {
        let kind = e.kind();
        match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                false
            }
            None => {
                self.kinds.push((kind, 1));
                true
            }
        }
    }

    /// The kinds refused more than once, with their counts, and forgets
    /// them all.
    fn take_repeated(&mut self) -> Vec<(&'static str, u64)> {
        let mut kinds = std::mem::take(&mut self.kinds);
        kinds.retain(|(_, n)| *n > 1);
        kinds
    }
}

/// Why a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// The frontend closed the connection between messages.
    Closed,
    /// The frontend broke the protocol, or the socket failed.
    Error(String),
}

impl fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionEnd::Closed => f.write_str("frontend disconnected"),
            SessionEnd::Error(e) => write!(f, "connection closed: {e}"),
        }
    }
}

/// Counters over the backend's life (all sessions).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendStats {
    /// Connections served.
    pub sessions: u64,
    /// Requests handled.
    pub requests: u64,
    /// Requests refused.
    pub refused: u64,
    /// Kicks served.
    pub kicks: u64,
    /// Call eventfd writes.
    pub calls: u64,
    /// Device activations.
    pub activations: u64,
    /// Errors the device reported (error eventfd written).
    pub device_errors: u64,
    /// The last refusal or session error.
    pub last_error: Option<String>,
    /// Per ring, over the backend's life.
    pub rings: Vec<RingStats>,
}

/// One ring's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Kicks served.
    pub kicks: u64,
    /// Used elements the device published (read from the used index, so
    /// every path counts: notifications, backend readiness, activation).
    pub used: u64,
}

/// One ring's state.
#[derive(Debug, Default)]
struct Vring {
    size: Option<QueueSize>,
    layout: Option<QueueLayout>,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    err: Option<OwnedFd>,
    started: bool,
    enabled: bool,
    /// Where the ring starts when the device is activated with it: the
    /// next available index, and the used index (vhost-user.rst
    /// `SET_VRING_BASE`, "the next descriptor index to process"). Set by
    /// `SET_VRING_BASE`, and saved from the device whenever the ring stops
    /// or the device is activated again.
    base: u16,
    /// The used index last seen while the ring ran.
    used_seen: u16,
    /// This session's counters.
    session: RingStats,
}

impl Vring {
    fn runnable(&self) -> bool {
        self.started && self.enabled && self.layout.is_some()
    }
}

const TOKEN_SOCKET: u64 = 0;
const TOKEN_KICK: u64 = 1 << 32;
const TOKEN_BACKEND: u64 = 2 << 32;

/// A device served over vhost-user.
pub struct Backend<D> {
    device: D,
    mem: SharedMemory,
    ready_fds: Vec<RawFd>,
    regions: Regions,
    vrings: Vec<Vring>,
    acked: u64,
    /// Crypto sessions this frontend made by message
    /// (`CREATE_CRYPTO_SESSION`), closed when it resets or goes.
    crypto_ids: Vec<u64>,
    protocol: u64,
    /// The frontend sent `SET_PROTOCOL_FEATURES` this session.
    protocol_set: bool,
    /// The rings the device was activated with, if it is active.
    active: Option<Vec<bool>>,
    stats: BackendStats,
    refusals: Refusals,
    verbose: bool,
    /// The device panicked and was not reset since: it is reset when the
    /// session ends, whether it was active or not.
    panicked: bool,
    /// The rate limits of the log, across sessions.
    log_limit: LogLimit,
    /// The ready list: rings whose service stopped at the device's work
    /// budget (issue 16, finding 2), resumed after the next round of
    /// events, the frontend's messages first.
    ready: Vec<usize>,
    /// `backend_ready` stopped at the work budget.
    ready_backend: bool,
    /// Adaptive busy polling (see [`Backend::set_poll`]).
    poll: Poll,
    /// The device takes part in polling ([`VirtioDevice::set_polling`]):
    /// while the window is open the loop looks at its rings itself and
    /// the driver's notifications stay off.
    rings_polled: bool,
    /// Where log lines go instead of stderr ([`Backend::set_log_sink`]).
    log_sink: Option<LogSink>,
}

/// A destination for the backend's log lines ([`Backend::set_log_sink`]).
pub type LogSink = Box<dyn FnMut(&str) + Send>;

impl<D> Drop for Backend<D> {
    /// Logs what the rate limits suppressed and did not report yet.
    fn drop(&mut self) {
        self.flush_log();
    }
}

impl<D> Backend<D> {
    /// Writes one line to the log: stderr, or the sink if one is set. Every
    /// line the backend writes goes through here.
    fn emit(&mut self, line: fmt::Arguments<'_>) {
        match &mut self.log_sink {
            Some(sink) => sink(&format!("vhost-user: {line}")),
            None => eprintln!("vhost-user: {line}"),
        }
    }

    /// Writes one log line of `kind`, within the rate limits (every line
    /// when verbose).
    fn log(&mut self, kind: &'static str, line: fmt::Arguments<'_>) {
        if self.verbose {
            self.emit(line);
            return;
        }
        let admit = self.log_limit.admit(kind, Instant::now());
        if let Some(summary) = admit.summary {
            self.emit(format_args!("{summary}"));
        }
        if admit.write {
            self.emit(line);
        }
    }

    /// Logs the counts of suppressed lines whose window is over (`all`:
    /// every count).
    fn log_summaries(&mut self, all: bool) {
        for summary in self.log_limit.summaries(Instant::now(), all) {
            self.emit(format_args!("{summary}"));
        }
    }

    /// Sends every log line (the same lines, within the same rate limits,
    /// each without its newline) to `sink` instead of stderr: for an
    /// embedder with its own log, or a test or fuzz target that runs
    /// thousands of sessions a second and counts the lines.
    pub fn set_log_sink(&mut self, sink: LogSink) {
        self.log_sink = Some(sink);
    }

    /// Logs every count of suppressed lines not reported yet (also done
    /// when the backend is dropped, and when [`Backend::serve`] returns).
    pub fn flush_log(&mut self) {
        self.log_summaries(true);
    }
}

impl<D> fmt::Debug for Backend<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("acked", &self.acked)
            .field("protocol", &self.protocol)
            .field("active", &self.active)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Whether `fd` is an eventfd (kick, call and err descriptors must be:
/// a pipe or file there could block or spin the serving thread).
fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.as_os_str() == "anon_inode:[eventfd]")
}

/// Makes the open file behind `fd` non-blocking, so that no read or write
/// of a frontend's eventfd can stop the serving thread: a kick the
/// frontend read away itself, a call counter it filled to the maximum.
/// The flag belongs to the file, which the frontend shares; frontends
/// use their eventfds non-blocking or only ever write 1 to them.
fn set_nonblocking(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFL and F_SETFL on an fd we own; no pointers.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    }
}

/// Adds 1 to an eventfd (non-blocking: a counter a hostile frontend
/// filled to the maximum drops the call instead of stopping the thread).
fn signal(fd: &OwnedFd) -> bool {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live buffer to an fd we own.
    unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) == 8 }
}

/// Drains an eventfd (made non-blocking when it was received, so an
/// empty one returns at once: one system call, where a `poll` first made
/// two for every kick).
fn drain(fd: &OwnedFd) {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live buffer.
    let _ = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
}

impl<D: VirtioDevice> Backend<D> {
    /// Serves `device`, which was built over `mem`; `ready_fds` are its
    /// backends' readiness descriptors.
    pub fn new(device: D, mem: SharedMemory, ready_fds: Vec<RawFd>) -> Self {
        let n = device.queue_max_sizes().len();
        let mut ready_fds = ready_fds;
        ready_fds.sort_unstable();
        ready_fds.dedup();
        Backend {
            device,
            mem,
            ready_fds,
            regions: Regions::default(),
            vrings: (0..n).map(|_| Vring::default()).collect(),
            acked: 0,
            crypto_ids: Vec::new(),
            protocol: 0,
            protocol_set: false,
            active: None,
            stats: BackendStats {
                rings: vec![RingStats::default(); n],
                ..BackendStats::default()
            },
            refusals: Refusals::default(),
            verbose: false,
            panicked: false,
            log_limit: LogLimit::new(LOG_BURST, LOG_WINDOW),
            ready: Vec::new(),
            ready_backend: false,
            poll: Poll::new(DEFAULT_POLL_MAX),
            rings_polled: false,
            log_sink: None,
        }
    }

    /// Logs every request on stderr, and every line without rate limits.
    pub fn set_verbose(&mut self, on: bool) {
        self.verbose = on;
    }

    /// The longest busy-polling window (QEMU's `poll-max-ns`; default
    /// [`DEFAULT_POLL_MAX`], zero turns polling off). After a round that
    /// handled an event (a kick, a completion, a message) the loop keeps
    /// looking for the next one, without sleeping, for the current window,
    /// so a driver that answers quickly finds the backend awake: no
    /// wake-up to pay, which on a VM costs more than the request. The
    /// window adapts as QEMU's does: it doubles (from
    /// [`POLL_START`], up to the maximum) when the loop slept and the next
    /// event came within the maximum, and halves (to nothing below
    /// `POLL_START`) when it came later, so an idle or slow frontend costs
    /// no polling.
    pub fn set_poll(&mut self, max: Duration) {
        self.poll = Poll::new(max);
    }

    /// Strict mode: refuse memory regions whose file is not sealed against
    /// shrinking (`F_SEAL_SHRINK`). Off by default: QEMU seals its memfds,
    /// but DPDK's virtio-user, rust-vmm's frontend and file-backed memory
    /// do not, and a frontend that shrinks its file ends only its own
    /// session anyway.
    pub fn set_require_sealed_memory(&mut self, on: bool) {
        self.regions.set_require_sealed(on);
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The counters.
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// The virtio features offered: the device's plus
    /// `VHOST_USER_F_PROTOCOL_FEATURES`.
    pub fn features(&self) -> u64 {
        self.device.device_features() | VHOST_USER_F_PROTOCOL_FEATURES
    }

    /// `GET_QUEUE_NUM`'s answer: the device's queues, except for a network
    /// device, whose queue pairs are counted (QEMU's vhost-user netdev
    /// compares its `queues=` pairs with it and sets up rings 2i and 2i+1
    /// for pair i; the control queue stays with the frontend), as DPDK's
    /// vhost library answers. Frontends that read it as rings (Cloud
    /// Hypervisor) then ask for fewer, never more, than there are.
    pub fn queue_num(&self) -> u64 {
        let n = self.vrings.len() as u64;
        if self.device.device_type() == DeviceType::Net {
            (n.saturating_sub(1) / 2).max(1)
        } else {
            n
        }
    }

    /// Accepts frontends on `listener` one after the other, for ever;
    /// returns only if `accept` fails.
    pub fn serve(&mut self, listener: &UnixListener) -> io::Error {
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    self.serve_connection(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.flush_log();
                    return e;
                }
            }
        }
    }

    /// Serves one frontend until it disconnects or breaks the protocol,
    /// then resets everything for the next. A session that ends in an
    /// error is logged (within the rate limits; every session when
    /// verbose).
    ///
    /// Every call into the device runs under `catch_unwind`: a device that
    /// panics while the session runs (in any call: configuration access,
    /// activation, reset, queue service) ends the session like a protocol
    /// error, and one that panics as it ends (its counters, its reset)
    /// makes the session end in an error. Either way the session's state
    /// is cleared, the device is reset before the next frontend, and the
    /// daemon goes on.
    pub fn serve_connection(&mut self, stream: UnixStream) -> SessionEnd {
        self.stats.sessions += 1;
        // Closed only once the session is cleared, as the frontend may
        // reconnect as soon as it sees the end.
        let mut conn = None;
        let result = self.catching(|b| {
            let c = conn.insert(b.open(stream)?);
            while b.round(c, true)? != Round::Closed {}
            Ok(())
        });
        let end = self.close(result);
        drop(conn);
        end
    }

    /// Serves one frontend like [`Backend::serve_connection`], but run by
    /// the caller one round at a time ([`SteppedSession::poll`]) on its
    /// own thread, never waiting for an event: a frontend on the same
    /// thread acts between rounds, so a test or a fuzz target drives a
    /// whole session deterministically, with nothing racing. The rounds
    /// are those `serve_connection` runs (it waits for events instead),
    /// and the session ends, and is cleared for the next frontend, as
    /// there; dropping the [`SteppedSession`] ends it as a hang-up would.
    ///
    /// The frontend must send whole messages between rounds: a round that
    /// finds part of one waits for the rest, up to [`MESSAGE_TIMEOUT`]. A
    /// round never makes the [`BACKEND_TICK`] call to `backend_ready`
    /// (readiness fds are still served when they fire).
    pub fn serve_stepped(&mut self, stream: UnixStream) -> SteppedSession<'_, D> {
        self.stats.sessions += 1;
        let mut conn = None;
        let opened = self.catching(|b| {
            conn = Some(b.open(stream)?);
            Ok(())
        });
        let mut stepped = SteppedSession {
            backend: self,
            conn,
            end: None,
        };
        if let Err(e) = opened {
            stepped.end_with(Err(e));
        }
        stepped
    }

    /// Runs `f` under `catch_unwind`; a panic (only a device call should
    /// raise one) marks the device for a reset and becomes the session's
    /// error.
    fn catching(&mut self, f: impl FnOnce(&mut Self) -> Result<(), String>) -> Result<(), String> {
        match catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(r) => r,
            Err(p) => {
                self.panicked = true;
                Err(format!("device panicked: {}", panic_message(&*p)))
            }
        }
    }

    /// Ends a session that ended with `result`: clears it for the next
    /// frontend and logs how it ended.
    fn close(&mut self, result: Result<(), String>) -> SessionEnd {
        let mut end = match result {
            Ok(()) => SessionEnd::Closed,
            Err(e) => SessionEnd::Error(e),
        };
        if let Some(e) = self.end_session() {
            end = SessionEnd::Error(match end {
                SessionEnd::Error(first) => format!("{first}; then {e}"),
                SessionEnd::Closed => e,
            });
        }
        if let SessionEnd::Error(e) = &end {
            self.stats.last_error = Some(e.clone());
            self.log(LOG_SESSION_END, format_args!("{end}"));
        } else if self.verbose {
            self.emit(format_args!("{end}"));
        }
        // Counts whose window closed during this session.
        self.log_summaries(false);
        end
    }

    /// Starts serving `stream`: socket timeouts, the session's epoll with
    /// the socket and the readiness fds, an empty ready list.
    fn open(&mut self, stream: UnixStream) -> Result<Connection, String> {
        stream
            .set_read_timeout(Some(MESSAGE_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(MESSAGE_TIMEOUT)))
            .map_err(|e| format!("socket: {e}"))?;
        let epoll = Epoll::new().map_err(|e| format!("epoll: {e}"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                stream.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_SOCKET),
            )
            .map_err(|e| format!("epoll: {e}"))?;
        for (i, fd) in self.ready_fds.iter().enumerate() {
            let events = EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED;
            match epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(events, TOKEN_BACKEND + i as u64),
            ) {
                // A regular file (a `file` chardev's `input-path`) cannot
                // be polled and is always ready: the backend tick serves it.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
                r => r.map_err(|e| format!("epoll on a backend fd: {e}"))?,
            }
        }
        let events = vec![EpollEvent::default(); 4 + self.vrings.len() + self.ready_fds.len()];
        self.ready.clear();
        self.ready_backend = false;
        Ok(Connection {
            stream,
            epoll,
            events,
        })
    }

    /// One round of the serving loop: one wait for events (for ever or a
    /// [`BACKEND_TICK`] with `wait`, not at all without, nor while rings
    /// wait on the ready list), the events handled in the order epoll
    /// gives them (a message, a kick, backend readiness), then the ready
    /// list resumed. `Err` closes the connection.
    fn round(&mut self, conn: &mut Connection, wait: bool) -> Result<Round, String> {
        // Work waits on the ready list: look for events, do not wait for
        // them.
        let pending = !self.ready.is_empty() || self.ready_backend;
        let polling = wait && self.poll.polling(Instant::now());
        if polling && !self.rings_polled {
            self.start_ring_polling();
        } else if !polling && self.rings_polled && self.stop_ring_polling() {
            // Chains arrived while the notifications were off: served, and
            // the window opens again instead of a sleep.
            self.poll.waited(Instant::now(), true, true);
            self.resume();
            self.memory_intact()?;
            return Ok(Round::Busy);
        }
        let timeout = if pending || !wait || polling {
            0
        } else if self.ready_fds.is_empty() || self.active.is_none() {
            -1
        } else {
            BACKEND_TICK.as_millis() as i32
        };
        let n = match conn.epoll.wait(timeout, &mut conn.events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(Round::Busy),
            Err(e) => return Err(format!("epoll: {e}")),
        };
        if wait && !pending {
            self.poll.waited(Instant::now(), polling, n > 0);
        }
        if n == 0 {
            if polling && !pending {
                if self.rings_polled && self.poll_rings() {
                    self.poll.waited(Instant::now(), true, true);
                }
                self.resume();
                self.memory_intact()?;
                return Ok(Round::Busy);
            }
            if !pending {
                if !wait {
                    return Ok(Round::Idle);
                }
                // The backend tick.
                self.backend_ready();
            }
            self.resume();
            self.memory_intact()?;
            return Ok(Round::Busy);
        }
        let mut backend = false;
        for ev in &conn.events[..n] {
            match ev.data() {
                TOKEN_SOCKET => {
                    let frame = match codec::recv_frame(&conn.stream) {
                        Ok(Some(f)) => f,
                        Ok(None) => return Ok(Round::Closed),
                        Err(RecvError::Eof { got }) => {
                            return Err(format!(
                                "frontend disconnected inside a message ({got} bytes)"
                            ));
                        }
                        Err(e) => return Err(e.to_string()),
                    };
                    self.on_frame(&conn.stream, &conn.epoll, frame)?;
                }
                t if t >= TOKEN_BACKEND => backend = true,
                t => {
                    let i = usize::try_from(t - TOKEN_KICK).unwrap_or(usize::MAX);
                    self.kicked(i);
                    self.memory_intact()?;
                }
            }
        }
        if backend {
            self.backend_ready();
        }
        self.resume();
        self.memory_intact()?;
        Ok(Round::Busy)
    }

    /// Ends the session if an access to one of its regions faulted (the
    /// frontend shrank the file under it, see `memory`), naming the region.
    fn memory_intact(&self) -> Result<(), String> {
        match self.regions.lost() {
            Some(e) => Err(e.to_string()),
            None => Ok(()),
        }
    }

    /// Serves each ring on the ready list once more (one budget each, in
    /// the order they stopped); those that stop again go back on it.
    fn resume(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        for i in ready {
            if self.is_running(i) {
                self.serve_queue(i);
            }
        }
        if std::mem::take(&mut self.ready_backend) {
            self.backend_ready();
        }
    }

    fn reply_ack(&self) -> bool {
        self.protocol & protocol::REPLY_ACK != 0
    }

    /// Handles one frame: decodes, acts, replies. `Err` closes the
    /// connection.
    fn on_frame(&mut self, stream: &UnixStream, epoll: &Epoll, frame: Frame) -> Result<(), String> {
        self.stats.requests += 1;
        let header = frame.header;
        let ack = header.need_reply() && self.reply_ack();
        let request = Request::from_code(header.request);
        let name = request.map_or_else(
            || format!("request {}", header.request),
            |r| format!("{r:?}"),
        );
        let send = |bytes: Vec<u8>| {
            codec::send_with_fds(stream, &bytes, &[]).map_err(|e| {
                let why = match e.kind() {
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                        "the frontend closed the connection".to_string()
                    }
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
                        "the frontend did not read it within {} s",
                        MESSAGE_TIMEOUT.as_secs()
                    ),
                    _ => e.to_string(),
                };
                format!("sending the {name} reply: {why}")
            })
        };
        let msg = match frame.decode() {
            Ok(m) => m,
            Err(e) => {
                self.refused(&BackendError::Codec(e.clone()));
                return match (ack, request) {
                    (true, Some(r)) => send(codec::reply_u64(r, 1)),
                    _ => Err(e.to_string()),
                };
            }
        };
        if self.verbose {
            self.emit(format_args!("{msg:?} ({} fds)", frame.fds.len()));
        }
        let has_reply = msg.has_reply();
        let req = msg.request();
        let handled = self.handle(epoll, &header, msg, frame.fds);
        // A request that ran the device (activation serves the rings) may
        // have met a shrunk region: no acknowledgement then.
        self.memory_intact()?;
        match handled {
            Ok(Some(reply)) => send(reply),
            Ok(None) if ack => send(codec::reply_u64(req, 0)),
            Ok(None) => Ok(()),
            Err(e) => {
                self.refused(&e);
                if ack && !has_reply {
                    send(codec::reply_u64(req, 1))
                } else if has_reply || !e.recoverable() {
                    Err(format!("{req:?} refused: {e}"))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Counts a refusal; logs it the first time its kind is seen this
    /// session (the repeats are counted and logged when it ends), within
    /// the rate limit of its kind.
    fn refused(&mut self, e: &BackendError) {
        self.stats.refused += 1;
        self.stats.last_error = Some(e.to_string());
        if self.refusals.first(e) || self.verbose {
            self.log(e.kind(), format_args!("refused: {e}"));
        }
    }

    /// Whether `VHOST_USER_F_PROTOCOL_FEATURES` is in force: this backend
    /// always offers it, so it is once the frontend sent
    /// `SET_PROTOCOL_FEATURES` (frontends send it before `SET_FEATURES`,
    /// and some enable rings in between) or acknowledged the bit.
    fn protocol_in_force(&self) -> bool {
        self.protocol_set || self.acked & VHOST_USER_F_PROTOCOL_FEATURES != 0
    }

    /// The protocol features offered: [`PROTOCOL_FEATURES`], and
    /// `CRYPTO_SESSION` for a crypto device.
    fn protocol_offered(&self) -> u64 {
        if self.device.device_type() == DeviceType::Crypto {
            PROTOCOL_FEATURES | protocol::CRYPTO_SESSION
        } else {
            PROTOCOL_FEATURES
        }
    }

    /// Whether the frontend keeps the crypto device's control queue and
    /// makes sessions with `CREATE_CRYPTO_SESSION` (QEMU's
    /// `cryptodev-vhost-user`). QEMU 7.2 then never sends
    /// `SET_VRING_ENABLE` (rings run once kicked) and acknowledges only
    /// `VHOST_USER_F_PROTOCOL_FEATURES` with `SET_FEATURES`, while its
    /// guest negotiated `VIRTIO_F_VERSION_1`, indirect descriptors and event
    /// indices (its defaults, which Linux accepts): the device runs with
    /// those.
    fn crypto_sessions(&self) -> bool {
        self.protocol & protocol::CRYPTO_SESSION != 0
    }

    /// Whether the frontend is QEMU's `cryptodev-vhost-user`, which does
    /// not pass the guest's features on: `CRYPTO_SESSION` in force and
    /// `VIRTIO_F_VERSION_1` not acknowledged (a frontend that passes every
    /// queue through, `vhost-user-device`, acknowledges the guest's
    /// features and enables rings itself).
    fn crypto_quirks(&self) -> bool {
        self.crypto_sessions() && self.acked & TransportFeatures::VERSION_1.bits() == 0
    }

    /// Closes the sessions this frontend made by message (a reset of the
    /// owner or the device, or the end of the connection).
    fn close_crypto_sessions(&mut self) {
        for id in core::mem::take(&mut self.crypto_ids) {
            let _ = self.device.close_session(id);
        }
    }

    fn ring(&mut self, index: u32) -> Result<&mut Vring, BackendError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.vrings.get_mut(i))
            .ok_or(BackendError::NoSuchRing(index))
    }

    /// Acts on one decoded request; `Ok(Some(bytes))` is the reply a
    /// `GET_*` request owes.
    fn handle(
        &mut self,
        epoll: &Epoll,
        _header: &Header,
        msg: Message,
        fds: Vec<OwnedFd>,
    ) -> Result<Option<Vec<u8>>, BackendError> {
        match msg {
            Message::GetFeatures => Ok(Some(codec::reply_u64(
                Request::GetFeatures,
                self.features(),
            ))),
            Message::SetFeatures(f) => {
                let offered = self.features();
                if f & !offered != 0 {
                    return Err(BackendError::FeaturesNotOffered { acked: f, offered });
                }
                self.acked = f;
                // §5.2.5.1: configuration that depends on the features
                // (blk `writeback`) takes its value before GET_CONFIG.
                self.device.features_ok(f);
                self.reconcile();
                Ok(None)
            }
            Message::SetOwner => Ok(None),
            Message::ResetOwner | Message::ResetDevice => {
                self.reset_rings(epoll);
                self.close_crypto_sessions();
                self.acked = 0;
                Ok(None)
            }
            Message::GetProtocolFeatures => Ok(Some(codec::reply_u64(
                Request::GetProtocolFeatures,
                self.protocol_offered(),
            ))),
            Message::SetProtocolFeatures(f) => {
                let offered = self.protocol_offered();
                if f & !offered != 0 {
                    return Err(BackendError::FeaturesNotOffered { acked: f, offered });
                }
                self.protocol = f;
                self.protocol_set = true;
                Ok(None)
            }
            Message::GetQueueNum => Ok(Some(codec::reply_u64(
                Request::GetQueueNum,
                self.queue_num(),
            ))),
            Message::GetMaxMemSlots => Ok(Some(codec::reply_u64(
                Request::GetMaxMemSlots,
                MAX_MEM_SLOTS as u64,
            ))),
            Message::SetMemTable(regions) => {
                self.quiesce();
                self.regions
                    .replace(&regions, &fds, &self.mem)
                    .map_err(BackendError::Memory)?;
                Ok(None)
            }
            Message::AddMemReg(r) => {
                let fd = fds.first().ok_or(BackendError::Codec(CodecError::FdCount {
                    request: Request::AddMemReg,
                    want: 1,
                    got: 0,
                }))?;
                self.quiesce();
                self.regions
                    .add(&r, fd, &self.mem)
                    .map_err(BackendError::Memory)?;
                Ok(None)
            }
            Message::RemMemReg(r) => {
                self.quiesce();
                self.regions
                    .remove(&r, &self.mem)
                    .map_err(BackendError::Memory)?;
                Ok(None)
            }
            Message::SetVringNum(VringState { index, num }) => {
                let max = self
                    .device
                    .queue_max_sizes()
                    .get(index as usize)
                    .copied()
                    .ok_or(BackendError::NoSuchRing(index))?;
                let ring = self.ring(index)?;
                if ring.runnable() {
                    return Err(BackendError::RingRunning(index));
                }
                let size = QueueSize::new(num)
                    .ok()
                    .filter(|s| s.get() <= max)
                    .ok_or(BackendError::BadRingSize { index, num, max })?;
                ring.size = Some(size);
                ring.layout = None;
                Ok(None)
            }
            Message::SetVringAddr(addr) => {
                // `VHOST_VRING_F_LOG` asks for used-ring writes to be
                // logged, which needs `VHOST_F_LOG_ALL`; this backend offers
                // no dirty log, so accepting the bit would let a frontend
                // believe its migration sees every page the device wrote.
                if addr.flags & 1 != 0 {
                    return Err(BackendError::BadLayout {
                        index: addr.index,
                        why: "dirty logging (VHOST_VRING_F_LOG) asked for, but \
                              VHOST_F_LOG_ALL is not offered"
                            .into(),
                    });
                }
                let layout = self.translate(&addr)?;
                let ring = self.ring(addr.index)?;
                let moved = ring.layout.is_some_and(|l| l != layout);
                ring.layout = Some(layout);
                if moved && self.is_running(addr.index as usize) {
                    // A running ring moved: activate the device again, every
                    // ring where it stood.
                    self.save_positions();
                    self.active = None;
                    self.device.reset();
                }
                self.reconcile();
                Ok(None)
            }
            Message::SetVringBase(VringState { index, num }) => {
                let ring = self.ring(index)?;
                if ring.runnable() {
                    return Err(BackendError::RingRunning(index));
                }
                ring.base =
                    u16::try_from(num).map_err(|_| BackendError::BadBase { index, base: num })?;
                Ok(None)
            }
            Message::GetVringBase(VringState { index, .. }) => {
                self.ring(index)?;
                let i = index as usize;
                let base = if self.is_running(i) {
                    self.quiesce();
                    self.position(i)
                } else {
                    self.vrings[i].base
                };
                let ring = self.ring(index)?;
                // Stop the ring ("Ring states": GET_VRING_BASE stops it).
                ring.base = base;
                ring.started = false;
                if let Some(k) = ring.kick.take() {
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        k.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                self.reconcile();
                Ok(Some(codec::reply_vring_state(VringState {
                    index,
                    num: u32::from(base),
                })))
            }
            Message::SetVringKick(VringFd { index, has_fd }) => {
                if !has_fd {
                    return Err(BackendError::KickWithoutFd(index));
                }
                let fd = fds.into_iter().next().ok_or(BackendError::NotAnEventFd)?;
                if !is_eventfd(&fd) || !set_nonblocking(&fd) {
                    return Err(BackendError::NotAnEventFd);
                }
                // vhost-user.rst "Ring states": without protocol features a
                // ring starts enabled; so does a crypto frontend's (see
                // `crypto_sessions`).
                let auto_enable = !self.protocol_in_force() || self.crypto_quirks();
                let ring = self.ring(u32::from(index))?;
                epoll
                    .ctl(
                        ControlOperation::Add,
                        fd.as_raw_fd(),
                        EpollEvent::new(EventSet::IN, TOKEN_KICK + u64::from(index)),
                    )
                    .map_err(BackendError::Epoll)?;
                if let Some(old) = ring.kick.replace(fd) {
                    let _ = epoll.ctl(
                        ControlOperation::Delete,
                        old.as_raw_fd(),
                        EpollEvent::default(),
                    );
                }
                ring.started = true;
                if auto_enable {
                    ring.enabled = true;
                }
                self.reconcile();
                Ok(None)
            }
            Message::SetVringCall(VringFd { index, has_fd })
            | Message::SetVringErr(VringFd { index, has_fd }) => {
                let is_call = matches!(msg, Message::SetVringCall(_));
                let fd = if has_fd {
                    let fd = fds.into_iter().next().ok_or(BackendError::NotAnEventFd)?;
                    if !is_eventfd(&fd) || !set_nonblocking(&fd) {
                        return Err(BackendError::NotAnEventFd);
                    }
                    Some(fd)
                } else {
                    None
                };
                let ring = self.ring(u32::from(index))?;
                if is_call {
                    ring.call = fd;
                } else {
                    ring.err = fd;
                }
                Ok(None)
            }
            Message::SetVringEnable(VringState { index, num }) => {
                // "Enabled" is a state of its own, in any order: QEMU's
                // vhost-user netdev disables its rings right after
                // SET_OWNER, before SET_FEATURES, and a frontend may enable
                // a ring before addressing or kicking it. The ring runs once
                // it is enabled, addressed and started (`Vring::runnable`);
                // nothing here touches memory.
                let ring = self.ring(index)?;
                match num {
                    0 => ring.enabled = false,
                    1 => ring.enabled = true,
                    n => return Err(BackendError::BadEnable(n)),
                }
                self.reconcile();
                Ok(None)
            }
            Message::GetConfig(Config {
                offset,
                flags,
                data,
            }) => {
                let size = data.len();
                let ok = (offset as usize)
                    .checked_add(size)
                    .is_some_and(|end| end <= MAX_CONFIG);
                if !ok {
                    // "the back-end ... replies with a payload of size 0".
                    self.refused(&BackendError::ConfigRange { offset, size });
                    return Ok(Some(codec::reply_config(offset, flags, &[])));
                }
                let mut buf = vec![0u8; size];
                self.device.read_config(u64::from(offset), &mut buf);
                Ok(Some(codec::reply_config(offset, flags, &buf)))
            }
            Message::SetConfig(Config { offset, data, .. }) => {
                let ok = (offset as usize)
                    .checked_add(data.len())
                    .is_some_and(|end| end <= self.device.config_len());
                if !ok {
                    return Err(BackendError::ConfigRange {
                        offset,
                        size: data.len(),
                    });
                }
                self.device.write_config(u64::from(offset), &data);
                Ok(None)
            }
            Message::CreateCryptoSession(mut c) => {
                // The reply is the request with the id, negative when
                // refused (QEMU turns that into VIRTIO_CRYPTO_ERR), also
                // without the protocol feature: the frontend waits for it.
                let made = if self.crypto_sessions() {
                    crypto_session_spec(&c)
                        .and_then(|spec| self.device.create_session(&spec))
                        .and_then(Result::ok)
                } else {
                    None
                };
                c.session_id = match made {
                    Some(id) => {
                        self.crypto_ids.push(id);
                        i64::try_from(id).unwrap_or(-1)
                    }
                    None => -1,
                };
                // The keys do not travel back.
                c.key.fill(0);
                c.auth_key.fill(0);
                Ok(Some(codec::reply_crypto_session(&c)))
            }
            Message::CloseCryptoSession(id) => {
                if !self.crypto_sessions() {
                    return Err(BackendError::Unsupported(Request::CloseCryptoSession));
                }
                // No reply: QEMU reads none.
                self.crypto_ids.retain(|&x| x != id);
                let _ = self.device.close_session(id);
                Ok(None)
            }
            Message::Unsupported(r) => Err(BackendError::Unsupported(r)),
        }
    }

    /// The guest-physical layout of a ring from frontend addresses
    /// (vhost-user.rst: "ring addresses are in the front-end's address
    /// space"), checked against the mapped memory (§2.7 sizes and
    /// alignment).
    fn translate(&mut self, addr: &VringAddr) -> Result<QueueLayout, BackendError> {
        let index = addr.index;
        let size = self
            .ring(index)?
            .size
            .ok_or(BackendError::SizeNotSet(index))?;
        let n = u64::from(size.get());
        let areas = [
            ("descriptor table", addr.desc, 16 * n),
            ("available ring", addr.avail, 6 + 2 * n),
            ("used ring", addr.used, 6 + 8 * n),
        ];
        let mut gpa = [0u64; 3];
        for (g, (area, a, len)) in gpa.iter_mut().zip(areas) {
            *g = self
                .regions
                .translate(a, len)
                .ok_or(BackendError::RingOutsideMemory {
                    index,
                    area,
                    addr: a,
                })?;
        }
        let layout = QueueLayout::new(
            size,
            GuestAddress(gpa[0]),
            GuestAddress(gpa[1]),
            GuestAddress(gpa[2]),
        )
        .map_err(|e| BackendError::BadLayout {
            index,
            why: e.to_string(),
        })?;
        layout
            .check_memory(&self.mem)
            .map_err(|e| BackendError::BadLayout {
                index,
                why: e.to_string(),
            })?;
        Ok(layout)
    }

    /// Brings the device in line with the set of runnable rings: reset and
    /// activate again when it changed, then serve every running ring once
    /// (buffers made available before the ring ran get no kick).
    fn reconcile(&mut self) {
        let want: Vec<bool> = self.vrings.iter().map(Vring::runnable).collect();
        if let Some(active) = self.active.clone() {
            if active == want {
                return;
            }
            // Every ring the device runs now keeps its place: one that
            // stops resumes there, one that runs on is started there again
            // after the re-activation below.
            self.save_positions();
            let only_stopped = want.iter().zip(&active).all(|(&w, &was)| !w || was);
            let known = (0u16..)
                .zip(&want)
                .filter(|(_, w)| **w)
                .all(|(q, _)| self.device.queue_position(q).is_some());
            if only_stopped && want.contains(&true) && !known {
                // Rings stopped, others run on, and the device cannot say
                // where those stand: a reset would restart them at the wrong
                // index, so the device stays live and the stopped rings are
                // masked (no kick served, no call written; a device serving
                // on backend readiness may still move them).
                self.active = Some(want);
                return;
            }
            // Otherwise the device is activated again without the stopped
            // rings (a stopped ring must not move: its position was
            // reported), the others where they stood.
        }
        if self.active.take().is_some() {
            self.device.reset();
        }
        if !want.iter().any(|&w| w) {
            return;
        }
        let configs = self
            .vrings
            .iter()
            .zip(&want)
            .map(|(v, &w)| QueueConfig {
                layout: if w { v.layout } else { None },
            })
            .collect();
        let mut features = self.acked & !VHOST_USER_F_PROTOCOL_FEATURES;
        if self.crypto_quirks() {
            features |= (TransportFeatures::VERSION_1
                | TransportFeatures::RING_INDIRECT_DESC
                | TransportFeatures::RING_EVENT_IDX)
                .bits()
                & self.device.device_features();
        }
        match self.device.activate(features, configs) {
            Ok(()) => {
                self.stats.activations += 1;
                // Activation starts every queue at 0; move the others.
                let bases: Vec<(u16, u16)> = (0u16..)
                    .zip(&self.vrings)
                    .zip(&want)
                    .filter(|((_, v), w)| **w && v.base != 0)
                    .map(|((q, v), _)| (q, v.base))
                    .collect();
                for (q, base) in bases {
                    if let Err(e) = self.device.set_queue_position(q, base) {
                        // The device cannot resume there: serving from 0
                        // would replay chains, so it stays down.
                        self.device.reset();
                        self.after(Err(e), Some(usize::from(q)));
                        return;
                    }
                }
                self.active = Some(want.clone());
                if self.rings_polled {
                    // The reset ended the device's part; the window is
                    // still open.
                    self.rings_polled = false;
                    self.start_ring_polling();
                }
                for (i, &w) in want.iter().enumerate() {
                    if w && let Some(idx) = self.used_idx(i) {
                        self.vrings[i].used_seen = idx;
                    }
                }
                for (i, &w) in want.iter().enumerate() {
                    if w {
                        self.serve_queue(i);
                    }
                }
            }
            Err(e) => {
                // Not all the rings the device needs run yet; the next
                // ring change tries again.
                if self.verbose {
                    self.emit(format_args!("device not activated yet: {e}"));
                }
            }
        }
    }

    /// Where running ring `i` stands: the device's
    /// [`VirtioDevice::queue_position`], or, from a device that does not
    /// know, the used index in guest memory (exact when the device holds
    /// no chain).
    fn position(&mut self, i: usize) -> u16 {
        if let Some(p) = u16::try_from(i)
            .ok()
            .and_then(|q| self.device.queue_position(q))
        {
            return p;
        }
        self.vrings
            .get(i)
            .and_then(|v| v.layout)
            .and_then(|l| self.mem.load_u16_acquire(l.used_idx()).ok())
            .unwrap_or(0)
    }

    /// Starts looking at the rings from the loop, with the driver's
    /// notifications off, if the device takes part.
    fn start_ring_polling(&mut self) {
        if self.active.is_none() {
            return;
        }
        if let Some(served) = self.device.set_polling(true) {
            self.rings_polled = true;
            self.after(served, None);
        }
    }

    /// Stops looking at the rings: the device turns notifications on and
    /// serves what arrived meanwhile; `true` if there was some.
    fn stop_ring_polling(&mut self) -> bool {
        self.rings_polled = false;
        let Some(served) = self.device.set_polling(false) else {
            return false;
        };
        let found = served.as_ref().is_ok_and(|s| s.completed > 0 || s.again);
        self.after(served, None);
        found
    }

    /// Serves every running ring once, as a kick would; `true` if any
    /// request completed.
    fn poll_rings(&mut self) -> bool {
        let mut found = false;
        for i in 0..self.vrings.len() {
            if !self.is_running(i) {
                continue;
            }
            let Ok(q) = u16::try_from(i) else {
                continue;
            };
            let served = self.device.queue_notify(q);
            found |= served.as_ref().is_ok_and(|s| s.completed > 0);
            self.after(served, Some(i));
        }
        found
    }

    /// Lets the device finish the requests its backend holds
    /// ([`VirtioDevice::quiesce`]) before ring positions are read or guest
    /// memory changes; their used entries get their calls.
    fn quiesce(&mut self) {
        if self.active.is_some() {
            let served = self.device.quiesce();
            self.after(served, None);
        }
    }

    /// Saves the place of every ring the device runs into its `base`.
    fn save_positions(&mut self) {
        self.quiesce();
        for i in 0..self.vrings.len() {
            if self.is_running(i) {
                self.vrings[i].base = self.position(i);
            }
        }
    }

    fn is_running(&self, i: usize) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.get(i).copied().unwrap_or(false))
    }

    fn kicked(&mut self, i: usize) {
        let Some(ring) = self.vrings.get(i) else {
            return;
        };
        if let Some(k) = &ring.kick {
            drain(k);
        }
        if self.is_running(i) {
            self.stats.kicks += 1;
            self.vrings[i].session.kicks += 1;
            if let Some(r) = self.stats.rings.get_mut(i) {
                r.kicks += 1;
            }
            self.serve_queue(i);
        }
    }

    fn serve_queue(&mut self, i: usize) {
        let Ok(q) = u16::try_from(i) else {
            return;
        };
        let served = self.device.queue_notify(q);
        self.after(served, Some(i));
    }

    fn backend_ready(&mut self) {
        if self.active.is_some() {
            let served = self.device.backend_ready();
            self.after(served, None);
        }
    }

    /// Acts on a device's answer: calls on a used-buffer notification,
    /// the error eventfd on a device error.
    fn after(&mut self, served: Result<Served, DeviceError>, queue: Option<usize>) {
        self.count_used();
        match served {
            Ok(s) => {
                if s.again {
                    match queue {
                        Some(q) if !self.ready.contains(&q) => self.ready.push(q),
                        Some(_) => {}
                        None => self.ready_backend = true,
                    }
                }
                if s.interrupt {
                    for i in 0..self.vrings.len() {
                        if s.interrupts(i)
                            && self.is_running(i)
                            && let Some(c) = &self.vrings[i].call
                            && signal(c)
                        {
                            self.stats.calls += 1;
                        }
                    }
                }
            }
            Err(e) => {
                self.stats.device_errors += 1;
                self.stats.last_error = Some(e.to_string());
                self.log(LOG_DEVICE_ERROR, format_args!("device error: {e}"));
                let q = match e {
                    DeviceError::Queue { queue, .. }
                    | DeviceError::QueueNotInMemory { queue, .. }
                    | DeviceError::QueueNotReady { queue }
                    | DeviceError::NoSuchQueue { queue } => Some(usize::from(queue)),
                    DeviceError::PositionUnsupported { queue }
                    | DeviceError::DisableUnsupported { queue } => Some(usize::from(queue)),
                    DeviceError::NotActivated | DeviceError::BackendGone => queue,
                }
                .or(queue);
                if let Some(err) = q
                    .and_then(|q| self.vrings.get(q))
                    .and_then(|v| v.err.as_ref())
                {
                    signal(err);
                }
            }
        }
    }

    /// The used index of running ring `i` in guest memory.
    fn used_idx(&self, i: usize) -> Option<u16> {
        let layout = self.vrings.get(i)?.layout?;
        self.mem.load_u16_acquire(layout.used_idx()).ok()
    }

    /// Adds what every running ring published since last seen to its
    /// counters.
    fn count_used(&mut self) {
        for i in 0..self.vrings.len() {
            if !self.is_running(i) {
                continue;
            }
            let Some(idx) = self.used_idx(i) else {
                continue;
            };
            let v = &mut self.vrings[i];
            let n = u64::from(idx.wrapping_sub(v.used_seen));
            v.used_seen = idx;
            v.session.used += n;
            if let Some(r) = self.stats.rings.get_mut(i) {
                r.used += n;
            }
        }
    }

    /// Logs this session's ring counters and the device's counters (lines
    /// [`logged_ring_used`] and [`logged_device_counter`] read back). The
    /// device's counters are asked for under `catch_unwind`: returns the
    /// device's panic, described.
    fn log_session_counters(&mut self) -> Option<String> {
        let rings: Vec<String> = self
            .vrings
            .iter()
            .enumerate()
            .filter(|(_, v)| v.session != RingStats::default())
            .map(|(i, v)| {
                format!(
                    "ring {i}: {} used, {} kicks",
                    v.session.used, v.session.kicks
                )
            })
            .collect();
        if !rings.is_empty() {
            let line = rings.join("; ");
            self.log(LOG_RING_COUNTERS, format_args!("{RING_COUNTERS} {line}"));
        }
        let counters = match catch_unwind(AssertUnwindSafe(|| self.device.counters())) {
            Ok(c) => c,
            Err(p) => {
                self.panicked = true;
                return Some(format!(
                    "device panicked in counters: {}",
                    panic_message(&*p)
                ));
            }
        };
        let counters: Vec<String> = counters
            .iter()
            .filter(|(_, n)| *n != 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        if !counters.is_empty() {
            let line = counters.join(" ");
            self.log(
                LOG_DEVICE_COUNTERS,
                format_args!("{DEVICE_COUNTERS} {line}"),
            );
        }
        None
    }

    /// Stops every ring and resets the device (`RESET_DEVICE`, end of
    /// session).
    fn reset_rings(&mut self, epoll: &Epoll) {
        self.count_used();
        if self.active.take().is_some() {
            self.device.reset();
        }
        self.rings_polled = false;
        for v in &mut self.vrings {
            if let Some(k) = v.kick.take() {
                let _ = epoll.ctl(
                    ControlOperation::Delete,
                    k.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            let session = v.session;
            *v = Vring::default();
            v.session = session;
        }
    }

    /// Ends the session: the counters logged, every ring dropped, the
    /// memory unmapped, the negotiation forgotten, and the device reset if
    /// it ran or panicked. The device is called only under `catch_unwind`
    /// and never between clearing steps, so its panic cannot leave the
    /// next frontend with this one's state; it is returned, described.
    fn end_session(&mut self) -> Option<String> {
        self.count_used();
        let mut panicked = self.log_session_counters();
        let was_active = self.active.take().is_some();
        // The device's reset below ends its part in polling.
        self.rings_polled = false;
        // Nothing the backend holds may still reach the memory unmapped
        // below.
        if was_active && catch_unwind(AssertUnwindSafe(|| self.device.quiesce())).is_err() {
            self.panicked = true;
            // Its reset waits for the backend too; the memory goes after.
            let _ = catch_unwind(AssertUnwindSafe(|| self.device.reset()));
        }
        // The session's epoll is gone; dropping the kicks closes them.
        for v in &mut self.vrings {
            *v = Vring::default();
        }
        self.regions.clear(&self.mem);
        // The frontend's crypto sessions end with its connection.
        if catch_unwind(AssertUnwindSafe(|| self.close_crypto_sessions())).is_err() {
            self.panicked = true;
        }
        self.acked = 0;
        self.protocol = 0;
        self.protocol_set = false;
        for (kind, n) in self.refusals.take_repeated() {
            self.log(
                LOG_REFUSAL_COUNTS,
                format_args!("refused {n} requests this session: {kind} (logged once)"),
            );
        }
        // Last, so that a device panicking here leaves the session clean.
        if was_active || self.panicked {
            match catch_unwind(AssertUnwindSafe(|| self.device.reset())) {
                Ok(()) => self.panicked = false,
                // Still suspect: reset again when the next session ends.
                Err(p) => {
                    self.panicked = true;
                    let e = format!("device panicked in reset: {}", panic_message(&*p));
                    panicked = Some(match panicked {
                        Some(first) => format!("{first}; then {e}"),
                        None => e,
                    });
                }
            }
        }
        panicked
    }
}

/// A frontend's connection as the serving loop holds it.
struct Connection {
    stream: UnixStream,
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

/// What one round of the serving loop did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    /// Nothing was ready (only a round that does not wait).
    Idle,
    /// Events were handled, or rings on the ready list served.
    Busy,
    /// The frontend closed the connection between messages.
    Closed,
}

/// What [`SteppedSession::poll`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing was ready: every message and kick sent so far is handled,
    /// and no ring waits on the ready list.
    Idle,
    /// A round handled events or served rings on the ready list; poll
    /// again.
    Busy,
    /// The session ended ([`SteppedSession::end`] says how), now or
    /// before.
    Ended,
}

/// A session its caller runs one round at a time ([`Backend::serve_stepped`]).
/// Dropping it ends the session if it has not ended, as if the frontend
/// hung up.
pub struct SteppedSession<'b, D: VirtioDevice> {
    backend: &'b mut Backend<D>,
    conn: Option<Connection>,
    end: Option<SessionEnd>,
}

impl<D: VirtioDevice> SteppedSession<'_, D> {
    /// Runs one round of the serving loop without waiting: the events
    /// ready now (one message at most, kicks, backend readiness), then the
    /// rings on the ready list. A panic in the device ends the session, as
    /// under [`Backend::serve_connection`].
    pub fn poll(&mut self) -> Progress {
        let Some(conn) = self.conn.as_mut().filter(|_| self.end.is_none()) else {
            return Progress::Ended;
        };
        let mut round = Round::Idle;
        let result = self.backend.catching(|b| {
            round = b.round(conn, false)?;
            Ok(())
        });
        match (result, round) {
            (Ok(()), Round::Idle) => Progress::Idle,
            (Ok(()), Round::Busy) => Progress::Busy,
            (result, _) => {
                self.end_with(result);
                Progress::Ended
            }
        }
    }

    /// Polls until a round finds nothing to do or the session ends, at
    /// most `max_rounds` rounds (a device that always asks to be served
    /// again would keep it busy for ever): [`Progress::Busy`] if the
    /// rounds ran out.
    pub fn run_until_idle(&mut self, max_rounds: usize) -> Progress {
        for _ in 0..max_rounds {
            match self.poll() {
                Progress::Busy => {}
                p => return p,
            }
        }
        Progress::Busy
    }

    /// How the session ended, once it has.
    pub fn end(&self) -> Option<&SessionEnd> {
        self.end.as_ref()
    }

    /// The backend serving the session (its counters, its device).
    pub fn backend(&self) -> &Backend<D> {
        self.backend
    }

    /// Ends the session, as if the frontend hung up, unless it has ended;
    /// returns how it ended.
    pub fn finish(mut self) -> SessionEnd {
        if self.end.is_none() {
            self.end_with(Ok(()));
        }
        self.end.take().unwrap_or(SessionEnd::Closed)
    }

    /// Clears the session for the next frontend, then closes the
    /// connection (as `serve_connection` does).
    fn end_with(&mut self, result: Result<(), String>) {
        let conn = self.conn.take();
        self.end = Some(self.backend.close(result));
        drop(conn);
    }
}

impl<D: VirtioDevice> Drop for SteppedSession<'_, D> {
    fn drop(&mut self) {
        if self.end.is_none() {
            self.end_with(Ok(()));
        }
    }
}

impl<D: VirtioDevice> fmt::Debug for SteppedSession<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SteppedSession")
            .field("backend", &self.backend)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// The marker of the session's ring counters line in the backend's log.
pub const RING_COUNTERS: &str = "session ring counters:";
/// The marker of the device's counters line in the backend's log.
pub const DEVICE_COUNTERS: &str = "device counters:";

/// Counter `name` from the last device-counters line of a backend's log
/// (`name=N`; a counter at 0 is not printed, so absent reads as 0).
pub fn logged_device_counter(log: &str, name: &str) -> u64 {
    log.lines()
        .rfind(|l| l.contains(DEVICE_COUNTERS))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Used elements per ring from the last ring-counters line of a backend's
/// log (`ring I: N used, K kicks; …`).
pub fn logged_ring_used(log: &str) -> std::collections::BTreeMap<usize, u64> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(l) = log.lines().rfind(|l| l.contains(RING_COUNTERS)) {
        for part in l.split("ring ").skip(1) {
            let mut w = part.split_whitespace();
            let ring = w.next().and_then(|r| r.trim_end_matches(':').parse().ok());
            let used = w.next().and_then(|u| u.parse().ok());
            if let (Some(r), Some(u)) = (ring, used) {
                out.insert(r, u);
            }
        }
    }
    out
}

#[cfg(test)]
mod crypto_session_tests {
    use super::*;
    use zerocopy::FromZeros;

    fn session(cipher_alg: u32, key_len: u32, op_type: u8, direction: u8) -> codec::CryptoSession {
        let mut c = codec::CryptoSession::new_zeroed();
        c.cipher_alg = cipher_alg;
        c.key_len = key_len;
        c.op_type = op_type;
        c.direction = direction;
        c
    }

    /// A `CREATE_CRYPTO_SESSION` asks for a cipher session this device can
    /// make, or for none: chaining, an unknown cipher, a direction other
    /// than encrypt or decrypt, and a key longer than the message holds
    /// are refused (the reply's id is then negative).
    #[test]
    fn only_cipher_sessions_the_message_can_hold_are_made() {
        let ok = session(3, 16, 1, 1);
        assert!(matches!(
            crypto_session_spec(&ok),
            Some(backends::crypto::SessionSpec::Cipher { key, .. }) if key.len() == 16
        ));
        for bad in [
            session(3, 16, 2, 1),
            session(99, 16, 1, 1),
            session(3, 16, 1, 3),
            session(3, 65, 1, 2),
        ] {
            assert_eq!(crypto_session_spec(&bad), None, "{bad:?}");
        }
    }
}
