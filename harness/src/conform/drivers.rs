//! Driver-side checks: a driver runs a small workload against one of our
//! devices in this process while [`conform::driver::DriverWatch`] watches
//! every register access it makes (and the device's interrupts), without
//! changing what the device does.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::rc::Rc;

use backends::IoSegment;
use backends::block::memory::MemoryDisk;
use backends::block::{BlockBackend, BlockError};
use conform::driver::DriverWatch;
use conform::driver::cleanup::{CleanupWatch, LiveRange};
use conform::driver::publish::{Probe, PublishWatch};
use conform::driver::requests::{BlkLimits, NetLimits};
use conform::driver::rings::RingWatch;
use guest_driver::hal::{BufferDirection, Dma, Hal, PhysAddr, PoolHal};
use guest_driver::transport::{Completion, acknowledge_interrupt};
use std::sync::{Arc, Mutex};
use virtio_core::GuestMemory;
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::regs;
use virtio_devices::device::{DeviceError, QueueConfig, Served, VirtioDevice};
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};
use virtio_user::GUEST_BASE;

use super::report::Run;
use super::targets::{Device, Kind, LocalMemory, our_device};

/// The target's name in reports.
pub const GUEST_DRIVER: &str = "guest-driver (ours), in process";

/// Guest memory for the driver's rings and buffers: 4 MiB.
const PAGES: usize = 1024;

type Regs<D> = Rc<RefCell<MmioRegisters<MmioTransport<D>, 8>>>;

/// Register access to a device in this process that tells the watch of
/// every access and interrupt.
pub(super) struct Watched<D: VirtioDevice> {
    regs: Regs<D>,
    watch: Rc<RefCell<DriverWatch>>,
    /// What the registers say instead of the truth ([`Provoke`]).
    lie: Provoke,
    /// ConfigGeneration reads so far.
    generation_reads: Rc<std::cell::Cell<u32>>,
    /// The DeviceFeaturesSel last written.
    features_sel: Rc<std::cell::Cell<u32>>,
    /// The legacy face's state ([`Provoke::Legacy`]).
    legacy: Rc<RefCell<LegacyFace>>,
}

/// The legacy face a driver meets ([`Provoke::Legacy`],
/// [`Provoke::LegacyBlk`]; see [`super::legacy_face`]) and the watch on
/// what it does there.
#[derive(Debug)]
struct LegacyFace {
    face: super::legacy_face::Face,
    watch: conform::driver::legacy::LegacyWatch,
}

/// The register file behind a [`Watched`], unwatched: what the legacy
/// face translates to.
struct Raw<'a, D: VirtioDevice>(&'a Watched<D>);

impl<D: VirtioDevice> RegisterAccess for Raw<'_, D> {
    fn read32(&self, offset: u64) -> u32 {
        self.0.regs.borrow().read32(offset).unwrap_or(0)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.0.raw_write(offset, &value.to_le_bytes());
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0; 2];
        let _ = self.0.regs.borrow().read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.0.raw_write(offset, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0; 1];
        let _ = self.0.regs.borrow().read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        self.0.raw_write(offset, &[value]);
    }
}

impl<D: VirtioDevice> Clone for Watched<D> {
    fn clone(&self) -> Self {
        Watched {
            regs: Rc::clone(&self.regs),
            watch: Rc::clone(&self.watch),
            lie: self.lie,
            generation_reads: Rc::clone(&self.generation_reads),
            features_sel: Rc::clone(&self.features_sel),
            legacy: Rc::clone(&self.legacy),
        }
    }
}

/// The driver's DMA layer in the checks: the pool, telling the cleanup
/// watch (§3.3.1) of each removal (memory given back, a buffer's sharing
/// ended) before it happens.
struct WatchedHal {
    pool: PoolHal<PAGES>,
    cleanup: CleanupHandle,
}

// SAFETY: every call goes to the pool, which upholds the contract; the
// removal hook only reads the device's state.
unsafe impl Hal for WatchedHal {
    fn dma_alloc(&self, pages: usize) -> Option<Dma> {
        self.pool.dma_alloc(pages)
    }
    unsafe fn dma_dealloc(&self, dma: Dma) {
        self.cleanup.removing(dma.paddr(), dma.len() as u64);
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.dma_dealloc(dma) }
    }
    fn mmio_phys_to_virt(&self, paddr: PhysAddr, size: usize) -> Option<NonNull<u8>> {
        self.pool.mmio_phys_to_virt(paddr, size)
    }
    fn virt_to_phys(&self, vaddr: NonNull<u8>) -> Option<PhysAddr> {
        self.pool.virt_to_phys(vaddr)
    }
    fn phys_to_virt(&self, paddr: PhysAddr) -> Option<NonNull<u8>> {
        self.pool.phys_to_virt(paddr)
    }
    unsafe fn share(&self, buf: NonNull<u8>, len: usize, dir: BufferDirection) -> Option<PhysAddr> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.share(buf, len, dir) }
    }
    unsafe fn unshare(&self, paddr: PhysAddr, buf: NonNull<u8>, len: usize, dir: BufferDirection) {
        self.cleanup.removing(paddr, len as u64);
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.pool.unshare(paddr, buf, len, dir) }
    }
}

