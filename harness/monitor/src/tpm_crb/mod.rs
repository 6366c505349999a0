//! The TPM 2.0 Command Response Buffer interface (QEMU's `-device
//! tpm-crb`): TCG PC Client Platform TPM Profile (PTP) specification,
//! Family 2.0, section 6.5.3 ("CRB Interface") and its register tables.
//!
//! Five locality pages of 4 KiB from [`CRB_BASE`] (`0xFED4_0000`): in
//! each, the locality registers (`TPM_LOC_STATE_x`, `TPM_LOC_CTRL_x`,
//! `TPM_LOC_STS_x`), the interface identifier, the control area
//! (`TPM_CRB_CTRL_REQ_x`, `_STS_x`, `_CANCEL_x`, `_START_x`, the buffer
//! addresses and sizes) and, from offset `0x80`, an alias of the data
//! buffer. The data buffer is one, seen from every page; the monitor puts
//! it in a RAM page of its own ([`TpmCrb::with_ram`], [`BUFFER_PAGE`]),
//! which the buffer address registers name. A page's control area and
//! alias take writes only from the active locality.
//!
//! A command runs on a thread of its own; the `START` write waits for it
//! up to [`SYNC_WAIT`] (most commands finish by then, and the guest's
//! first poll finds `START` clear), then the guest keeps running, polls
//! `START`, and can cancel it. How the device answers what a guest
//! should not do:
//!
//! - a write to a read-only register, or a control area or alias write
//!   from a locality that is not active, is dropped (and counted);
//! - alias reads from a locality that is not active return all ones;
//!   reads during a command return the buffer as it is (the command
//!   until the response lands); alias writes during a command are
//!   dropped (the RAM page cannot refuse them: the command was copied at
//!   `START`, and its response overwrites them);
//! - `START` while the TPM is idle (no `cmdReady` since `goIdle`) is
//!   dropped; a command whose header gives a size under 10 bytes or over
//!   the buffer gets a response of `TPM_RC_COMMAND_SIZE` from the device
//!   itself, without reaching the backend;
//! - the backend's channel failing (swtpm dies mid-command) or a response
//!   that does not parse sets the fatal-error bit `tpmSts` in
//!   `TPM_CRB_CTRL_STS` and clears `START`; every later `START` leaves the
//!   buffer as it is and `START` clear, until [`TpmCrb::reset`] restarts
//!   the backend.
//!
//! QEMU's `tpm-crb` implements locality 0 alone (its `CapLocality` is 0);
//! this one implements all five (`CapLocality` 1).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backends::tpm::{HEADER_LEN, TpmBackend, TpmError, header_size};

use crate::bus::MmioDevice;
use crate::vm::DeviceRam;

#[cfg(test)]
mod tests;

/// Where the interface sits (PTP: the fixed address of locality 0).
pub const CRB_BASE: u64 = 0xFED4_0000;
/// The localities, 0 to 4, one page each.
pub const LOCALITIES: u8 = 5;
/// One locality's page.
pub const LOCALITY_STRIDE: u64 = 0x1000;
/// The whole range on the bus.
pub const CRB_SIZE: u64 = LOCALITY_STRIDE * LOCALITIES as u64;
/// The upper half of `TPM_CRB_CTRL_RSP_ADDR_x`.
const RSP_ADDR_HI: u64 = reg::RSP_ADDR + 4;

/// Where [`crate::machine::Machine`] maps the RAM page of the data buffer
/// ([`TpmCrb::with_ram`]): the page after the five locality pages, inside
/// the PC's TPM range (`0xFED4_0000` to `0xFED4_FFFF`). (QEMU puts its
/// physical presence interface there, which this device does not have.)
pub const BUFFER_PAGE: u64 = CRB_BASE + CRB_SIZE;

/// The data buffer's size behind the alias: the rest of a page after the
/// registers.
pub const BUFFER_SIZE: usize = (LOCALITY_STRIDE - reg::DATA_BUFFER) as usize;

