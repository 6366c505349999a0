//! Spec conformance checks for virtio devices, over any register access
//! and DMA memory.
//!
//! Each [`Check`] names the catalogue statements it covers
//! (`harness/conform/catalogue.tsv`, ids such as
//! `device:basic/device-status-field#1`) and, run against a device through
//! a [`Bus`], records an [`Outcome`] for each: pass, fail with what was
//! seen, not applicable (a feature the device does not offer), or not
//! observable on this path (e.g. the register file is the frontend's when
//! the device is a vhost-user backend). The mapping from statements to
//! checks is read from this code: the report and CI take it from
//! [`device::CHECKS`].
//!
//! `no_std` with `alloc`, so the same checks can run inside a tiny guest.
//!
//! # Example
//!
//! Every device-side check run against our virtio-rng in this process.
//! `InProcess` (hidden below) is the [`Bus`]: it forwards register
//! accesses to `virtio-core`'s register file, which serves the device on
//! `QueueNotify`, and hands the checks the memory the device sees. Checks
//! for other device types record their statements as not applicable.
//!
//! ```rust
//! use backends::rng::Deterministic;
//! use conform::{Outcome, device::CHECKS};
//! use virtio_core::memory::{GuestAddress, Region, RegionMemory};
//! use virtio_devices::rng::Rng;
//! # use std::cell::RefCell;
//! # use conform::{Bus, Memory, Path, Patience};
//! # use virtio_core::mmio::{MmioError, device::MmioRegisters, driver::RegisterAccess};
//! # use virtio_devices::VirtioDevice;
//! # use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};
//! # struct Regs<D: VirtioDevice>(RefCell<MmioRegisters<MmioTransport<D>>>);
//! # impl<D: VirtioDevice> RegisterAccess for Regs<D> {
//! #     fn read32(&self, at: u64) -> u32 { self.0.borrow().read32(at).unwrap_or(0) }
//! #     fn write32(&self, at: u64, value: u32) {
//! #         let mut regs = self.0.borrow_mut();
//! #         if let Ok(outcome) = regs.write32(at, value) {
//! #             dispatch(&mut regs, outcome);
//! #         }
//! #     }
//! #     fn read16(&self, at: u64) -> u16 { let mut b = [0; 2]; let _ = self.0.borrow().read(at, &mut b); u16::from_le_bytes(b) }
//! #     fn write16(&self, at: u64, value: u16) { let _ = self.0.borrow_mut().write(at, &value.to_le_bytes()); }
//! #     fn read8(&self, at: u64) -> u8 { let mut b = [0; 1]; let _ = self.0.borrow().read(at, &mut b); b[0] }
//! #     fn write8(&self, at: u64, value: u8) { let _ = self.0.borrow_mut().write(at, &[value]); }
//! # }
//! # struct InProcess<'m, D: VirtioDevice> { regs: Regs<D>, mem: &'m RegionMemory<1> }
//! # impl<'m, D: VirtioDevice> InProcess<'m, D> {
//! #     fn new(device: D, mem: &'m RegionMemory<1>) -> Result<Self, MmioError> {
//! #         let regs = Regs(RefCell::new(MmioRegisters::new(MmioTransport::new(device))?));
//! #         Ok(InProcess { regs, mem })
//! #     }
//! # }
//! # impl<D: VirtioDevice> Bus for InProcess<'_, D> {
//! #     fn regs(&self) -> &dyn RegisterAccess { &self.regs }
//! #     fn mem(&self) -> &dyn Memory { self.mem }
//! #     fn dma(&self) -> (GuestAddress, u64) { (GuestAddress(0), 256 << 10) }
//! #     fn wait(&self, done: &mut dyn FnMut() -> bool, _: Patience) -> bool {
//! #         // The device works inside register writes; give it one more go.
//! #         done() || { backend_ready(&mut self.regs.0.borrow_mut()); done() }
//! #     }
//! #     fn path(&self) -> Path { Path::InProcess }
//! # }
//!
//! let mut ram = vec![0u64; (256 << 10) / 8]; // 256 KiB of guest memory at 0
//! let mut mem = RegionMemory::<1>::new();
//! // SAFETY: `ram` outlives `mem` and is only reached through it.
//! mem.add(unsafe { Region::new(GuestAddress(0), ram.as_mut_ptr().cast(), 256 << 10) })?;
//! let bus = InProcess::new(Rng::new(Deterministic::new(1), &mem), &mem)?;
//!
//! let records = conform::run(&bus, CHECKS);
//! let failed: Vec<_> = records.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).collect();
//! assert!(failed.is_empty(), "{failed:#?}");
//! let fills = records.iter().find(|r| r.check == "rng-fills").expect("run");
//! assert_eq!(fills.outcome, Outcome::Pass);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![no_std]

