//! One vhost-user device driven from this process: the register file the
//! drivers talk to, with the frontend behind it, and the wait that stands
//! in for an interrupt handler.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use guest_driver::transport::{Completion, acknowledge_interrupt};
use guest_driver::wait::Wait;
use vhost_user::frontend::{FrontendStats, VhostUserDevice, VhostUserKind};
use virtio_core::mmio::MmioRegisters;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_devices::DeviceError;
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};

use crate::{Error, UserRam};

/// Queues the register file holds (a blk backend's request queues, net's
/// receive and transmit pairs, console's ports).
pub const MAX_QUEUES: usize = 16;

type Registers = MmioRegisters<MmioTransport<VhostUserDevice>, MAX_QUEUES>;

/// A vhost-user backend behind a virtio-mmio register file in this process:
/// hand [`registers`](Self::registers) to a `guest-driver` driver, and a
/// [`wait`](Self::wait) to its blocking calls.
#[derive(Debug)]
pub struct UserDevice {
    regs: Rc<RefCell<Registers>>,
    /// The call eventfds and the socket, as `poll(2)` takes them (built
    /// once: a wait allocates nothing).
    pollfds: RefCell<Vec<libc::pollfd>>,
}

impl UserDevice {
    /// Connects to the backend at `socket` as a device of `kind` whose
    /// rings and buffers live in `ram` (vhost-user `SET_OWNER`, features,
    /// protocol features, queues, configuration; the rest at DRIVER_OK).
    pub fn connect(socket: &Path, kind: VhostUserKind, ram: &UserRam) -> Result<Self, Error> {
        let dev = VhostUserDevice::connect(socket, kind, ram.shared())?;
        let pollfds = dev
            .ready_fds()
            .into_iter()
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let regs = MmioRegisters::new(MmioTransport::new(dev)).map_err(Error::Registers)?;
        Ok(UserDevice {
            regs: Rc::new(RefCell::new(regs)),
            pollfds: RefCell::new(pollfds),
        })
    }

    /// The register access a driver takes (`Rng::new(hal, regs, …)`).
    pub fn registers(&self) -> UserRegisters {
        UserRegisters(Rc::clone(&self.regs))
    }

    /// A bound on one blocking driver call: at most `timeout`, waiting as
    /// `completion` says (the driver must be set up the same way).
    pub fn wait(&self, completion: Completion, timeout: Duration) -> UserWait<'_> {
        UserWait {
            dev: self,
            completion,
            deadline: Instant::now() + timeout,
            spins: 0,
        }
    }

    /// Takes the backend's calls (used buffer notifications) and checks
    /// that it is still there, as the interrupt handler of a guest would:
    /// `InterruptStatus` is set and acknowledged (§4.2.3.4). Returns
    /// whether a call came.
    pub fn service(&self) -> bool {
        let irq = backend_ready(&mut self.regs.borrow_mut());
        acknowledge_interrupt(&self.registers());
        irq
    }

    /// Counters: requests sent to the backend, kicks, calls.
    pub fn stats(&self) -> FrontendStats {
        self.regs.borrow().device().device().stats()
    }

    /// Why the backend is considered gone, once it is.
    pub fn dead(&self) -> Option<String> {
        self.regs
            .borrow()
            .device()
            .device()
            .dead()
            .map(str::to_owned)
    }

    /// The last error the device side reported (activation, a dead
    /// backend).
    pub fn last_error(&self) -> Option<DeviceError> {
        self.regs.borrow().device().last_error()
    }

    /// The features the backend offered (`GET_FEATURES`).
    pub fn backend_features(&self) -> u64 {
        self.regs.borrow().device().device().backend_features()
    }

    /// Whether the backend is considered gone.
    pub fn is_dead(&self) -> bool {
        self.regs.borrow().device().device().dead().is_some()
    }

    /// The error for a workload that found the backend gone, if it is.
    pub fn gone(&self) -> Option<Error> {
        self.dead().map(Error::BackendGone)
    }

    /// `e` from a driver, or the backend's death when that explains it
    /// better.
    pub fn blame(&self, e: impl Into<Error>) -> Error {
        self.gone().unwrap_or_else(|| e.into())
    }

    /// Takes the backend's calls into `InterruptStatus` without
    /// acknowledging them (for code that reads the register itself, the
    /// conformance checks); whether the interrupt line is up.
    pub fn take_calls(&self) -> bool {
        backend_ready(&mut self.regs.borrow_mut())
    }

    /// Blocks until a call eventfd or the socket is readable, at most
    /// `timeout`.
    pub fn block(&self, timeout: Duration) {
        let mut pfds = self.pollfds.borrow_mut();
        let ms = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds of fds
        // this device owns.
        let _ = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    }
}

/// A driver's register access to a [`UserDevice`]: each access goes to the
/// register file; a write that asks for device work (a queue notification,
/// DRIVER_OK, a reset) runs it before returning, as a trapped MMIO write
/// would (§4.2.2).
#[derive(Clone, Debug)]
pub struct UserRegisters(Rc<RefCell<Registers>>);

impl UserRegisters {
    fn read(&self, offset: u64, data: &mut [u8]) {
        // A refused access reads as zeroes, as an unbacked bus would.
        let _ = self.0.borrow().read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut r = self.0.borrow_mut();
        if let Ok(outcome) = r.write(offset, data) {
            dispatch(&mut r, outcome);
        }
    }
}

impl RegisterAccess for UserRegisters {
    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.write(offset, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0; 1];
        self.read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        self.write(offset, &[value]);
    }
}

/// How often a polling wait looks at the call eventfds and the socket.
const POLL_SERVICE_EVERY: u32 = 1024;

/// The longest one blocking wait sleeps before it looks at the clock.
const BLOCK_SLICE: Duration = Duration::from_millis(50);

/// The driver's [`Wait`] for a [`UserDevice`]: with
/// [`Completion::Polling`] it spins (the driver polls the used ring;
/// every 1024 spins it takes calls and checks that the
/// backend is alive); with [`Completion::Interrupt`] it sleeps in
/// `poll(2)` on the call eventfds and the socket, then acts as the
/// interrupt handler ([`UserDevice::service`]). Gives up at its deadline
/// or when the backend is gone; the driver then reports a timeout or
/// DEVICE_NEEDS_RESET (§2.1.2).
#[derive(Debug)]
pub struct UserWait<'a> {
    dev: &'a UserDevice,
    completion: Completion,
    deadline: Instant,
    spins: u32,
}

impl UserWait<'_> {
    /// The same wait with a fresh deadline `timeout` from now.
    pub fn renew(&mut self, timeout: Duration) {
        self.deadline = Instant::now() + timeout;
    }
}

impl Wait for UserWait<'_> {
    fn wait(&mut self) -> bool {
        match self.completion {
            Completion::Polling => {
                self.spins = self.spins.wrapping_add(1);
                if !self.spins.is_multiple_of(POLL_SERVICE_EVERY) {
                    core::hint::spin_loop();
                    return true;
                }
                self.dev.service();
            }
            Completion::Interrupt => {
                let left = self.deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                self.dev.block(left.min(BLOCK_SLICE));
                self.dev.service();
            }
        }
        !self.dev.is_dead() && Instant::now() < self.deadline
    }
}