/// Register offsets in a locality's page (PTP, the CRB register table).
pub mod reg {
    /// `TPM_LOC_STATE_x`: the locality state, the same in every page.
    pub const LOC_STATE: u64 = 0x00;
    /// `TPM_LOC_CTRL_x`: request, relinquish, seize, reset establishment.
    pub const LOC_CTRL: u64 = 0x08;
    /// `TPM_LOC_STS_x`: granted, been seized (this page's locality).
    pub const LOC_STS: u64 = 0x0c;
    /// `TPM_CRB_INTF_ID_x`: interface type, version and capabilities.
    pub const INTF_ID: u64 = 0x30;
    /// `TPM_CRB_INTF_ID_x`, upper half: vendor and device id.
    pub const INTF_ID_HI: u64 = 0x34;
    /// `TPM_CRB_CTRL_EXT_x`: reserved for extensions.
    pub const CTRL_EXT: u64 = 0x38;
    /// `TPM_CRB_CTRL_REQ_x`: cmdReady, goIdle.
    pub const CTRL_REQ: u64 = 0x40;
    /// `TPM_CRB_CTRL_STS_x`: tpmSts (fatal error), tpmIdle.
    pub const CTRL_STS: u64 = 0x44;
    /// `TPM_CRB_CTRL_CANCEL_x`.
    pub const CTRL_CANCEL: u64 = 0x48;
    /// `TPM_CRB_CTRL_START_x`.
    pub const CTRL_START: u64 = 0x4c;
    /// `TPM_CRB_INT_ENABLE_x` (no interrupts here: reads 0).
    pub const INT_ENABLE: u64 = 0x50;
    /// `TPM_CRB_INT_STS_x`.
    pub const INT_STS: u64 = 0x54;
    /// `TPM_CRB_CTRL_CMD_SIZE_x`.
    pub const CMD_SIZE: u64 = 0x58;
    /// `TPM_CRB_CTRL_CMD_LADDR_x`.
    pub const CMD_LADDR: u64 = 0x5c;
    /// `TPM_CRB_CTRL_CMD_HADDR_x`.
    pub const CMD_HADDR: u64 = 0x60;
    /// `TPM_CRB_CTRL_RSP_SIZE_x`.
    pub const RSP_SIZE: u64 = 0x64;
    /// `TPM_CRB_CTRL_RSP_ADDR_x` (64 bits).
    pub const RSP_ADDR: u64 = 0x68;
    /// `TPM_CRB_DATA_BUFFER_x`: to the end of the page.
    pub const DATA_BUFFER: u64 = 0x80;
}

/// Bits of `TPM_LOC_STATE_x`.
pub mod loc_state {
    /// `tpmEstablishment`: 1 while no dynamic root of trust has been
    /// established (the TPM's flag, inverted).
    pub const NOT_ESTABLISHED: u32 = 1 << 0;
    /// `locAssigned`: some locality is active.
    pub const LOC_ASSIGNED: u32 = 1 << 1;
    /// `activeLocality`, bits 2 to 4.
    pub const ACTIVE_SHIFT: u32 = 2;
    /// `tpmRegValidSts`: the other bits are valid.
    pub const REG_VALID: u32 = 1 << 7;
}

/// Bits written to `TPM_LOC_CTRL_x`.
pub mod loc_ctrl {
    /// `requestAccess`.
    pub const REQUEST_ACCESS: u32 = 1 << 0;
    /// `relinquish`.
    pub const RELINQUISH: u32 = 1 << 1;
    /// `seize`: a higher locality takes over from a lower one.
    pub const SEIZE: u32 = 1 << 2;
    /// `resetEstablishmentBit` (localities 3 and 4).
    pub const RESET_ESTABLISHMENT: u32 = 1 << 3;
}

/// Bits of `TPM_LOC_STS_x`.
pub mod loc_sts {
    /// `Granted`: this page's locality is active.
    pub const GRANTED: u32 = 1 << 0;
    /// `beenSeized`: a higher locality seized it.
    pub const BEEN_SEIZED: u32 = 1 << 1;
}