extern crate alloc;

pub mod checksum;
pub mod device;
pub mod driver;
pub mod ring;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use virtio_core::GuestMemory;
use virtio_core::memory::{GuestAddress, MemoryError};
use virtio_core::mmio::driver::RegisterAccess;

/// Guest memory as the checks reach it: [`GuestMemory`]'s byte and ring
/// index accesses, usable as a trait object.
pub trait Memory {
    /// Reads `buf.len()` bytes at `addr`.
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes `buf` at `addr`.
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError>;
    /// A ring index read with acquire ordering.
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError>;
    /// A ring index write with release ordering.
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError>;
}

impl<M: GuestMemory> Memory for M {
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        GuestMemory::read(self, addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        GuestMemory::write(self, addr, buf)
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        GuestMemory::load_u16_acquire(self, addr)
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        GuestMemory::store_u16_release(self, addr, val)
    }
}

/// What a check found for one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The device did what the statement asks, as far as the check saw.
    Pass,
    /// It did not: what was seen.
    Fail(String),
    /// The statement's MUST held but its SHOULD did not (e.g. "SHOULD
    /// accept …, otherwise MUST fail …" and the device refused): what was
    /// seen.
    Warn(String),
    /// The statement does not apply to this device: why (a feature it
    /// does not offer, the legacy interface).
    NotApplicable(String),
    /// This path cannot see what the statement is about: why.
    NotObservable(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("pass"),
            Outcome::Fail(w) => write!(f, "fail: {w}"),
            Outcome::Warn(w) => write!(f, "warn: {w}"),
            Outcome::NotApplicable(w) => write!(f, "not applicable: {w}"),
            Outcome::NotObservable(w) => write!(f, "not observable: {w}"),
        }
    }
}

/// One outcome of one check for one statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The catalogue id.
    pub statement: &'static str,
    /// The check that recorded it.
    pub check: &'static str,
    /// What it found.
    pub outcome: Outcome,
}

/// Through what the checks reach the device; it decides what they can
/// observe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The device and its register file in the checking process: every
    /// register and ring access is the device's own.
    InProcess,
    /// A guest of a virtual machine monitor: the registers are the
    /// monitor's device model.
    Guest,
    /// A vhost-user backend behind our frontend: the register file,
    /// status machine and feature negotiation are ours (the frontend's),
    /// only the rings and what the backend puts in them are the device's.
    VhostUser,
}

/// How long [`Bus::wait`] keeps looking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Something is expected (a used buffer): long enough for a slow
    /// device (a second or more).
    Expect,
    /// Nothing should happen: long enough that a device that would act
    /// has acted (tens of milliseconds).
    Quiet,
}

