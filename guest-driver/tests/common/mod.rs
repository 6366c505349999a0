//! Test fixtures: a DMA pool the driver allocates from (at a guest
//! physical address that is not the host address, so a driver that mixes
//! the two fails), small fake devices (entropy, console) that serve their
//! queues with virtio-core's `DeviceQueue` over the same memory, and `Bus`,
//! a `RegisterAccess` over virtio-core's device-side `MmioRegisters` that
//! runs the fake device when the driver writes `QueueNotify` (§4.2.3.3), as
//! a VMM's ioeventfd handler would.
#![allow(dead_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ptr::NonNull;

use guest_driver::hal::{PAGE_SIZE, PoolHal};
use virtio_core::features::{ConsoleFeatures, TransportFeatures};
use virtio_core::memory::{GuestAddress, GuestMemory, Region, RegionMemory};
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::{
    ActivateError, MmioDevice, MmioError, MmioRegisters, QueueState, WriteOutcome,
};
use virtio_core::split::{DeviceQueue, QueueLayout, UsedElem};
use virtio_core::status::DeviceStatus;

/// Where the pool sits in guest physical memory.
pub const PHYS: u64 = 0x4000_0000;
/// Pages in the test pool.
pub const POOL_PAGES: usize = 128;
/// The driver's `Hal` in tests.
pub type Pool = PoolHal<POOL_PAGES>;

/// Guest RAM for one test: page-aligned host memory seen by the device at
/// [`PHYS`], and the driver's pool over it.
pub struct Env {
    ptr: NonNull<u8>,
    layout: Layout,
    pub hal: Pool,
}

impl Env {
    pub fn new() -> Env {
        Env::with_pages(POOL_PAGES)
    }