/// Bits of `TPM_CRB_CTRL_REQ_x` and `TPM_CRB_CTRL_STS_x`.
pub mod ctrl {
    /// `REQ.cmdReady`: leave idle, ready for a command.
    pub const CMD_READY: u32 = 1 << 0;
    /// `REQ.goIdle`.
    pub const GO_IDLE: u32 = 1 << 1;
    /// `STS.tpmSts`: a fatal error; the TPM needs a reset.
    pub const STS_FATAL: u32 = 1 << 0;
    /// `STS.tpmIdle`.
    pub const STS_IDLE: u32 = 1 << 1;
    /// `START` and `CANCEL`: the one bit.
    pub const INVOKE: u32 = 1 << 0;
}

/// `TPM_CRB_INTF_ID_x`, low half: InterfaceType 1 (CRB active),
/// InterfaceVersion 1, CapLocality 1 (five localities), no idle bypass,
/// CapDataXferSizeSupport 3 (64 bytes), no FIFO, CapCRB 1,
/// InterfaceSelector 1 (CRB), RID 0.
pub const INTF_ID_VALUE: u32 = 1 | (1 << 4) | (1 << 8) | (3 << 11) | (1 << 14) | (1 << 17);

/// `TPM_CRB_INTF_ID_x`, upper half: vendor 0x1014, the id QEMU's CRB
/// shows, so software that knows QEMU's TPM knows this one; device 0.
pub const INTF_ID_HI_VALUE: u32 = 0x1014;

/// How long the `START` write waits for the backend before returning to
/// the guest: most commands (swtpm answers GetRandom in a few
/// microseconds) complete within it, so the guest's first poll of
/// `START` finds it clear, and saves the polls' VM exits; longer ones
/// (key generation) complete while the guest polls.
pub const SYNC_WAIT: Duration = Duration::from_micros(500);

/// `TPM_RC_COMMAND_SIZE` (TPM 2.0 Part 2, 6.6.3): the size in the
/// header does not fit.
pub const TPM_RC_COMMAND_SIZE: u32 = 0x142;
/// `TPM_RC_LOCALITY` (Part 2, 6.6.3): the backend cannot run the command
/// at this locality (a host TPM).
pub const TPM_RC_LOCALITY: u32 = 0x907;

/// What the device counted: the guest's mistakes and the commands run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrbStats {
    /// Commands handed to the backend.
    pub commands: u64,
    /// Commands answered `TPM_RC_COMMAND_SIZE` by the device.
    pub bad_size: u64,
    /// Writes to read-only registers (or reserved space).
    pub read_only_writes: u64,
    /// Control area or buffer writes from a locality not active.
    pub inactive_writes: u64,
    /// Buffer writes while a command ran, `START` while idle or fatal.
    pub out_of_state: u64,
    /// Register writes not on a 4-byte boundary.
    pub misaligned: u64,
    /// Commands that ended with the fatal-error bit (backend failed).
    pub fatal: u64,
}

/// The interface's state, shared by the vCPU (registers) and the command
/// thread (completion).
struct State {
    active: Option<u8>,
    /// Localities waiting for access (bit per locality).
    pending: u8,
    /// Localities whose access was seized (bit per locality).
    seized: u8,
    idle: bool,
    fatal: bool,
    start: bool,
    cancel: bool,
    /// The TPM's `tpmEstablished` flag, read at reset.
    established: bool,
    /// The buffer size the backend agreed to (at most the buffer's).
    limit: usize,
    buffer: Buffer,
    /// Counts resets: a command started before one completes into
    /// nothing.
    generation: u64,
    stats: CrbStats,
}

/// Where commands and responses are: this process's memory, or a RAM
/// page the guest reaches without exits.
enum Buffer {
    /// Behind the MMIO alias at offset `0x80` of each page only.
    Heap(Box<[u8; BUFFER_SIZE]>),
    /// A guest RAM page (its address in `CMD_LADDR`/`RSP_ADDR`), also
    /// behind the alias.
    Ram(Arc<DeviceRam>),
}

impl Buffer {
    fn len(&self) -> usize {
        match self {
            Buffer::Heap(b) => b.len(),
            Buffer::Ram(r) => r.len(),
        }
    }