/// Up to 8 little-endian bytes as a number.
pub(super) fn le_u64(data: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    let n = data.len().min(8);
    v[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(v)
}

impl<D: VirtioDevice> Watched<D> {
    /// Register access to `regs` whose register watch judges nothing
    /// (no device type, nothing offered): for runs that judge through the
    /// driver's API or the device instead.
    pub(super) fn unjudged(regs: Regs<D>) -> Self {
        Watched {
            regs,
            watch: Rc::new(RefCell::new(DriverWatch::new(None, 0, &[], 0))),
            lie: Provoke::Nothing,
            generation_reads: Rc::default(),
            features_sel: Rc::default(),
            legacy: Rc::new(RefCell::new(LegacyFace {
                face: super::legacy_face::Face::new(true),
                watch: conform::driver::legacy::LegacyWatch::new(None),
            })),
        }
    }

    fn read(&self, offset: u64, data: &mut [u8]) {
        if self.lie.is_legacy() {
            self.legacy_read(offset, data);
            return;
        }
        let _ = self.regs.borrow().read(offset, data);
        if offset == regs::CONFIG_GENERATION {
            self.generation_reads.set(self.generation_reads.get() + 1);
        }
        if offset == regs::DEVICE_FEATURES && self.lie == Provoke::NoVersion1 {
            // §2.2.1: VIRTIO_F_VERSION_1 is bit 0 of the second word.
            if self.features_sel.get() == 1
                && let Some(b) = data.first_mut()
            {
                *b &= !1;
            }
        }
        self.lie.lie(offset, data, self.generation_reads.get());
        self.watch
            .borrow_mut()
            .read(offset, data.len(), le_u64(data));
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset == regs::DEVICE_FEATURES_SEL {
            self.features_sel.set(le_u64(data) as u32);
        }
        if self.lie.is_legacy() {
            self.legacy_write(offset, data);
            return;
        }
        self.watch
            .borrow_mut()
            .write(offset, data.len(), le_u64(data));
        self.raw_write(offset, data);
    }

    /// A write to the register file as it is, its interrupt told to the
    /// watch.
    fn raw_write(&self, offset: u64, data: &[u8]) {
        let irq = {
            let mut r = self.regs.borrow_mut();
            match r.write(offset, data) {
                Ok(o) => dispatch(&mut r, o),
                Err(_) => false,
            }
        };
        if irq {
            self.watch.borrow_mut().interrupt();
        }
    }

    /// A read on the legacy face: registers through
    /// [`super::legacy_face::Face`], the configuration as it is.
    fn legacy_read(&self, offset: u64, data: &mut [u8]) {
        if offset < regs::CONFIG && data.len() == 4 {
            let v = self.legacy.borrow_mut().face.read(&Raw(self), offset);
            data.copy_from_slice(&v.to_le_bytes());
            self.legacy.borrow_mut().watch.read(offset, v);
        } else {
            let _ = self.regs.borrow().read(offset, data);
        }
    }

    /// A write on the legacy face (see [`legacy_read`](Self::legacy_read)).
    fn legacy_write(&self, offset: u64, data: &[u8]) {
        if offset < regs::CONFIG && data.len() == 4 {
            let v = le_u64(data) as u32;
            self.legacy.borrow_mut().watch.write(offset, v);
            // The face's writes go to the device, which may interrupt:
            // no borrow of the face is held across them but its own.
            let mut face = core::mem::take(&mut self.legacy.borrow_mut().face);
            face.write(&Raw(self), offset, v);
            self.legacy.borrow_mut().face = face;
        } else {
            self.raw_write(offset, data);
        }
    }

    /// What a guest's interrupt handler does: takes the device's finished
    /// work in and acknowledges what `InterruptStatus` shows.
    fn service(&self) {
        let irq = backend_ready(&mut self.regs.borrow_mut());
        if irq {
            self.watch.borrow_mut().interrupt();
        }
        if self.regs.borrow().interrupt_asserted() {
            acknowledge_interrupt(self);
        }
    }
}

impl<D: VirtioDevice> RegisterAccess for Watched<D> {
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

/// A device with the ring watch looking at every queue before the device
/// does (activation, notifications, backend events); what the device does
/// is unchanged. When a driver's session ends (a reset, a new
/// activation, [`finish`](Self::finish)) the watch goes to `done`.
pub struct WatchedDevice<D, M: GuestMemory, F: FnMut(&RingWatch)> {
    inner: D,
    mem: M,
    rings: RingWatch,
    no_rewrites: Option<&'static str>,
    /// Judge notifications (`Some`), provoking them (`Some(true)`).
    notifications: Option<bool>,
    /// Feature bits offered on top of the device's, which it does not have
    /// (a provocation: a feature the driver cannot know).
    extra_offer: u64,
    /// Refuse FEATURES_OK (a provocation, §2.2.2).
    refuse: bool,
    /// Rewrite received network headers (a provocation, see
    /// [`conform::driver::rx_headers`]), counting them here.
    rx_headers: Option<std::sync::Arc<std::sync::atomic::AtomicU32>>,
    /// The queues' layouts and, per queue, the used index up to which
    /// received headers were rewritten.
    layouts: Vec<Option<(virtio_core::split::layout::QueueLayout, u16)>>,
    /// Judge the legacy block framing ([`RingWatch::with_legacy_framing`]).
    legacy_framing: bool,
    /// The cleanup watch (§3.3.1), kept told what the device may still
    /// access after each step.
    cleanup: Option<CleanupHandle>,
    /// Queues the driver stopped (`QueueReady` 0) in this session.
    stopped: Vec<u16>,
    /// Starts a publication prober on a session's queues, when asked
    /// ([`with_publish_order`](Self::with_publish_order)).
    publish: Option<ProberStart>,
    /// The running prober, while a session is live.
    prober: Option<Prober>,
    live: bool,
    done: F,
}

impl<D: VirtioDevice, M: GuestMemory, F: FnMut(&RingWatch)> WatchedDevice<D, M, F> {
    /// `inner`, watched through `mem`; each session's watch goes to
    /// `done`.
    pub fn new(inner: D, mem: M, done: F) -> Self {
        WatchedDevice {
            inner,
            mem,
            rings: RingWatch::default(),
            no_rewrites: None,
            notifications: None,
            extra_offer: 0,
            refuse: false,
            rx_headers: None,
            layouts: Vec::new(),
            legacy_framing: false,
            cleanup: None,
            stopped: Vec::new(),
            publish: None,
            prober: None,
            live: false,
            done,
        }
    }

    /// Keeps `cleanup` told what the device may still access after each
    /// step, so the driver's DMA layer can report removals to it (§3.3.1).
    pub fn watching_cleanup(mut self, cleanup: CleanupHandle) -> Self {
        self.cleanup = Some(cleanup);
        self
    }

    /// Has a thread read each publication of the driver from another CPU
    /// while a session is live, judging its order into `watch`
    /// (§2.7.13.3.1, [`conform::driver::publish`]).
    pub fn with_publish_order(mut self, watch: PublishHandle) -> Self
    where
        M: Clone + Send + 'static,
    {
        let mem = self.mem.clone();
        self.publish = Some(Box::new(move |queues| {
            Prober::start(mem.clone(), queues, watch.clone(), PROBE_GAP)
        }));
        self
    }

    /// Starts the publication prober, if asked for, on the session's
    /// queues that are not stopped.
    fn start_prober(&mut self) {
        if let Some(start) = &self.publish {
            let live: Vec<_> = self
                .layouts
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.stopped.contains(&(*i as u16)))
                .filter_map(|(i, l)| Some((i as u16, l.as_ref()?.0)))
                .collect();
            self.prober = Some(start(live));
        }
    }

    /// Tells the cleanup watch, if any, what is live now.
    fn refresh_live(&self) {
        if let Some(c) = &self.cleanup {
            let live = if self.live {
                self.rings.live_ranges(&self.mem, &self.stopped)
            } else {
                Vec::new()
            };
            c.set_live(live);
        }
    }

    /// Leaves out the comparison of exposed chains (see
    /// [`RingWatch::without_rewrite_check`]).
    pub fn without_rewrite_check(mut self, why: &'static str) -> Self {
        self.no_rewrites = Some(why);
        self
    }

    /// Judges the driver's notifications too, provoking them with decoys
    /// and spurious used-buffer notifications if `provoke` (see
    /// [`conform::driver::notify`]): for a driver in this process only.
    pub fn with_notifications(mut self, provoke: bool) -> Self {
        self.notifications = Some(provoke);
        self
    }

    /// Offers `mask` on top of the device's features, as a device of a
    /// later revision would: bits the driver cannot know (§2.2.1). The
    /// device never sees them accepted.
    pub fn offering_unknown(mut self, mask: u64) -> Self {
        self.extra_offer = mask;
        self
    }

    /// Refuses every feature set at FEATURES_OK (§2.2.2), so the driver's
    /// handling of it shows (§3.1.1: it gives up).
    pub fn refusing_features(mut self) -> Self {
        self.refuse = true;
        self
    }

    /// Judges the legacy framing of block requests (§5.2.6.4) too: the
    /// driver meets a legacy face without VIRTIO_F_ANY_LAYOUT.
    pub fn with_legacy_framing(mut self) -> Self {
        self.legacy_framing = true;
        self
    }

    /// Rewrites the header of each received network frame before the
    /// driver sees it (see [`conform::driver::rx_headers`]), counting them
    /// in `count`.
    pub fn rewriting_rx_headers(
        mut self,
        count: std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) -> Self {
        self.rx_headers = Some(count);
        self
    }

    /// What the device returned in its last step, before the driver can
    /// look: the watch reads what it says (a console's control messages),
    /// and, when provoking, a network device's received headers are
    /// rewritten (its receive queues: the even data queues).
    fn scan_returned(&mut self) {
        if !self.live {
            return;
        }
        let net = self.inner.device_type() == virtio_core::features::DeviceType::Net;
        let n = self.layouts.len();
        let data = n - n % 2;
        for (q, entry) in self.layouts.iter_mut().enumerate() {
            let Some((l, upto)) = entry else {
                continue;
            };
            let Some(now) = conform::driver::rx_headers::used_idx(&self.mem, *l) else {
                continue;
            };
            if now == *upto {
                continue;
            }
            self.rings.returned(&self.mem, q as u16, *l, *upto, now);
            if let Some(count) = &self.rx_headers
                && net
                && q % 2 == 0
                && q < data
            {
                let done = conform::driver::rx_headers::mangle(&self.mem, *l, *upto, now);
                count.fetch_add(done, std::sync::atomic::Ordering::Relaxed);
            }
            *upto = now;
        }
    }

    /// Ends the session: its watch goes to `done`.
    pub fn finish(&mut self) {
        self.prober = None;
        self.layouts.clear();
        self.stopped.clear();
        if core::mem::take(&mut self.live) {
            self.rings.due(&self.mem);
            (self.done)(&self.rings);
        }
        self.refresh_live();
    }

    fn look_all(&mut self) {
        for q in 0..self.inner.queue_max_sizes().len() {
            self.rings.look(&self.mem, q as u16);
        }
    }

    /// A step that notifies nothing of its own now and then carries a
    /// used-buffer notification with nothing used (§2.7.10), when the
    /// watch provokes.
    fn spurious(&mut self, mut r: Result<Served, DeviceError>) -> Result<Served, DeviceError> {
        if let Ok(served) = &mut r
            && self.live
            && !served.interrupt
            && self.rings.spurious_now()
        {
            served.interrupt = true;
        }
        r
    }

    /// After the device had control: tells the watch how far it read each
    /// queue (see [`RingWatch::taken`]).
    fn after<T>(&mut self, r: T) -> T {
        for q in 0..self.inner.queue_max_sizes().len() {
            if let Some(next) = self.inner.avail_taken(q as u16) {
                self.rings.taken(q as u16, next);
            }
            self.rings.stepped(&self.mem, q as u16);
        }
        self.scan_returned();
        self.refresh_live();
        r
    }
}

/// What starts a [`Prober`] on a session's queues.
type ProberStart =
    Box<dyn Fn(Vec<(u16, virtio_core::split::layout::QueueLayout)>) -> Prober + Send>;

/// The cleanup watch (§3.3.1) shared between a [`WatchedDevice`], which
/// keeps it told what the device may still access, and the driver's DMA
/// layer, which reports each removal.
#[derive(Clone, Debug, Default)]
pub struct CleanupHandle(Arc<Mutex<(CleanupWatch, Vec<LiveRange>)>>);

impl CleanupHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, (CleanupWatch, Vec<LiveRange>)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_live(&self, live: Vec<LiveRange>) {
        let mut g = self.lock();
        if !live.is_empty() {
            g.0.went_live();
        }
        g.1 = live;
    }

    /// The driver is removing `len` bytes of DMA memory at `addr`.
    pub fn removing(&self, addr: u64, len: u64) {
        let mut g = self.lock();
        let (watch, live) = &mut *g;
        watch.removing(addr, len, live);
    }

    /// The watch's records so far.
    pub fn records(&self) -> Vec<conform::Record> {
        self.lock().0.records()
    }
}