    pub fn with_pages(pages: usize) -> Env {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).unwrap();
        // SAFETY: the memory lives as long as the `Env`, which tests drop
        // after the driver and the device; only raw copies reach it.
        let hal = unsafe { PoolHal::new(ptr, PHYS, pages * PAGE_SIZE) }.unwrap();
        Env { ptr, layout, hal }
    }

    /// The device's view of guest memory.
    pub fn memory(&self) -> RegionMemory<1> {
        let mut m = RegionMemory::new();
        // SAFETY: as in `with_pages`.
        let r = unsafe {
            Region::new(
                GuestAddress(PHYS),
                self.ptr.as_ptr(),
                self.layout.size() as u64,
            )
        };
        m.add(r).unwrap();
        m
    }

    /// The host address of `len` bytes at guest address `addr`, as a
    /// device (another thread) would reach them; panics if they are not
    /// all in the test memory.
    pub fn host(&self, addr: GuestAddress, len: u64) -> *mut u8 {
        let off = addr.0.checked_sub(PHYS).expect("below the test memory");
        assert!(
            off + len <= self.layout.size() as u64,
            "beyond the test memory"
        );
        // SAFETY: `off` is within the allocation (checked above).
        unsafe { self.ptr.as_ptr().add(off as usize) }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_pages` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A fake device, independent of the transport version.
pub trait FakeDevice {
    fn device_id(&self) -> u32;
    fn features(&self) -> u64;
    fn accept(&self, _features: u64) -> bool {
        true
    }
    fn num_queues(&self) -> u16;
    fn queue_max(&self, q: u16) -> u16;
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// DRIVER_OK with these queues (`None`: not set up).
    fn start(&mut self, features: u64, layouts: &[Option<QueueLayout>])
    -> Result<(), &'static str>;
    fn stop(&mut self);
    /// Work after a notification of `queue`; whether to interrupt.
    fn notified(&mut self, queue: u16) -> bool;
    /// All pending work (deferred requests, host input); whether to
    /// interrupt.
    fn work(&mut self) -> bool;
}

/// The queues of a fake device over the test memory.
pub struct Queues {
    /// Shared with each serving pass (memory is not `Clone`).
    pub mem: std::sync::Arc<RegionMemory<1>>,
    pub queues: Vec<Option<DeviceQueue>>,
}

impl Queues {
    pub fn new(mem: RegionMemory<1>) -> Queues {
        Queues {
            mem: std::sync::Arc::new(mem),
            queues: Vec::new(),
        }
    }

    pub fn start(
        &mut self,
        features: u64,
        layouts: &[Option<QueueLayout>],
    ) -> Result<(), &'static str> {
        let event_idx = features & TransportFeatures::RING_EVENT_IDX.bits() != 0;
        let indirect = features & TransportFeatures::RING_INDIRECT_DESC.bits() != 0;
        self.queues.clear();
        for l in layouts {
            let q = match l {
                Some(l) => {
                    l.check_memory(&*self.mem)
                        .map_err(|_| "rings outside guest memory")?;
                    Some(DeviceQueue::new(*l, event_idx, indirect))
                }
                None => None,
            };
            self.queues.push(q);
        }
        Ok(())
    }

    /// Publishes queue `q`'s used entries; whether the driver wants an
    /// interrupt (§2.7.10).
    pub fn finish(&mut self, q: usize) -> bool {
        let Some(Some(queue)) = self.queues.get_mut(q) else {
            return false;
        };
        // Ask for the next notification (§2.7.10: `avail_event`, or clear
        // NO_NOTIFY): this device serves everything it was given.
        let mem = &*self.mem;
        queue.enable_notification(mem).unwrap();
        queue.publish_used(mem).unwrap();
        queue.needs_notification(mem).unwrap()
    }
}

/// Adapts a [`FakeDevice`] to virtio-core's version 2 register file.
pub struct V2<D>(pub D);

impl<D: FakeDevice> MmioDevice for V2<D> {
    fn device_id(&self) -> u32 {
        self.0.device_id()
    }
    fn device_features(&self) -> u64 {
        self.0.features()
    }
    fn features_acceptable(&self, features: u64) -> bool {
        self.0.accept(features)
    }
    fn num_queues(&self) -> u16 {
        self.0.num_queues()
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        self.0.queue_max(index)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.write_config(offset, data)
    }
    fn activate(&mut self, features: u64, queues: &[QueueState]) -> Result<(), ActivateError> {
        let layouts: Vec<_> = queues.iter().map(QueueState::layout).collect();
        self.0
            .start(features, &layouts)
            .map_err(|reason| ActivateError { reason })
    }
    fn reset(&mut self) {
        self.0.stop()
    }
}

/// The driver's register access to a fake version 2 device: every access
/// goes through virtio-core's device-side register file, which refuses
/// what the spec forbids (the refusals are kept in `errors`).
pub struct Bus<D: FakeDevice> {
    regs: RefCell<MmioRegisters<V2<D>, 16>>,
    pub errors: RefCell<Vec<MmioError>>,
    pub notifies: Cell<u32>,
    pub raised: Cell<u32>,
    pub status_log: RefCell<Vec<u32>>,
}

impl<D: FakeDevice> Bus<D> {
    pub fn new(dev: D) -> Bus<D> {
        Bus {
            regs: RefCell::new(MmioRegisters::new(V2(dev)).unwrap()),
            errors: RefCell::new(Vec::new()),
            notifies: Cell::new(0),
            raised: Cell::new(0),
            status_log: RefCell::new(Vec::new()),
        }
    }

    /// Runs `f` on the device.
    pub fn with<T>(&self, f: impl FnOnce(&mut D) -> T) -> T {
        f(&mut self.regs.borrow_mut().device_mut().0)
    }

    /// Runs `f` on the register file.
    pub fn regs<T>(&self, f: impl FnOnce(&mut MmioRegisters<V2<D>, 16>) -> T) -> T {
        f(&mut self.regs.borrow_mut())
    }

    /// Lets the device do pending work, raising the interrupt if the
    /// driver wants one.
    pub fn work(&self) {
        let mut regs = self.regs.borrow_mut();
        if regs.device_mut().0.work() && regs.raise_used_buffer() {
            self.raised.set(self.raised.get() + 1);
        }
    }

    pub fn irq_asserted(&self) -> bool {
        self.regs.borrow().interrupt_asserted()
    }

    pub fn status(&self) -> DeviceStatus {
        self.regs.borrow().status()
    }

    pub fn errors(&self) -> Vec<MmioError> {
        self.errors.borrow().clone()
    }

    fn record(&self, r: Result<WriteOutcome, MmioError>) -> Option<WriteOutcome> {
        match r {
            Ok(o) => Some(o),
            Err(e) => {
                self.errors.borrow_mut().push(e);
                None
            }
        }
    }

    fn read_n<const W: usize>(&self, offset: u64) -> [u8; W] {
        let mut b = [0u8; W];
        if let Err(e) = self.regs.borrow().read(offset, &mut b) {
            self.errors.borrow_mut().push(e);
        }
        b
    }
}

impl<D: FakeDevice> RegisterAccess for Bus<D> {
    fn read32(&self, offset: u64) -> u32 {
        u32::from_le_bytes(self.read_n::<4>(offset))
    }
    fn write32(&self, offset: u64, value: u32) {
        if offset == virtio_core::mmio::regs::STATUS {
            self.status_log.borrow_mut().push(value);
        }
        let mut regs = self.regs.borrow_mut();
        let outcome = regs.write(offset, &value.to_le_bytes());
        if let Some(WriteOutcome::Notify { queue, .. }) = self.record(outcome) {
            self.notifies.set(self.notifies.get() + 1);
            if regs.device_mut().0.notified(queue) && regs.raise_used_buffer() {
                self.raised.set(self.raised.get() + 1);
            }
        }
    }
    fn read16(&self, offset: u64) -> u16 {
        u16::from_le_bytes(self.read_n::<2>(offset))
    }
    fn write16(&self, offset: u64, value: u16) {
        let r = self.regs.borrow_mut().write(offset, &value.to_le_bytes());
        self.record(r);
    }
    fn read8(&self, offset: u64) -> u8 {
        self.read_n::<1>(offset)[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        let r = self.regs.borrow_mut().write(offset, &[value]);
        self.record(r);
    }
}

/// Byte `i` of the fake entropy stream.
pub fn stream(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// How the fake entropy device answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RngMode {
    /// Fills every buffer.
    Normal,
    /// At most this many bytes per request.
    Short(u32),
    /// Never uses a buffer.
    Stall,
    /// Completes with 0 bytes (§5.4.6.2 forbids it).
    Zero,
    /// Reports one byte more than the buffer holds (§2.7.8.2).
    TooLong,
    /// Returns the id of a descriptor that is not in flight (§2.7.8).
    WrongId,
    /// Returns an id beyond the queue size (§2.7.8).
    IdOutOfRange,
    /// Moves the used index past what was made available (§2.7.14).
    IdxJump,
}

/// A fake entropy device (§5.4): fills each request from [`stream`].
pub struct FakeRng {
    pub q: Queues,
    pub mode: RngMode,
    /// Serve only from `work`, not on notification.
    pub deferred: bool,
    pub offered: u64,
    pub accept: bool,
    pub max: u16,
    /// Stream position.
    pub next: u64,
    /// Bytes the source still has (`None`: endless).
    pub budget: Option<u64>,
    pub served: u32,
    pub starts: u32,
}

impl FakeRng {
    pub fn new(mem: RegionMemory<1>) -> FakeRng {
        FakeRng {
            q: Queues::new(mem),
            mode: RngMode::Normal,
            deferred: false,
            offered: TransportFeatures::RING_EVENT_IDX.bits(),
            accept: true,
            max: 64,
            next: 0,
            budget: None,
            served: 0,
            starts: 0,
        }
    }

    fn serve(&mut self) -> bool {
        let mem = std::sync::Arc::clone(&self.q.mem);
        let mem = &*mem;
        let Some(Some(queue)) = self.q.queues.get_mut(0) else {
            return false;
        };
        if self.mode == RngMode::Stall {
            return false;
        }
        loop {
            if self.budget == Some(0) {
                break;
            }
            let Some(chain) = queue.pop(&mem).unwrap() else {
                break;
            };
            let head = chain.head();
            let (_, mut w) = chain.reader_writer::<8>().unwrap();
            let cap = w.available() as u32;
            let size = queue.size();
            self.served += 1;
            match self.mode {
                RngMode::Normal | RngMode::Short(_) | RngMode::Stall => {
                    let mut n = cap;
                    if let RngMode::Short(k) = self.mode {
                        n = n.min(k);
                    }
                    if let Some(b) = self.budget {
                        n = n.min(b as u32);
                        self.budget = Some(b - u64::from(n));
                    }
                    let bytes: Vec<u8> = (0..u64::from(n)).map(|i| stream(self.next + i)).collect();
                    w.write_all(&bytes).unwrap();
                    self.next += u64::from(n);
                    queue.add_used(&mem, head, n).unwrap();
                }
                RngMode::Zero => queue.add_used(&mem, head, 0).unwrap(),
                RngMode::TooLong => queue.add_used(&mem, head, cap + 1).unwrap(),
                RngMode::WrongId => queue.add_used(&mem, (head + 1) % size, 4).unwrap(),
                RngMode::IdOutOfRange | RngMode::IdxJump => {
                    let l = *queue.layout();
                    let at = queue.next_used();
                    let (id, idx) = if self.mode == RngMode::IdOutOfRange {
                        (999, at.wrapping_add(1))
                    } else {
                        (u32::from(head), at.wrapping_add(5))
                    };
                    mem.write_obj(l.used_slot(at), &UsedElem::new(id, 4))
                        .unwrap();
                    mem.store_u16_release(l.used_idx(), idx).unwrap();
                    return true;
                }
            }
        }
        self.q.finish(0)
    }
}

impl FakeDevice for FakeRng {
    fn device_id(&self) -> u32 {
        4
    }
    fn features(&self) -> u64 {
        self.offered
    }
    fn accept(&self, _features: u64) -> bool {
        self.accept
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn queue_max(&self, _q: u16) -> u16 {
        self.max
    }
    fn start(
        &mut self,
        features: u64,
        layouts: &[Option<QueueLayout>],
    ) -> Result<(), &'static str> {
        self.starts += 1;
        self.q.start(features, layouts)
    }
    fn stop(&mut self) {
        self.q.queues.clear();
    }
    fn notified(&mut self, _queue: u16) -> bool {
        if self.deferred { false } else { self.serve() }
    }
    fn work(&mut self) -> bool {
        self.serve()
    }
}

/// Console queue indices (§5.3.2).
pub fn rx_queue(port: u32) -> usize {
    if port == 0 { 0 } else { 2 + 2 * port as usize }
}

/// A control message (§5.3.6.2) as bytes.
pub fn control(id: u32, event: u16, value: u16) -> Vec<u8> {
    let mut v = id.to_le_bytes().to_vec();
    v.extend_from_slice(&event.to_le_bytes());
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// A fake console (§5.3) with `ports` ports; with `auto` it answers the
/// control protocol as QEMU does.
pub struct FakeConsole {
    pub q: Queues,
    pub offered: u64,
    pub ports: u32,
    pub cols: u16,
    pub rows: u16,
    pub max: u16,
    /// Ports whose queues report `QueueNumMax` 0.
    pub missing_port_queues: Vec<u32>,
    pub tx: Vec<Vec<u8>>,
    pub input: Vec<VecDeque<u8>>,
    pub from_driver: Vec<(u32, u16, u16)>,
    pub to_driver: VecDeque<Vec<u8>>,
    pub auto: bool,
    pub deferred: bool,
    /// Reports this many bytes more than written into receive buffers.
    pub rx_len_bonus: u32,
    pub emerg: Vec<u8>,
    pub multiport: bool,
}

impl FakeConsole {
    pub fn new(mem: RegionMemory<1>, ports: u32, multiport: bool) -> FakeConsole {
        let mut offered = (ConsoleFeatures::SIZE | ConsoleFeatures::EMERG_WRITE).bits()
            | TransportFeatures::RING_EVENT_IDX.bits();
        if multiport {
            offered |= ConsoleFeatures::MULTIPORT.bits();
        }
        FakeConsole {
            q: Queues::new(mem),
            offered,
            ports,
            cols: 132,
            rows: 43,
            max: 64,
            missing_port_queues: Vec::new(),
            tx: vec![Vec::new(); ports as usize],
            input: vec![VecDeque::new(); ports as usize],
            from_driver: Vec::new(),
            to_driver: VecDeque::new(),
            auto: true,
            deferred: false,
            rx_len_bonus: 0,
            emerg: Vec::new(),
            multiport: false,
        }
    }

    /// The device's answer to a driver message, as QEMU gives it.
    fn answer(&mut self, id: u32, event: u16, value: u16) {
        match (event, value) {
            (0, 1) => {
                for p in 0..self.ports {
                    self.to_driver.push_back(control(p, 1, 0));
                }
            }
            (3, 1) => {
                if id == 0 {
                    self.to_driver.push_back(control(0, 4, 1));
                } else {
                    let mut m = control(id, 7, 1);
                    m.extend_from_slice(format!("org.test.port{id}").as_bytes());
                    self.to_driver.push_back(m);
                }
                self.to_driver.push_back(control(id, 6, 1));
            }
            _ => {}
        }
    }

    fn serve(&mut self) -> bool {
        let mem = std::sync::Arc::clone(&self.q.mem);
        let mem = &*mem;
        let mut irq = false;
        if self.multiport {
            // Control transmitq: messages from the driver.
            let mut got = Vec::new();
            if let Some(Some(q)) = self.q.queues.get_mut(3) {
                while let Some(chain) = q.pop(&mem).unwrap() {
                    let head = chain.head();
                    let (mut r, _) = chain.reader_writer::<8>().unwrap();
                    let mut b = [0u8; 8];
                    r.read_exact(&mut b).unwrap();
                    let id = u32::from_le_bytes(b[..4].try_into().unwrap());
                    let ev = u16::from_le_bytes(b[4..6].try_into().unwrap());
                    let val = u16::from_le_bytes(b[6..].try_into().unwrap());
                    got.push((id, ev, val));
                    q.add_used(&mem, head, 0).unwrap();
                }
            }
            for (id, ev, val) in got {
                self.from_driver.push((id, ev, val));
                if self.auto {
                    self.answer(id, ev, val);
                }
            }
            irq |= self.q.finish(3);
            // Control receiveq: messages to the driver.
            if let Some(Some(q)) = self.q.queues.get_mut(2) {
                while !self.to_driver.is_empty() {
                    let Some(chain) = q.pop(&mem).unwrap() else {
                        break;
                    };
                    let head = chain.head();
                    let (_, mut w) = chain.reader_writer::<8>().unwrap();
                    let msg = self.to_driver.pop_front().unwrap();
                    let n = w.write(&msg).unwrap();
                    q.add_used(&mem, head, n as u32).unwrap();
                }
            }
            irq |= self.q.finish(2);
        }
        let ports = if self.multiport { self.ports } else { 1 };
        for p in 0..ports {
            let rxq = rx_queue(p);
            if let Some(Some(q)) = self.q.queues.get_mut(rxq + 1) {
                while let Some(chain) = q.pop(&mem).unwrap() {
                    let head = chain.head();
                    let (mut r, _) = chain.reader_writer::<8>().unwrap();
                    let mut b = vec![0u8; r.available() as usize];
                    r.read_exact(&mut b).unwrap();
                    self.tx[p as usize].extend_from_slice(&b);
                    q.add_used(&mem, head, 0).unwrap();
                }
            }
            irq |= self.q.finish(rxq + 1);
            if let Some(Some(q)) = self.q.queues.get_mut(rxq) {
                while !self.input[p as usize].is_empty() {
                    let Some(chain) = q.pop(&mem).unwrap() else {
                        break;
                    };
                    let head = chain.head();
                    let (_, mut w) = chain.reader_writer::<8>().unwrap();
                    let input = &mut self.input[p as usize];
                    let n = (w.available() as usize).min(input.len());
                    let bytes: Vec<u8> = input.drain(..n).collect();
                    w.write_all(&bytes).unwrap();
                    q.add_used(&mem, head, n as u32 + self.rx_len_bonus)
                        .unwrap();
                }
            }
            irq |= self.q.finish(rxq);
        }
        irq
    }
}

impl FakeDevice for FakeConsole {
    fn device_id(&self) -> u32 {
        3
    }
    fn features(&self) -> u64 {
        self.offered
    }
    fn num_queues(&self) -> u16 {
        if self.offered & ConsoleFeatures::MULTIPORT.bits() != 0 {
            2 + 2 * self.ports as u16
        } else {
            2
        }
    }
    fn queue_max(&self, q: u16) -> u16 {
        let port = match q {
            0 | 1 => Some(0),
            2 | 3 => None,
            q => Some(u32::from(q / 2 - 1)),
        };
        match port {
            Some(p) if self.missing_port_queues.contains(&p) => 0,
            _ => self.max,
        }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = [0u8; 12];
        cfg[0..2].copy_from_slice(&self.cols.to_le_bytes());
        cfg[2..4].copy_from_slice(&self.rows.to_le_bytes());
        cfg[4..8].copy_from_slice(&self.ports.to_le_bytes());
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if offset == 8 {
            self.emerg.push(data[0]);
        }
    }
    fn start(
        &mut self,
        features: u64,
        layouts: &[Option<QueueLayout>],
    ) -> Result<(), &'static str> {
        self.multiport = features & ConsoleFeatures::MULTIPORT.bits() != 0;
        self.q.start(features, layouts)
    }
    fn stop(&mut self) {
        self.q.queues.clear();
        self.to_driver.clear();
    }
    fn notified(&mut self, _queue: u16) -> bool {
        if self.deferred { false } else { self.serve() }
    }
    fn work(&mut self) -> bool {
        self.serve()
    }
}