    fn read(&self, at: usize, out: &mut [u8]) -> bool {
        match self {
            Buffer::Heap(b) => match b.get(at..at.saturating_add(out.len())) {
                Some(src) => {
                    out.copy_from_slice(src);
                    true
                }
                None => false,
            },
            Buffer::Ram(r) => r.read(at, out),
        }
    }

    fn write(&mut self, at: usize, data: &[u8]) -> bool {
        match self {
            Buffer::Heap(b) => match b.get_mut(at..at.saturating_add(data.len())) {
                Some(dst) => {
                    dst.copy_from_slice(data);
                    true
                }
                None => false,
            },
            Buffer::Ram(r) => r.write(at, data),
        }
    }

    /// The address `CMD_LADDR`/`RSP_ADDR` give in `locality`'s page.
    fn address(&self, locality: u8) -> u64 {
        match self {
            Buffer::Heap(_) => CRB_BASE + u64::from(locality) * LOCALITY_STRIDE + reg::DATA_BUFFER,
            Buffer::Ram(r) => r.base(),
        }
    }
}

impl State {
    fn new(buffer: Buffer) -> State {
        State {
            active: None,
            pending: 0,
            seized: 0,
            idle: true,
            fatal: false,
            start: false,
            cancel: false,
            established: false,
            limit: buffer.len(),
            buffer,
            generation: 0,
            stats: CrbStats::default(),
        }
    }

    /// Grants access to the highest locality waiting, if none is active.
    fn grant_pending(&mut self) {
        if self.active.is_none() && self.pending != 0 {
            let l = 7 - self.pending.leading_zeros() as u8;
            self.pending &= !(1 << l);
            self.active = Some(l);
        }
    }

    /// Writes a header-only response with `rc` to the buffer.
    fn error_response(&mut self, rc: u32) {
        let mut r = [0u8; HEADER_LEN];
        r[..2].copy_from_slice(&0x8001u16.to_be_bytes());
        r[2..6].copy_from_slice(&(HEADER_LEN as u32).to_be_bytes());
        r[6..10].copy_from_slice(&rc.to_be_bytes());
        self.buffer.write(0, &r);
    }
}

/// A command for the command thread.
struct Job {
    locality: u8,
    command: Vec<u8>,
    /// The state's generation when it started.
    generation: u64,
}

/// A TPM CRB interface in front of a TPM backend: the device on the MMIO
/// bus (QEMU's `tpm-crb`).
pub struct TpmCrb {
    shared: Arc<Shared>,
    jobs: Option<Sender<Job>>,
}

/// What the registers and the command thread share.
struct Shared {
    state: Mutex<State>,
    backend: Arc<dyn TpmBackend + Send + Sync>,
    /// The backend has been shut down (the device is gone).
    closed: AtomicBool,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl fmt::Debug for TpmCrb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmCrb")
            .field("stats", &self.handle().stats())
            .finish_non_exhaustive()
    }
}

/// A view of a [`TpmCrb`] that stays with the caller once the device is
/// on the bus: its counters and its fatal-error bit.
#[derive(Clone)]
pub struct CrbHandle(Arc<Shared>);

impl fmt::Debug for CrbHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CrbHandle").field(&self.stats()).finish()
    }
}

impl CrbHandle {
    /// What the device counted so far.
    pub fn stats(&self) -> CrbStats {
        lock(&self.0.state).stats
    }

    /// Whether the fatal-error bit is set.
    pub fn is_fatal(&self) -> bool {
        lock(&self.0.state).fatal
    }

    /// Whether a command is running.
    pub fn is_busy(&self) -> bool {
        lock(&self.0.state).start
    }
}

impl TpmCrb {
    /// The interface in front of `backend`, which is started
    /// ([`TpmBackend::startup`]) with the buffer's size. Fails if the
    /// backend cannot start.
    pub fn new(backend: Arc<dyn TpmBackend + Send + Sync>) -> Result<TpmCrb, TpmError> {
        Self::with_buffer(backend, Buffer::Heap(Box::new([0; BUFFER_SIZE])))
    }