/// The publication-order watch (§2.7.13.3.1) shared between the prober
/// threads of a [`WatchedDevice`] and the run that reads its records.
#[derive(Clone, Debug, Default)]
pub struct PublishHandle(Arc<Mutex<PublishWatch>>);

impl PublishHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, PublishWatch> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The watch's records so far.
    pub fn records(&self) -> Vec<conform::Record> {
        self.lock().records()
    }

    /// Probes that counted so far.
    pub fn counted(&self) -> u64 {
        self.lock().counted
    }
}

/// The time between the two reads of an entry.
const PROBE_GAP: std::time::Duration = std::time::Duration::from_nanos(500);

/// A thread reading a driver's publications from another CPU while a
/// session is live ([`conform::driver::publish`]).
struct Prober {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    /// Starts probing `queues` in `mem`, judging into `watch`; the two
    /// reads of an entry are `gap` apart (spinning).
    fn start<M: GuestMemory + Send + 'static>(
        mem: M,
        queues: Vec<(u16, virtio_core::split::layout::QueueLayout)>,
        watch: PublishHandle,
        gap: std::time::Duration,
    ) -> Prober {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("publish-prober".into())
            .spawn(move || probe_loop(&mem, &queues, &flag, &watch, gap))
            .ok();
        Prober { stop, thread }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Follows each queue's available index and reads every entry it exposes
/// twice, a moment apart, until `stop`.
fn probe_loop<M: GuestMemory>(
    mem: &M,
    queues: &[(u16, virtio_core::split::layout::QueueLayout)],
    stop: &std::sync::atomic::AtomicBool,
    watch: &PublishHandle,
    gap: std::time::Duration,
) {
    let idx =
        |l: &virtio_core::split::layout::QueueLayout| mem.load_u16_acquire(l.avail_idx()).ok();
    let entry = |l: &virtio_core::split::layout::QueueLayout, slot: u16| {
        let mut e = [0u8; 2];
        mem.read(l.avail_slot(slot % l.size().get()), &mut e)
            .map(|()| u16::from_le_bytes(e))
            .ok()
    };
    let used =
        |l: &virtio_core::split::layout::QueueLayout| mem.load_u16_acquire(l.used_idx()).ok();
    let mut seen: Vec<u16> = queues.iter().map(|(_, l)| idx(l).unwrap_or(0)).collect();
    // Rounds with nothing new: after a few the thread sleeps between
    // looks rather than hold a CPU the driver (or a TCG guest) needs.
    let mut idle = 0u32;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let mut any = false;
        for ((queue, l), next) in queues.iter().zip(seen.iter_mut()) {
            let Some(now) = idx(l) else { continue };
            let half = l.size().get() / 2;
            // Fallen behind: only the newest entries can still be probed.
            if now.wrapping_sub(*next) > half {
                *next = now.wrapping_sub(half);
            }
            while *next != now {
                any = true;
                let slot = *next;
                *next = slot.wrapping_add(1);
                let Some(first) = entry(l, slot) else {
                    continue;
                };
                let t = std::time::Instant::now();
                while t.elapsed() < gap {
                    core::hint::spin_loop();
                }
                let Some(second) = entry(l, slot) else {
                    continue;
                };
                let took = t.elapsed();
                let ahead = idx(l).map_or(u16::MAX, |i| i.wrapping_sub(slot));
                // The driver may write slot `slot` again (a lap later)
                // only once the device returned the chain it exposed
                // there: with at most a ring of chains outstanding, not
                // before the used index passed it.
                let returned = used(l).is_none_or(|u| (u.wrapping_sub(slot) as i16) > 0);
                watch.lock().probe(&Probe {
                    queue: *queue,
                    slot,
                    first,
                    second,
                    fresh: ahead <= half && !returned && took < gap * 20,
                });
            }
        }
        if any {
            idle = 0;
            // Leave the CPU to the driver between bursts too.
            std::thread::sleep(std::time::Duration::from_micros(20));
        } else if idle < 64 {
            idle += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }
}

/// A watched device dropped with a driver session still open (a driver
/// that never resets it) hands that session's watch over too.
impl<D, M: GuestMemory, F: FnMut(&RingWatch)> Drop for WatchedDevice<D, M, F> {
    fn drop(&mut self) {
        self.prober = None;
        if core::mem::take(&mut self.live) {
            self.rings.due(&self.mem);
            (self.done)(&self.rings);
        }
        // A device gone touches nothing.
        if let Some(c) = &self.cleanup {
            c.set_live(Vec::new());
        }
    }
}

impl<D: VirtioDevice, M: GuestMemory, F: FnMut(&RingWatch)> VirtioDevice
    for WatchedDevice<D, M, F>
{
    fn device_type(&self) -> virtio_core::features::DeviceType {
        self.inner.device_type()
    }
    fn device_features(&self) -> u64 {
        self.inner.device_features() | self.extra_offer
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.inner.queue_max_sizes()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.inner.read_config(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.inner.write_config(offset, data);
    }
    fn config_len(&self) -> usize {
        self.inner.config_len()
    }
    fn features_acceptable(&self, features: u64) -> bool {
        !self.refuse && self.inner.features_acceptable(features & !self.extra_offer)
    }
    fn features_ok(&mut self, features: u64) {
        self.inner.features_ok(features & !self.extra_offer);
    }
    fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        let features = features & !self.extra_offer;
        self.finish();
        self.rings = RingWatch::new(features);
        if self.inner.device_type() == virtio_core::features::DeviceType::Blk {
            let limits = BlkLimits::from_config(features, |off, buf| {
                self.inner.read_config(off, buf);
            });
            self.rings = core::mem::take(&mut self.rings).with_blk(limits);
        }
        match self.inner.device_type() {
            virtio_core::features::DeviceType::Rng => {
                self.rings = core::mem::take(&mut self.rings).with_rng();
            }
            virtio_core::features::DeviceType::Console => {
                let multiport =
                    features & virtio_core::features::ConsoleFeatures::MULTIPORT.bits() != 0;
                self.rings = core::mem::take(&mut self.rings).with_console(multiport);
            }
            _ => {}
        }
        if self.inner.device_type() == virtio_core::features::DeviceType::Crypto {
            let limits =
                conform::driver::crypto::CryptoLimits::from_config(features, |off, buf| {
                    self.inner.read_config(off, buf);
                });
            self.rings = core::mem::take(&mut self.rings).with_crypto(limits);
        }
        if self.inner.device_type() == virtio_core::features::DeviceType::Net {
            let limits = NetLimits::from_config(features, |off, buf| {
                self.inner.read_config(off, buf);
            });
            self.rings = core::mem::take(&mut self.rings).with_net(limits);
        }
        if self.legacy_framing {
            self.rings = core::mem::take(&mut self.rings).with_legacy_framing();
        }
        if let Some(why) = self.no_rewrites {
            self.rings = core::mem::take(&mut self.rings).without_rewrite_check(why);
        }
        if let Some(provoke) = self.notifications {
            self.rings = core::mem::take(&mut self.rings).with_notifications(provoke);
        }
        for (i, q) in queues.iter().enumerate() {
            if let Some(l) = q.layout {
                self.rings.queue(&self.mem, i as u16, l);
            }
        }
        self.layouts = queues
            .iter()
            .map(|q| {
                let l = q.layout?;
                Some((l, conform::driver::rx_headers::used_idx(&self.mem, l)?))
            })
            .collect();
        self.live = true;
        self.start_prober();
        let r = self.inner.activate(features, queues);
        self.after(r)
    }
    fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
        // Every queue, not only the one notified: a device may serve others
        // in the same call (a network device fills its receive queue from
        // frames that came in, or resumes transmission).
        self.look_all();
        self.rings.notified(&self.mem, queue);
        let r = self.inner.queue_notify(queue);
        let r = self.spurious(r);
        self.after(r)
    }
    fn backend_ready(&mut self) -> Result<Served, DeviceError> {
        self.look_all();
        let r = self.inner.backend_ready();
        let r = self.spurious(r);
        self.after(r)
    }
    // Every path on which the device may take chains looks first: the
    // watch must copy a chain before the device can return it (and the
    // driver reuse it).
    fn set_polling(&mut self, on: bool) -> Option<Result<Served, DeviceError>> {
        self.look_all();
        let r = self.inner.set_polling(on);
        self.after(r)
    }
    fn quiesce(&mut self) -> Result<Served, DeviceError> {
        self.look_all();
        let r = self.inner.quiesce();
        self.after(r)
    }
    fn reset(&mut self) {
        self.inner.reset();
        self.finish();
    }
    fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
        self.look_all();
        let r = self.inner.disable_queue(queue);
        if r.is_ok() && !self.stopped.contains(&queue) {
            self.stopped.push(queue);
            // The driver may free a stopped queue's rings: probe the
            // others only (the old prober is joined before the driver
            // goes on, this write having trapped).
            if self.prober.take().is_some() {
                self.start_prober();
            }
        }
        self.after(r)
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.inner.counters()
    }
    fn queue_position(&self, queue: u16) -> Option<u16> {
        self.inner.queue_position(queue)
    }
    fn avail_taken(&self, queue: u16) -> Option<u16> {
        self.inner.avail_taken(queue)
    }
    fn set_queue_position(&mut self, queue: u16, next_avail: u16) -> Result<(), DeviceError> {
        self.inner.set_queue_position(queue, next_avail)
    }
    fn create_session(
        &mut self,
        spec: &backends::crypto::SessionSpec<'_>,
    ) -> Option<Result<u64, backends::crypto::CryptoError>> {
        self.inner.create_session(spec)
    }
    fn close_session(&mut self, id: u64) -> Option<Result<(), backends::crypto::CryptoError>> {
        self.inner.close_session(id)
    }
}