/// The device under test, as the checks reach it.
pub trait Bus {
    /// Its virtio-mmio registers (§4.2.2).
    fn regs(&self) -> &dyn RegisterAccess;
    /// Memory the device reaches by DMA (guest-physical addresses).
    fn mem(&self) -> &dyn Memory;
    /// The range of [`mem`](Bus::mem) the checks may use for rings and
    /// buffers: start and length (at least 256 KiB).
    fn dma(&self) -> (GuestAddress, u64);
    /// Lets the device work until `done` holds or `patience` runs out,
    /// taking its interrupts as a guest's handler would not (the checks
    /// read `InterruptStatus` themselves); returns `done`'s last answer.
    fn wait(&self, done: &mut dyn FnMut() -> bool, patience: Patience) -> bool;
    /// What the checks can observe.
    fn path(&self) -> Path;
    /// Has the host change the device's configuration, as a host may at
    /// any time (a network device's link flipped): `Some(true)` if the
    /// device says its configuration changed, `Some(false)` if it had
    /// nothing to change, `None` where this path has no such hook (the
    /// default).
    fn change_config(&self) -> Option<bool> {
        None
    }
    /// How many bytes of the device's backing storage in `[offset,
    /// offset + len)` the host still holds unwritten (dirty or under
    /// writeback in its page cache), so a check can tell whether what the
    /// device reported stable is committed (§5.2.6.2). `None` where this
    /// path does not show the backing storage (the default), `Some(Err)`
    /// when looking failed.
    fn unwritten(&self, offset: u64, len: u64) -> Option<Result<u64, String>> {
        let _ = (offset, len);
        None
    }
}

/// Where a check records.
pub struct Ctx<'a> {
    bus: &'a dyn Bus,
    check: &'static str,
    records: Vec<Record>,
}

impl<'a> Ctx<'a> {
    /// A context for `check` over `bus`.
    pub fn new(bus: &'a dyn Bus, check: &'static str) -> Self {
        Ctx {
            bus,
            check,
            records: Vec::new(),
        }
    }

    /// The bus.
    pub fn bus(&self) -> &'a dyn Bus {
        self.bus
    }

    /// Records `outcome` for `statement`.
    pub fn record(&mut self, statement: &'static str, outcome: Outcome) {
        self.records.push(Record {
            statement,
            check: self.check,
            outcome,
        });
    }

    /// Pass if `ok`, else fail with `seen()`.
    pub fn expect(&mut self, statement: &'static str, ok: bool, seen: impl FnOnce() -> String) {
        let outcome = if ok {
            Outcome::Pass
        } else {
            Outcome::Fail(seen())
        };
        self.record(statement, outcome);
    }

    /// Records the same not-applicable reason for each of `statements`.
    pub fn not_applicable(&mut self, statements: &[&'static str], why: &str) {
        for s in statements {
            self.record(s, Outcome::NotApplicable(why.into()));
        }
    }

    /// Records the same not-observable reason for each of `statements`.
    pub fn not_observable(&mut self, statements: &[&'static str], why: &str) {
        for s in statements {
            self.record(s, Outcome::NotObservable(why.into()));
        }
    }

    /// Records a failure for each of `statements` the check could not
    /// reach because the device broke off (its set-up failed).
    pub fn blocked(&mut self, statements: &[&'static str], why: &str) {
        for s in statements {
            self.record(
                s,
                Outcome::Fail(alloc::format!("could not get there: {why}")),
            );
        }
    }

    /// What was recorded so far.
    pub fn recorded(&self) -> &[Record] {
        &self.records
    }

    /// What was recorded.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }
}

/// One check: the statements it covers and how to run it.
#[derive(Clone, Copy)]
pub struct Check {
    /// A short name (`status-before-driver-ok`).
    pub name: &'static str,
    /// The catalogue ids it records outcomes for.
    pub statements: &'static [&'static str],
    /// Runs it.
    pub run: fn(&mut Ctx<'_>),
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("statements", &self.statements)
            .finish()
    }
}

/// Runs `checks` against `bus`, each from a reset device; the records of
/// all of them. A record for a statement the check does not declare is
/// turned into a failure of the check itself (the mapping must be read
/// from the code).
pub fn run(bus: &dyn Bus, checks: &[Check]) -> Vec<Record> {
    let mut out = Vec::new();
    for c in checks {
        let mut ctx = Ctx::new(bus, c.name);
        (c.run)(&mut ctx);
        for mut r in ctx.into_records() {
            if !c.statements.contains(&r.statement) {
                r.outcome = Outcome::Fail(alloc::format!(
                    "check {} recorded {} without declaring it",
                    c.name,
                    r.statement
                ));
            }
            out.push(r);
        }
    }
    out
}