    /// [`new`](Self::new) with the command and response buffer in `ram`,
    /// a page of guest RAM ([`crate::vm::Vm::add_device_ram`]) whose
    /// address `CMD_LADDR` and `RSP_ADDR` give: a driver that follows
    /// them (as PTP drivers must) fills and reads the buffer without VM
    /// exits. The alias at offset `0x80` of each page still reaches it.
    /// Writes to the page while a command runs cannot be refused (it is
    /// RAM); the command was copied when `START` was written, and its
    /// response overwrites the page when it completes.
    pub fn with_ram(
        backend: Arc<dyn TpmBackend + Send + Sync>,
        ram: Arc<DeviceRam>,
    ) -> Result<TpmCrb, TpmError> {
        Self::with_buffer(backend, Buffer::Ram(ram))
    }

    fn with_buffer(
        backend: Arc<dyn TpmBackend + Send + Sync>,
        buffer: Buffer,
    ) -> Result<TpmCrb, TpmError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(buffer)),
            backend,
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = channel();
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tpm-crb".into())
            .spawn(move || run_commands(&worker, &rx))?;
        let crb = TpmCrb {
            shared,
            jobs: Some(tx),
        };
        crb.reset()?;
        Ok(crb)
    }

    /// The counters and fatal bit, for whoever placed the device.
    pub fn handle(&self) -> CrbHandle {
        CrbHandle(Arc::clone(&self.shared))
    }

    /// A machine reset (for a program that embeds the device; our
    /// monitor has none): every register to its reset value, and the
    /// backend restarted, which clears a fatal error if the backend is
    /// still there (swtpm hung, then went on; not swtpm dead). A command
    /// still running completes into nothing: its response is dropped.
    pub fn reset(&self) -> Result<(), TpmError> {
        let room = lock(&self.shared.state).buffer.len();
        let size = self.shared.backend.startup(room as u32)?;
        let established = self.shared.backend.established().unwrap_or(false);
        let mut s = lock(&self.shared.state);
        let (stats, generation) = (s.stats, s.generation);
        let buffer = std::mem::replace(&mut s.buffer, Buffer::Heap(Box::new([0; BUFFER_SIZE])));
        *s = State::new(buffer);
        s.stats = stats;
        s.generation = generation.wrapping_add(1);
        s.limit = (size as usize).min(s.buffer.len());
        s.established = established;
        Ok(())
    }

    fn read_register(&self, locality: u8, off: u64) -> u32 {
        let s = lock(&self.shared.state);
        let bit = 1u8 << locality;
        match off {
            reg::LOC_STATE => {
                let mut v = loc_state::REG_VALID;
                if !s.established {
                    v |= loc_state::NOT_ESTABLISHED;
                }
                if let Some(a) = s.active {
                    v |= loc_state::LOC_ASSIGNED | (u32::from(a) << loc_state::ACTIVE_SHIFT);
                }
                v
            }
            reg::LOC_STS => {
                let mut v = 0;
                if s.active == Some(locality) {
                    v |= loc_sts::GRANTED;
                }
                if s.seized & bit != 0 {
                    v |= loc_sts::BEEN_SEIZED;
                }
                v
            }
            reg::INTF_ID => INTF_ID_VALUE,
            reg::INTF_ID_HI => INTF_ID_HI_VALUE,
            reg::CTRL_STS => {
                let mut v = 0;
                if s.fatal {
                    v |= ctrl::STS_FATAL;
                }
                if s.idle {
                    v |= ctrl::STS_IDLE;
                }
                v
            }
            reg::CTRL_CANCEL => u32::from(s.cancel),
            reg::CTRL_START => u32::from(s.start),
            // What the backend takes, not the page's whole size.
            reg::CMD_SIZE | reg::RSP_SIZE => s.limit as u32,
            reg::CMD_LADDR | reg::RSP_ADDR => s.buffer.address(locality) as u32,
            reg::CMD_HADDR | RSP_ADDR_HI => (s.buffer.address(locality) >> 32) as u32,
            // CTRL_EXT, CTRL_REQ (its bits clear at once), interrupts,
            // the high address halves, reserved space.
            _ => 0,
        }
    }

    fn write_register(&self, locality: u8, off: u64, v: u32) {
        let mut s = lock(&self.shared.state);
        match off {
            reg::LOC_CTRL => {
                if Self::locality_control(&mut s, locality, v) {
                    // The backend may be busy with a command: not under
                    // the state lock.
                    drop(s);
                    let reset = self.shared.backend.reset_established(locality).is_ok();
                    if reset {
                        lock(&self.shared.state).established = false;
                    }
                }
            }
            reg::CTRL_REQ | reg::CTRL_CANCEL | reg::CTRL_START | reg::INT_ENABLE | reg::INT_STS
                if s.active != Some(locality) =>
            {
                s.stats.inactive_writes += 1;
            }
            reg::CTRL_REQ => {
                if s.start {
                    // Neither ready nor idle while a command runs.
                    s.stats.out_of_state += 1;
                } else if v & ctrl::GO_IDLE != 0 {
                    s.idle = true;
                } else if v & ctrl::CMD_READY != 0 {
                    s.idle = false;
                }
            }
            reg::CTRL_CANCEL => {
                s.cancel = v & ctrl::INVOKE != 0;
                if s.cancel && s.start {
                    drop(s);
                    // From another thread: swtpm may read its control
                    // channel only once the command is done, and the vCPU
                    // must not wait for that. The answer comes back as
                    // the command's response (TPM_RC_CANCELED) if the TPM
                    // could stop it.
                    let backend = Arc::clone(&self.shared.backend);
                    let _ = std::thread::Builder::new()
                        .name("tpm-crb-cancel".into())
                        .spawn(move || backend.cancel());
                }
            }
            reg::CTRL_START => {
                if v & ctrl::INVOKE == 0 {
                    return;
                }
                if s.start {
                    s.stats.out_of_state += 1;
                    return;
                }
                if s.idle || s.fatal {
                    s.stats.out_of_state += 1;
                    return;
                }
                let mut head = [0u8; HEADER_LEN];
                s.buffer.read(0, &mut head);
                let size = header_size(&head).unwrap_or(0) as usize;
                if !(HEADER_LEN..=s.limit).contains(&size) {
                    s.stats.bad_size += 1;
                    s.error_response(TPM_RC_COMMAND_SIZE);
                    return;
                }
                let mut command = vec![0u8; size];
                s.buffer.read(0, &mut command);
                let job = Job {
                    locality,
                    command,
                    generation: s.generation,
                };
                s.start = true;
                s.cancel = false;
                s.stats.commands += 1;
                if self.jobs.as_ref().is_none_or(|j| j.send(job).is_err()) {
                    // The command thread is gone: as a dead backend.
                    s.start = false;
                    s.fatal = true;
                    s.stats.fatal += 1;
                    return;
                }
                // Wait for the command thread without sleeping (a futex
                // sleep and wake-up costs more than most commands take),
                // yielding so that on a single CPU the thread can run.
                drop(s);
                let t0 = std::time::Instant::now();
                while lock(&self.shared.state).start && t0.elapsed() < SYNC_WAIT {
                    std::thread::yield_now();
                }
            }
            reg::INT_ENABLE | reg::INT_STS => {
                // No interrupts: the guest polls START.
            }
            _ => s.stats.read_only_writes += 1,
        }
    }

    /// `TPM_LOC_CTRL_x` from `locality`: each bit written, in the order
    /// relinquish, request, seize; true if the establishment flag is to
    /// be reset (done by the caller once the lock is let go). No locality
    /// changes hands while a command runs: its response belongs to the
    /// locality that started it.
    fn locality_control(s: &mut State, locality: u8, v: u32) -> bool {
        let bit = 1u8 << locality;
        if s.start && v & (loc_ctrl::RELINQUISH | loc_ctrl::SEIZE) != 0 {
            s.stats.out_of_state += 1;
            return false;
        }
        if v & loc_ctrl::RELINQUISH != 0 {
            s.pending &= !bit;
            s.seized &= !bit;
            if s.active == Some(locality) {
                s.active = None;
                s.grant_pending();
            }
        }
        if v & loc_ctrl::REQUEST_ACCESS != 0 {
            s.seized &= !bit;
            match s.active {
                None => s.active = Some(locality),
                Some(a) if a == locality => {}
                Some(_) => s.pending |= bit,
            }
        }
        if v & loc_ctrl::SEIZE != 0 {
            match s.active {
                None => s.active = Some(locality),
                // Only a higher locality may seize.
                Some(a) if a < locality => {
                    s.seized |= 1 << a;
                    s.pending &= !bit;
                    s.active = Some(locality);
                }
                Some(_) => s.stats.out_of_state += 1,
            }
        }
        if v & loc_ctrl::RESET_ESTABLISHMENT != 0 {
            if locality >= 3 && s.active == Some(locality) {
                return true;
            }
            s.stats.out_of_state += 1;
        }
        false
    }
}