/// A provocation of the driver's initialisation, each in a run of its own
/// against the entropy device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provoke {
    /// The device as it is.
    Nothing,
    /// A device-type feature bit the driver cannot know is offered
    /// ([`UNKNOWN_FEATURE`]): the driver must still go live (§2.2.1).
    UnknownFeature,
    /// FEATURES_OK is refused: the driver must give up (§2.2.2, §3.1.1).
    RefusedFeatures,
    /// MagicValue reads wrong: the driver must ignore the device
    /// (§4.2.2.2).
    BadMagic,
    /// Version reads 3: the driver must ignore the device (§4.2.2.2).
    BadVersion,
    /// DeviceID reads 0 (a placeholder): the driver must ignore the device
    /// (§4.2.2.2).
    NoDevice,
    /// InterruptStatus shows an undefined bit too: the driver must ignore
    /// it (§4.2.2.2).
    UndefinedInterruptBits,
    /// ConfigGeneration moves on after its first read, as if the
    /// configuration changed while the driver read it: the driver must
    /// read again (§2.5.1).
    TornConfig,
    /// Received network headers rewritten with what the driver must
    /// ignore (§5.1.6.4.1, [`conform::driver::rx_headers`]).
    RxHeaders,
    /// A console with two ports and MULTIPORT, port 0 named a console
    /// ([`super::targets::multiport_console`]): the driver answers
    /// CONSOLE_PORT with PORT_OPEN 1 (§5.3.6.2.2).
    ConsolePorts,
    /// DeviceFeatures hides VIRTIO_F_VERSION_1 on a version 2 device: the
    /// driver must set FAILED and stop (§2.2.1).
    NoVersion1,
    /// The entropy device behind a legacy (virtio-mmio version 1) face
    /// offering VIRTIO_F_ANY_LAYOUT ([`super::legacy_face`]): the driver is judged
    /// by [`conform::driver::legacy`] instead of the modern register watch.
    Legacy,
    /// The block device behind a legacy face without VIRTIO_F_ANY_LAYOUT,
    /// as QEMU 7.2's legacy virtio-blk offers it: the legacy framing of
    /// block requests (§5.2.6.4) is judged on the rings too.
    LegacyBlk,
}

/// The bit offered as a feature no driver knows: bit 23, a device-type bit
/// (§2.2) the entropy device does not define.
pub const UNKNOWN_FEATURE: u64 = 1 << 23;

impl Provoke {
    /// The provocations, without [`Provoke::Nothing`].
    pub const ALL: [Provoke; 12] = [
        Provoke::UnknownFeature,
        Provoke::RefusedFeatures,
        Provoke::BadMagic,
        Provoke::BadVersion,
        Provoke::NoDevice,
        Provoke::UndefinedInterruptBits,
        Provoke::TornConfig,
        Provoke::RxHeaders,
        Provoke::ConsolePorts,
        Provoke::NoVersion1,
        Provoke::Legacy,
        Provoke::LegacyBlk,
    ];

    /// The provocations made by the device rather than by the register
    /// file's values: those a driver reached through another transport
    /// layer (virtio-drivers through our adapter) meets too.
    pub const DEVICE: [Provoke; 4] = [
        Provoke::UnknownFeature,
        Provoke::RefusedFeatures,
        Provoke::RxHeaders,
        Provoke::ConsolePorts,
    ];

    /// The driver meets a legacy face.
    pub fn is_legacy(self) -> bool {
        matches!(self, Provoke::Legacy | Provoke::LegacyBlk)
    }

    /// The driver's initialisation is meant to fail.
    pub fn init_fails(self) -> bool {
        matches!(
            self,
            Provoke::RefusedFeatures
                | Provoke::BadMagic
                | Provoke::BadVersion
                | Provoke::NoDevice
                | Provoke::NoVersion1
        )
    }

    /// The device the provocation is made with.
    pub fn kind(self) -> Kind {
        match self {
            // A block device has a 64-bit field (capacity).
            Provoke::TornConfig | Provoke::LegacyBlk => Kind::Blk,
            Provoke::RxHeaders => Kind::Net,
            Provoke::ConsolePorts => Kind::Console,
            _ => Kind::Rng,
        }
    }

    /// What a register read at `offset` returns instead of `data`, the
    /// `generation_reads`th read of ConfigGeneration if it is one.
    fn lie(self, offset: u64, data: &mut [u8], generation_reads: u32) {
        let word = match (self, offset) {
            (Provoke::TornConfig, regs::CONFIG_GENERATION) if generation_reads > 1 => {
                Some((le_u64(data) as u32).wrapping_add(1))
            }
            (Provoke::BadMagic, regs::MAGIC_VALUE) => Some(0x7472_6975),
            (Provoke::BadVersion, regs::VERSION) => Some(3),
            (Provoke::NoDevice, regs::DEVICE_ID) => Some(0),
            (Provoke::UndefinedInterruptBits, regs::INTERRUPT_STATUS) => {
                Some(le_u64(data) as u32 | 0x80)
            }
            _ => None,
        };
        if let Some(w) = word {
            let b = w.to_le_bytes();
            let n = data.len().min(4);
            data[..n].copy_from_slice(&b[..n]);
        }
    }