/// Runs the commands sent to the thread until the device goes away.
fn run_commands(shared: &Shared, jobs: &Receiver<Job>) {
    let mut response = Vec::new();
    while let Ok(job) = jobs.recv() {
        let limit = lock(&shared.state).limit;
        response.resize(limit, 0);
        let r = shared
            .backend
            .command(job.locality, &job.command, &mut response[..limit]);
        let mut s = lock(&shared.state);
        if s.generation != job.generation {
            // Reset meanwhile: the answer belongs to no one.
            continue;
        }
        match r.map(|n| response.get(..n)) {
            Ok(Some(answer)) => {
                s.buffer.write(0, answer);
            }
            Err(TpmError::BadCommand(_)) => s.error_response(TPM_RC_COMMAND_SIZE),
            Err(TpmError::Unsupported(_)) => s.error_response(TPM_RC_LOCALITY),
            // A backend that claims more than the room it was given is as
            // broken as one that failed.
            other => {
                // Said once per fatal spell: the guest sees only tpmSts.
                if !s.fatal {
                    match other {
                        Err(e) => eprintln!(
                            "tpm-crb: the TPM backend failed: {e}; the TPM reports a fatal error until it is reset"
                        ),
                        Ok(_) => eprintln!(
                            "tpm-crb: the TPM backend answered more than the {limit} bytes it was given; the TPM reports a fatal error until it is reset"
                        ),
                    }
                }
                s.fatal = true;
                s.stats.fatal += 1;
            }
        }
        s.start = false;
    }
}