    /// The run's device name in reports.
    pub fn device_name(self, kind: Kind) -> String {
        match self {
            Provoke::Nothing => kind.name().into(),
            Provoke::UnknownFeature => format!("{} (an unknown feature offered)", kind.name()),
            Provoke::RefusedFeatures => format!("{} (FEATURES_OK refused)", kind.name()),
            Provoke::BadMagic => format!("{} (MagicValue wrong)", kind.name()),
            Provoke::BadVersion => format!("{} (Version 3)", kind.name()),
            Provoke::NoDevice => format!("{} (DeviceID 0)", kind.name()),
            Provoke::UndefinedInterruptBits => {
                format!("{} (undefined InterruptStatus bits)", kind.name())
            }
            Provoke::TornConfig => format!("{} (configuration changing while read)", kind.name()),
            Provoke::RxHeaders => format!("{} (received headers rewritten)", kind.name()),
            Provoke::ConsolePorts => format!("{} (two ports, MULTIPORT)", kind.name()),
            Provoke::NoVersion1 => format!("{} (no VIRTIO_F_VERSION_1)", kind.name()),
            Provoke::Legacy => format!("{} (legacy virtio-mmio)", kind.name()),
            Provoke::LegacyBlk => format!(
                "{} (legacy virtio-mmio without VIRTIO_F_ANY_LAYOUT)",
                kind.name()
            ),
        }
    }

    /// `dev` set up for this provocation.
    pub fn apply<D: VirtioDevice, M: GuestMemory, F: FnMut(&RingWatch)>(
        self,
        dev: WatchedDevice<D, M, F>,
        rewritten: &std::sync::Arc<std::sync::atomic::AtomicU32>,
    ) -> WatchedDevice<D, M, F> {
        match self {
            Provoke::UnknownFeature => dev.offering_unknown(UNKNOWN_FEATURE),
            Provoke::RefusedFeatures => dev.refusing_features(),
            Provoke::RxHeaders => dev.rewriting_rx_headers(std::sync::Arc::clone(rewritten)),
            Provoke::LegacyBlk => dev.with_legacy_framing(),
            _ => dev,
        }
    }

    /// The records of what the harness judged itself, after the workload
    /// ended with `error`: the received headers' statements, with
    /// `rewritten` headers given and the driver's checksum state seen or
    /// not.
    pub fn records(
        self,
        rewritten: &std::sync::Arc<std::sync::atomic::AtomicU32>,
        error: Option<&str>,
        checksum_seen: bool,
    ) -> Vec<conform::Record> {
        match self {
            Provoke::RxHeaders => conform::driver::rx_headers::records(
                rewritten.load(std::sync::atomic::Ordering::Relaxed),
                error,
                checksum_seen,
            ),
            _ => Vec::new(),
        }
    }

    /// The register watch told what was provoked.
    pub fn watch(self, w: DriverWatch) -> DriverWatch {
        match self {
            Provoke::UnknownFeature => w.with_unknown_offered(UNKNOWN_FEATURE),
            _ => w,
        }
    }
}

/// A driver copes with spurious used-buffer notifications (§2.7.10) if
/// its workload, which got some (the watch passed the statement), still
/// succeeded.
pub fn coped_with_spurious(records: &mut [conform::Record], error: Option<&str>) {
    let Some(e) = error else {
        return;
    };
    for r in records.iter_mut().filter(|r| {
        r.statement == conform::driver::notify::SPURIOUS && r.outcome == conform::Outcome::Pass
    }) {
        r.outcome = conform::Outcome::Fail(format!(
            "the workload failed after spurious used-buffer notifications: {e}"
        ));
    }
}

/// A ring-watch sink for the vhost-user backend: each driver session's
/// records are appended to `path` as JSON lines (`statement`, `outcome`,
/// `detail`).
pub fn append_records(path: std::path::PathBuf) -> impl FnMut(&RingWatch) + Send {
    append_records_with(path, None)
}

/// [`append_records`] with the publication-order watch's records too
/// (cumulative, after each session), where the device has one
/// ([`WatchedDevice::with_publish_order`]).
pub fn append_records_with(
    path: std::path::PathBuf,
    publish: Option<PublishHandle>,
) -> impl FnMut(&RingWatch) + Send {
    move |rings: &RingWatch| {
        use std::io::Write;
        let mut out = String::new();
        let extra = publish
            .as_ref()
            .map(PublishHandle::records)
            .unwrap_or_default();
        for r in rings.records().iter().chain(extra.iter()) {
            let (outcome, detail) = match &r.outcome {
                conform::Outcome::Pass => ("pass", String::new()),
                conform::Outcome::Fail(w) => ("fail", w.clone()),
                conform::Outcome::Warn(w) => ("warn", w.clone()),
                conform::Outcome::NotApplicable(w) => ("not-applicable", w.clone()),
                conform::Outcome::NotObservable(w) => ("not-observable", w.clone()),
            };
            let line =
                serde_json::json!({"statement": r.statement, "outcome": outcome, "detail": detail});
            out.push_str(&line.to_string());
            out.push('\n');
        }
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(mut f) => {
                let _ = f.write_all(out.as_bytes());
            }
            Err(e) => eprintln!("vhost-user: --watch-driver {}: {e}", path.display()),
        }
    }
}

/// The features the register file offers (read around the watch).
fn offered<D: VirtioDevice>(regs: &Regs<D>) -> u64 {
    let mut r = regs.borrow_mut();
    let mut word = |sel: u32| {
        let _ = r.write32(regs::DEVICE_FEATURES_SEL, sel);
        r.read32(regs::DEVICE_FEATURES).unwrap_or(0)
    };
    let lo = word(0);
    let hi = word(1);
    u64::from(lo) | u64::from(hi) << 32
}

/// Our device under the ring watch, its records kept in this process.
type Observed<D> = WatchedDevice<D, LocalMemory, Box<dyn FnMut(&RingWatch)>>;

/// Runs `workload` with our driver against `dev` under the watch.
fn watched<D: VirtioDevice + 'static>(
    kind: Kind,
    dev: D,
    mem: &LocalMemory,
    workload: fn(WatchedHal, Watched<Observed<D>>) -> Result<(), String>,
    provoke: Provoke,
) -> Run {
    let run = |records, error| Run {
        target: GUEST_DRIVER.into(),
        device: provoke.device_name(kind),
        records,
        error,
    };
    let rings: Rc<RefCell<Vec<conform::Record>>> = Rc::default();
    let sink = Rc::clone(&rings);
    let done: Box<dyn FnMut(&RingWatch)> = Box::new(move |w: &RingWatch| {
        sink.borrow_mut().extend(w.records());
    });
    let rewritten = std::sync::Arc::default();
    let cleanup = CleanupHandle::default();
    let publish = PublishHandle::default();
    let dev: Observed<D> = provoke.apply(
        WatchedDevice::new(dev, mem.clone(), done)
            .with_notifications(provoke == Provoke::Nothing)
            .watching_cleanup(cleanup.clone())
            .with_publish_order(publish.clone()),
        &rewritten,
    );
    let device_type = Some(dev.device_type());
    let max: Vec<u16> = dev.queue_max_sizes().to_vec();
    let config_len = dev.config_len() as u64;
    let regs = match MmioRegisters::new(MmioTransport::new(dev)) {
        Ok(r) => Rc::new(RefCell::new(r)),
        Err(e) => return run(vec![], Some(e.to_string())),
    };
    let offered = offered(&regs);
    let _ = regs.borrow_mut().write32(regs::DEVICE_FEATURES_SEL, 0);
    let watch = Rc::new(RefCell::new(provoke.watch(DriverWatch::new(
        device_type,
        offered,
        &max,
        config_len,
    ))));
    let Some(host) = NonNull::new(mem.host_ptr()) else {
        return run(vec![], Some("no memory".into()));
    };
    // SAFETY: the mapping is `PAGES` pages at `host`, valid while `mem`
    // lives, which outlives the workload; the device reaches the same
    // bytes at `GUEST_BASE`.
    let pool = match unsafe { PoolHal::<PAGES>::new(host, GUEST_BASE, PAGES * 4096) } {
        Ok(h) => h,
        Err(e) => return run(vec![], Some(format!("DMA pool: {e:?}"))),
    };
    let w = Watched {
        regs,
        watch: Rc::clone(&watch),
        lie: provoke,
        generation_reads: Rc::default(),
        features_sel: Rc::default(),
        legacy: Rc::new(RefCell::new(LegacyFace {
            face: super::legacy_face::Face::new(provoke != Provoke::LegacyBlk),
            watch: conform::driver::legacy::LegacyWatch::new(device_type),
        })),
    };
    let hal = WatchedHal {
        pool,
        cleanup: cleanup.clone(),
    };
    let result = workload(hal, w.clone());
    w.regs.borrow_mut().device_mut().device_mut().finish();
    let cleanup = cleanup.records();
    let mut watch = watch.borrow_mut();
    watch.finish();
    let error = result.err().map(|e| format!("the workload failed: {e}"));
    let rings = rings.borrow();
    let mut records = if provoke.is_legacy() {
        // A statement the rings judged (the block framing) is theirs.
        let mut r = w.legacy.borrow().watch.records();
        r.retain(|x| !rings.iter().any(|y| y.statement == x.statement));
        r
    } else {
        watch.records()
    };
    records.extend(rings.iter().cloned());
    records.extend(cleanup);
    records.extend(publish.records());
    coped_with_spurious(&mut records, error.as_deref());
    if kind == Kind::Rng {
        records.extend(super::entropy::records());
    }
    records.extend(provoke.records(&rewritten, error.as_deref(), true));
    run(records, error)
}