impl Drop for TpmCrb {
    fn drop(&mut self) {
        // The command thread ends when its queue closes.
        self.jobs = None;
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            let _ = self.shared.backend.shutdown();
        }
    }
}

impl MmioDevice for TpmCrb {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let locality = (offset / LOCALITY_STRIDE) as u8;
        let off = offset % LOCALITY_STRIDE;
        if off >= reg::DATA_BUFFER {
            let s = lock(&self.shared.state);
            let at = (off - reg::DATA_BUFFER) as usize;
            // Only the alias's 3968 bytes; the rest of a RAM buffer is
            // reached at its own address.
            let inside = at + data.len() <= BUFFER_SIZE;
            if !(inside && s.active == Some(locality) && s.buffer.read(at, data)) {
                data.fill(0xff);
            }
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = off + i as u64;
            let v = self.read_register(locality, at & !3);
            *b = (v >> (8 * (at & 3))) as u8;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let locality = (offset / LOCALITY_STRIDE) as u8;
        let off = offset % LOCALITY_STRIDE;
        if off >= reg::DATA_BUFFER {
            let mut s = lock(&self.shared.state);
            if s.active != Some(locality) {
                s.stats.inactive_writes += 1;
                return;
            }
            if s.start {
                s.stats.out_of_state += 1;
                return;
            }
            let at = (off - reg::DATA_BUFFER) as usize;
            if at + data.len() <= BUFFER_SIZE {
                s.buffer.write(at, data);
            }
            return;
        }
        if off & 3 != 0 {
            lock(&self.shared.state).stats.misaligned += 1;
            return;
        }
        // Little-endian dwords: a 1-, 2- or 4-byte write is one register,
        // an 8-byte write two.
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut v = [0u8; 4];
            v[..chunk.len()].copy_from_slice(chunk);
            self.write_register(locality, off + 4 * i as u64, u32::from_le_bytes(v));
        }
    }
}