/// A wait that runs the interrupt handler between looks, for at most a
/// few thousand rounds.
fn waiter<D: VirtioDevice>(w: &Watched<D>) -> impl FnMut() -> bool + '_ {
    let mut left = 100_000u32;
    move || {
        w.service();
        left = left.saturating_sub(1);
        left > 0
    }
}

fn rng_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::rng::{Rng, RngOptions};
    // Two sessions: with VIRTIO_F_EVENT_IDX and without, so both halves of
    // the notification rules (§2.7.10) are judged.
    for event_idx in [true, false] {
        let opts = RngOptions {
            completion: Completion::Interrupt,
            event_idx,
            ..RngOptions::default()
        };
        // Dropping the driver resets the device and frees its memory.
        let mut rng = Rng::new(&hal, w.clone(), opts).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4096];
        let mut wait = waiter(&w);
        let n = rng.read(&mut buf, &mut wait).map_err(|e| e.to_string())?;
        super::entropy::note_output(&buf[..n]);
    }
    Ok(())
}

fn blk_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::blk::{Blk, BlkOptions};
    let opts = BlkOptions {
        completion: Completion::Interrupt,
        ..BlkOptions::default()
    };
    let mut blk = Blk::new(hal, w.clone(), opts).map_err(|e| e.to_string())?;
    let mut wait = waiter(&w);
    let data = [0x5au8; 4096];
    blk.write(8, &data, &mut wait).map_err(|e| e.to_string())?;
    blk.flush(&mut wait).map_err(|e| e.to_string())?;
    let mut back = [0u8; 4096];
    blk.read(8, &mut back, &mut wait)
        .map_err(|e| e.to_string())?;
    if back != data {
        return Err("the data read back differs".into());
    }
    blk.get_id(&mut wait).map_err(|e| e.to_string())?;
    blk.discard(8, 8, &mut wait).map_err(|e| e.to_string())?;
    blk.write_zeroes(8, 8, true, &mut wait)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Our crypto driver (§5.9): a session of each service the device
/// offers that the driver has a request for, in the legacy layout and
/// with REVISION_1 (stateless requests where negotiated), requests on
/// them, the sessions destroyed.
fn crypto_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::crypto::{
        Crypto, CryptoOptions, Direction, Mode, Op, Service, SessionParams, algo,
    };
    for revision_1 in [false, true] {
        let opts = CryptoOptions {
            completion: Completion::Interrupt,
            revision_1,
            ..CryptoOptions::default()
        };
        let mut c = Crypto::new(&hal, w.clone(), opts).map_err(|e| e.to_string())?;
        let mut wait = waiter(&w);
        let key = [0x2bu8; 16];
        let iv = [0u8; 16];
        let src = [0x6bu8; 32];
        let mut out = [0u8; 64];
        let cipher = SessionParams::Cipher {
            algo: algo::CIPHER_AES_CBC,
            key: &key,
            direction: Direction::Encrypt,
        };
        let id = c
            .create_session(&cipher, &mut wait)
            .map_err(|e| e.to_string())?;
        let op = Op::Cipher {
            direction: Direction::Encrypt,
            iv: &iv,
            src: &src,
        };
        c.run(Mode::Session(id), &op, &mut out, &mut wait)
            .map_err(|e| e.to_string())?;
        if c.stateless(Service::Cipher) {
            c.run(Mode::Stateless(cipher), &op, &mut out, &mut wait)
                .map_err(|e| e.to_string())?;
        }
        c.destroy_session(Service::Cipher, id, &mut wait)
            .map_err(|e| e.to_string())?;
        let hash = SessionParams::Hash {
            algo: algo::SHA256,
            result_len: 32,
        };
        let id = c
            .create_session(&hash, &mut wait)
            .map_err(|e| e.to_string())?;
        let op = Op::Hash {
            src: b"abc",
            result_len: 32,
        };
        c.run(Mode::Session(id), &op, &mut out, &mut wait)
            .map_err(|e| e.to_string())?;
        c.destroy_session(Service::Hash, id, &mut wait)
            .map_err(|e| e.to_string())?;
        let mac = SessionParams::Mac {
            algo: algo::SHA256,
            key: b"Jefe",
            result_len: 32,
        };
        let id = c
            .create_session(&mac, &mut wait)
            .map_err(|e| e.to_string())?;
        let op = Op::Mac {
            src: b"what do ya want for nothing?",
            result_len: 32,
        };
        c.run(Mode::Session(id), &op, &mut out, &mut wait)
            .map_err(|e| e.to_string())?;
        c.destroy_session(Service::Mac, id, &mut wait)
            .map_err(|e| e.to_string())?;
        let aead = SessionParams::Aead {
            algo: algo::AEAD_GCM,
            key: &key,
            tag_len: 16,
            aad_len: 0,
            direction: Direction::Encrypt,
        };
        let id = c
            .create_session(&aead, &mut wait)
            .map_err(|e| e.to_string())?;
        let op = Op::Aead {
            direction: Direction::Encrypt,
            iv: &iv[..12],
            aad: &[],
            src: &src,
            dst_len: 48,
        };
        c.run(Mode::Session(id), &op, &mut out, &mut wait)
            .map_err(|e| e.to_string())?;
        c.destroy_session(Service::Aead, id, &mut wait)
            .map_err(|e| e.to_string())?;
        // An RSA signature (PKCS#1 v1.5, SHA-256) with the crypto guest's
        // OpenSSL key.
        let rsa = SessionParams::Rsa {
            key_type: guest_driver::crypto::rsa::KEY_TYPE_PRIVATE,
            key: include_bytes!("../../conform/vectors/rsa-private.der"),
            padding: guest_driver::crypto::rsa::PKCS1_PADDING,
            hash: guest_driver::crypto::rsa::SHA256,
        };
        let id = c
            .create_session(&rsa, &mut wait)
            .map_err(|e| e.to_string())?;
        let op = Op::Akcipher {
            op: guest_driver::crypto::AkOp::Sign,
            src: &[0xbau8; 32],
            dst_len: 128,
        };
        let mut sig = [0u8; 128];
        c.run(Mode::Session(id), &op, &mut sig, &mut wait)
            .map_err(|e| e.to_string())?;
        c.destroy_session(Service::Akcipher, id, &mut wait)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn console_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::console::{Console, ConsoleOptions};
    let opts = ConsoleOptions {
        completion: Completion::Interrupt,
        ..ConsoleOptions::default()
    };
    let mut con: Console<_, _> = Console::new(hal, w.clone(), opts).map_err(|e| e.to_string())?;
    let mut wait = waiter(&w);
    con.write(b"conformance\n", &mut wait)
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The console with two ports: both come up (DEVICE_ADD, CONSOLE_PORT for
/// port 0), then a write to the console port.
fn console_ports_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::console::{Console, ConsoleOptions};
    let opts = ConsoleOptions {
        completion: Completion::Interrupt,
        ..ConsoleOptions::default()
    };
    let mut con: Console<_, _> = Console::new(hal, w.clone(), opts).map_err(|e| e.to_string())?;
    if !con.is_multiport() {
        return Err("MULTIPORT was not negotiated".into());
    }
    let mut wait = waiter(&w);
    con.wait_for_port(1, &mut wait).map_err(|e| e.to_string())?;
    con.write(b"conformance\n", &mut wait)
        .map_err(|e| e.to_string())?;
    con.poll().map_err(|e| e.to_string())?;
    Ok(())
}

fn net_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::net::{Net, NetOptions};
    let opts = NetOptions {
        completion: Completion::Interrupt,
        ..NetOptions::default()
    };
    let mut net = Net::new(hal, w.clone(), opts).map_err(|e| e.to_string())?;
    // A broadcast frame from the NIC's address, as an OS sends it
    // (§5.1.4.2): the loopback backend sends it back.
    let mut frame = [0u8; 60];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&net.mac());
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    net.transmit(&frame).map_err(|e| e.to_string())?;
    net.flush().map_err(|e| e.to_string())?;
    let mut buf = [0u8; 2048];
    for _ in 0..100_000 {
        w.service();
        net.flush().map_err(|e| e.to_string())?;
        if let Some((n, checksum)) = net.receive_into(&mut buf).map_err(|e| e.to_string())? {
            if buf[..n] != frame {
                return Err(format!("received {n} bytes, not the frame sent"));
            }
            // §5.1.6.4.1: the rewritten header has neither NEEDS_CSUM nor
            // DATA_VALID.
            if w.lie == Provoke::RxHeaders && checksum != guest_driver::net::RxChecksum::Unknown {
                return Err(format!(
                    "the checksum reported {checksum:?} with neither NEEDS_CSUM nor DATA_VALID"
                ));
            }
            // The control queue (§5.1.6.5): filters and the address.
            let mut wait = waiter(&w);
            let mac = net.mac();
            net.set_promiscuous(false, &mut wait)
                .map_err(|e| e.to_string())?;
            net.set_all_multicast(true, &mut wait)
                .map_err(|e| e.to_string())?;
            net.set_mac_table(
                &[[0x02, 0, 0, 0, 0, 0x43]],
                &[[0x01, 0, 0x5e, 0, 0, 1]],
                &mut wait,
            )
            .map_err(|e| e.to_string())?;
            net.set_mac_address(mac, &mut wait)
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
    }
    let counters = w.regs.borrow().device().device().counters();
    Err(format!(
        "the frame did not come back; device counters {counters:?}"
    ))
}

/// Our driver against our device of `kind` in this process, watched.
pub fn guest_driver_in_process(kind: Kind) -> Run {
    let mem = match LocalMemory::new(PAGES as u64 * 4096) {
        Ok(m) => m,
        Err(e) => {
            return Run {
                target: GUEST_DRIVER.into(),
                device: kind.name().into(),
                records: vec![],
                error: Some(e),
            };
        }
    };
    match our_device(kind, &mem) {
        // Short used lengths: the driver's use of them is judged.
        Ok(Device::Rng(_)) => {
            let d = virtio_devices::rng::Rng::new(super::entropy::Trickle::new(), mem.clone());
            watched(kind, d, &mem, rng_workload, Provoke::Nothing)
        }
        Ok(Device::Blk(d)) => watched(kind, d, &mem, blk_workload, Provoke::Nothing),
        Ok(Device::Console(d)) => watched(kind, d, &mem, console_workload, Provoke::Nothing),
        Ok(Device::Net(d)) => watched(kind, d, &mem, net_workload, Provoke::Nothing),
        Ok(Device::Crypto(d)) => watched(kind, d, &mem, crypto_workload, Provoke::Nothing),
        Err(e) => Run {
            target: GUEST_DRIVER.into(),
            device: kind.name().into(),
            records: vec![],
            error: Some(e),
        },
    }
}

/// Our driver against each of our devices, the crypto device included.
pub fn in_process() -> Vec<Run> {
    Kind::ALL
        .into_iter()
        .chain([Kind::Crypto])
        .map(guest_driver_in_process)
        .collect()
}

/// Our driver's initialisation against the entropy device, once per
/// [`Provoke`]ation.
pub fn provoked() -> Vec<Run> {
    Provoke::ALL
        .into_iter()
        .map(|p| {
            let kind = p.kind();
            let failed = |e: String| Run {
                target: GUEST_DRIVER.into(),
                device: p.device_name(kind),
                records: vec![],
                error: Some(e),
            };
            let mem = match LocalMemory::new(PAGES as u64 * 4096) {
                Ok(m) => m,
                Err(e) => return failed(e),
            };
            if p == Provoke::ConsolePorts {
                let d = super::targets::multiport_console(mem.clone());
                return watched(kind, d, &mem, console_ports_workload, p);
            }
            if kind != Kind::Rng {
                return match our_device(kind, &mem) {
                    Ok(Device::Blk(d)) => watched(kind, d, &mem, blk_workload, p),
                    Ok(Device::Net(d)) => watched(kind, d, &mem, net_workload, p),
                    Ok(_) => failed("no workload for this provocation".into()),
                    Err(e) => failed(e),
                };
            }
            let d = virtio_devices::rng::Rng::new(super::entropy::Trickle::new(), mem.clone());
            let workload = match p {
                _ if p.init_fails() => rng_refused_workload,
                Provoke::UndefinedInterruptBits => rng_interrupt_workload,
                _ => rng_workload,
            };
            watched(kind, d, &mem, workload, p)
        })
        .chain([blk_assumptions()])
        .collect()
}

/// An entropy read, then the interrupt handler once while the device is
/// live (its interrupt is still up: it answered inside the notification,
/// so the driver never waited for it).
fn rng_interrupt_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::rng::{Rng, RngOptions};
    let opts = RngOptions {
        completion: Completion::Interrupt,
        ..RngOptions::default()
    };
    let mut rng = Rng::new(&hal, w.clone(), opts).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let mut wait = waiter(&w);
    let n = rng.read(&mut buf, &mut wait).map_err(|e| e.to_string())?;
    super::entropy::note_output(&buf[..n]);
    if !w.regs.borrow().interrupt_asserted() {
        return Err("the device raised no interrupt to handle".into());
    }
    w.service();
    Ok(())
}

/// Our entropy driver's initialisation against a device it must not
/// drive (FEATURES_OK refused, a probe that says "no device"): it must
/// fail (the watch judges what it wrote).
fn rng_refused_workload<D: VirtioDevice>(hal: WatchedHal, w: Watched<D>) -> Result<(), String> {
    use guest_driver::rng::{Rng, RngOptions};
    match Rng::new(&hal, w, RngOptions::default()) {
        Err(_) => Ok(()),
        Ok(_) => Err("the driver went on with a device it should have given up".into()),
    }
}

/// A memory disk whose discards fail from byte `fail_from` on (a bad
/// region): a DISCARD of several ranges then does the first and fails on
/// the next, so the device answers IOERR for a request it partly did
/// (§5.2.6.1).
struct BadRegionDisk {
    disk: MemoryDisk,
    fail_from: u64,
}

impl BlockBackend for BadRegionDisk {
    fn size(&self) -> u64 {
        self.disk.size()
    }
    fn read_only(&self) -> bool {
        self.disk.read_only()
    }
    fn supports_discard(&self) -> bool {
        true
    }
    fn supports_write_zeroes(&self) -> bool {
        self.disk.supports_write_zeroes()
    }
    fn write_cache(&self) -> bool {
        self.disk.write_cache()
    }
    fn set_write_cache(&mut self, writeback: bool) {
        self.disk.set_write_cache(writeback);
    }
    unsafe fn read_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.disk.read_vectored(offset, segments) }
    }
    unsafe fn write_vectored(
        &mut self,
        offset: u64,
        segments: &[IoSegment],
    ) -> Result<(), BlockError> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.disk.write_vectored(offset, segments) }
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.disk.flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        if offset.saturating_add(len) > self.fail_from {
            return Err(BlockError::Io {
                what: format!("discard of {len} bytes at {offset}"),
                err: std::io::Error::other("a bad region (test equipment)"),
            });
        }
        self.disk.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        self.disk.write_zeroes(offset, len, unmap)
    }
}

/// The target's device name for [`blk_assumptions`].
pub const BLK_ASSUMPTIONS: &str = "blk (what the driver must not assume)";

/// Our block driver against what it must not assume (§5.2.6.1), through
/// its own API and a device that provokes each: after a write in
/// writeback mode and `set_writeback(false)`, `flush()` must still send a
/// FLUSH (#12); after a DISCARD the host fills the sectors with bytes of
/// its own, which a read must return (#14); a DISCARD of two ranges
/// whose second lies in a bad region (the first done, the request failed
/// with IOERR) must fail as a whole (#15).
pub fn blk_assumptions() -> Run {
    let run = |records, error| Run {
        target: GUEST_DRIVER.into(),
        device: BLK_ASSUMPTIONS.into(),
        records,
        error,
    };
    match assumptions() {
        Ok(records) => run(records, None),
        Err(e) => run(vec![], Some(e)),
    }
}

fn assumptions() -> Result<Vec<conform::Record>, String> {
    use conform::Outcome;
    use guest_driver::blk::{Blk, BlkError, BlkOptions};
    const SECTORS: usize = 2048;
    // The bad region: the last 64 sectors.
    let fail_from = (SECTORS as u64 - 64) * 512;
    let mem = LocalMemory::new(PAGES as u64 * 4096)?;
    let disk = BadRegionDisk {
        disk: MemoryDisk::new(SECTORS),
        fail_from,
    };
    let dev = virtio_devices::blk::Blk::new(disk, mem.clone(), super::targets::blk_config())
        .map_err(|e| e.to_string())?;
    let regs = Rc::new(RefCell::new(
        MmioRegisters::new(MmioTransport::new(dev)).map_err(|e| e.to_string())?,
    ));
    let w = Watched::unjudged(regs);
    let host = NonNull::new(mem.host_ptr()).ok_or("no memory")?;
    // SAFETY: the mapping is `PAGES` pages at `host`, valid while `mem`
    // lives, which outlives the driver; the device reaches the same bytes
    // at `GUEST_BASE`.
    let pool = unsafe { PoolHal::<PAGES>::new(host, GUEST_BASE, PAGES * 4096) }
        .map_err(|e| format!("DMA pool: {e:?}"))?;
    let opts = BlkOptions {
        completion: Completion::Interrupt,
        ..BlkOptions::default()
    };
    let mut blk = Blk::new(&pool, w.clone(), opts).map_err(|e| e.to_string())?;
    let mut wait = waiter(&w);
    let flushes = |w: &Watched<virtio_devices::blk::Blk<BadRegionDisk, LocalMemory>>| {
        w.regs
            .borrow()
            .device()
            .device()
            .counters()
            .iter()
            .find(|(n, _)| *n == "flushes")
            .map_or(0, |(_, v)| *v)
    };
    let e = |e: BlkError| e.to_string();
    let mut records = Vec::new();
    let mut record = |statement, outcome| {
        records.push(conform::Record {
            statement,
            check: conform::driver::requests::BLK_ASSUMPTIONS.name,
            outcome,
        })
    };
    let [wb, discarded, segments] = [
        conform::driver::requests::BLK_ASSUMPTION_STATEMENTS[0],
        conform::driver::requests::BLK_ASSUMPTION_STATEMENTS[1],
        conform::driver::requests::BLK_ASSUMPTION_STATEMENTS[2],
    ];
    // #12: a volatile write, writethrough set, then flush().
    let written: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
    blk.write(8, &written, &mut wait).map_err(e)?;
    match blk.set_writeback(false) {
        Err(BlkError::NotNegotiated { .. }) => record(
            wb,
            Outcome::NotObservable("VIRTIO_BLK_F_CONFIG_WCE not negotiated".into()),
        ),
        Err(err) => return Err(err.to_string()),
        Ok(()) => {
            let before = flushes(&w);
            blk.flush(&mut wait).map_err(e)?;
            let after = flushes(&w);
            record(
                wb,
                if after > before {
                    Outcome::Pass
                } else {
                    Outcome::Fail(
                        "after a write in writeback mode and writeback set to 0, flush() sent no FLUSH: the write was assumed committed".into(),
                    )
                },
            );
        }
    }
    // #14: discarded sectors read back as whatever the device returns.
    blk.discard(8, 8, &mut wait).map_err(e)?;
    let theirs: Vec<u8> = (0..4096u32).map(|i| (i * 37 + 11) as u8 ^ 0xa5).collect();
    w.regs
        .borrow_mut()
        .device_mut()
        .device_mut()
        .backend_mut()
        .disk
        .data_mut()[8 * 512..16 * 512]
        .copy_from_slice(&theirs);
    let mut back = vec![0u8; 4096];
    blk.read(8, &mut back, &mut wait).map_err(e)?;
    record(
        discarded,
        if back == theirs {
            Outcome::Pass
        } else if back == written {
            Outcome::Fail("a read after DISCARD returned the data written before it, not what the device returned".into())
        } else if back.iter().all(|b| *b == 0) {
            Outcome::Fail(
                "a read after DISCARD returned zeros, not what the device returned".into(),
            )
        } else {
            Outcome::Fail("a read after DISCARD returned bytes the device did not".into())
        },
    );
    // #15: the first range done, the second in the bad region: IOERR.
    let bad = fail_from / 512;
    let r = blk.discard_ranges(&[(16, 8), (bad, 8)], &mut wait);
    record(
        segments,
        match r {
            Err(BlkError::IoError) => Outcome::Pass,
            Ok(()) => Outcome::Fail(
                "a DISCARD of two ranges the device failed with IOERR was reported done".into(),
            ),
            Err(err) => Outcome::Fail(format!(
                "a DISCARD of two ranges the device failed with IOERR was reported as {err}, not as the request's I/O error"
            )),
        },
    );
    drop(wait);
    drop(blk);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// §3.3.1 through the whole path: while our entropy driver holds its
    /// queue live, a removal of its DMA memory covers the rings the
    /// device may still touch and breaks the statement; the same removal
    /// after the driver reset the device (dropped) is judged kept but
    /// does not undo the breach.
    #[test]
    fn section_3_3_1_a_removal_while_live_is_caught() {
        use guest_driver::rng::{Rng, RngOptions};
        let mem = LocalMemory::new(PAGES as u64 * 4096).unwrap();
        let dev = virtio_devices::rng::Rng::new(super::super::entropy::Trickle::new(), mem.clone());
        let cleanup = CleanupHandle::default();
        let dev = WatchedDevice::new(dev, mem.clone(), |_: &RingWatch| {})
            .watching_cleanup(cleanup.clone());
        let regs = Rc::new(RefCell::new(
            MmioRegisters::new(MmioTransport::new(dev)).unwrap(),
        ));
        let w = Watched::unjudged(regs);
        let host = NonNull::new(mem.host_ptr()).unwrap();
        // SAFETY: the mapping is `PAGES` pages at `host`, alive while `mem`
        // is, which outlives the driver.
        let pool = unsafe { PoolHal::<PAGES>::new(host, GUEST_BASE, PAGES * 4096) }.unwrap();
        let rng = Rng::new(&pool, w.clone(), RngOptions::default()).unwrap();
        cleanup.removing(GUEST_BASE, PAGES as u64 * 4096);
        drop(rng);
        cleanup.removing(GUEST_BASE, PAGES as u64 * 4096);
        let records = cleanup.records();
        match &records[0].outcome {
            conform::Outcome::Fail(why) => {
                assert!(why.contains("queue 0's descriptor table"), "{why}")
            }
            o => panic!("{o:?}"),
        }
    }

    /// §2.7.13.3.1 through the prober thread: a "driver" that stores the
    /// available index, then the entry it exposes, is caught (the reads
    /// are 2 ms apart here, the entry follows 1 ms after the index, over
    /// 20 publications); one that stores the entry first is not.
    #[test]
    fn section_2_7_13_3_1_the_prober_catches_an_index_published_early() {
        use virtio_core::memory::GuestAddress;
        use virtio_core::split::layout::{QueueLayout, QueueSize};
        let publish = |early: bool| {
            let mem = LocalMemory::new(64 * 1024).unwrap();
            let l = QueueLayout::new(
                QueueSize::new(16).unwrap(),
                GuestAddress(GUEST_BASE),
                GuestAddress(GUEST_BASE + 0x1000),
                GuestAddress(GUEST_BASE + 0x2000),
            )
            .unwrap();
            let watch = PublishHandle::default();
            let gap = std::time::Duration::from_millis(2);
            let prober = Prober::start(mem.clone(), vec![(0, l)], watch.clone(), gap);
            for n in 0..20u16 {
                let entry = (n * 3 + 1) % 16;
                if early {
                    mem.store_u16_release(l.avail_idx(), n + 1).unwrap();
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    mem.write(l.avail_slot(n % 16), &entry.to_le_bytes())
                        .unwrap();
                } else {
                    mem.write(l.avail_slot(n % 16), &entry.to_le_bytes())
                        .unwrap();
                    mem.store_u16_release(l.avail_idx(), n + 1).unwrap();
                }
                std::thread::sleep(std::time::Duration::from_millis(8));
            }
            drop(prober);
            (watch.records()[0].outcome.clone(), watch.counted())
        };
        let (good, counted) = publish(false);
        assert_eq!(good, conform::Outcome::Pass, "{counted} probes");
        let (bad, _) = publish(true);
        assert!(matches!(bad, conform::Outcome::Fail(_)), "{bad:?}");
    }
}
