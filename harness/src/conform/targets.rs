//! The devices the conformance checks run against, each behind a
//! [`conform::Bus`]: ours in this process (the register file and device
//! model in one process, nothing hidden) and any vhost-user backend
//! through our frontend (virtio-user: only the rings are the backend's).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::block::memory::MemoryDisk;
use backends::chardev::RingBuf;
use backends::hostmem::HostMemory;
use backends::net::loopback::Loopback;
use backends::rng::Deterministic;
use conform::{Bus, Patience, Record};
use virtio_core::GuestMemory;
use virtio_core::features::DeviceType;
use virtio_core::memory::{Access, GuestAddress, Mapping, MemoryError, Region, RegionMemory};
use virtio_core::mmio::device::MmioRegisters;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::console::Console;
use virtio_devices::device::VirtioDevice;
use virtio_devices::net::{Net, NetConfig};
use virtio_devices::rng::Rng;
use virtio_devices::transport::{MmioTransport, backend_ready, dispatch};
use virtio_user::{GUEST_BASE, UserDevice, UserMemory, UserRam, UserRegisters, VhostUserKind};

/// How long a check waits for something it expects.
const EXPECT: Duration = Duration::from_secs(2);
/// How long a check watches for something that should not happen.
const QUIET: Duration = Duration::from_millis(30);
/// Guest memory for the checks' rings and buffers.
const DMA_LEN: u64 = 4 << 20;

/// When a wait with `patience` gives up.
fn deadline(patience: Patience) -> Instant {
    Instant::now()
        + match patience {
            Patience::Expect => EXPECT,
            Patience::Quiet => QUIET,
        }
}

/// The device types the checks know a request for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// virtio-rng.
    Rng,
    /// virtio-blk.
    Blk,
    /// virtio-console.
    Console,
    /// virtio-net.
    Net,
    /// virtio-crypto (not in [`Kind::ALL`], whose kinds every peer driver
    /// and vhost-user target covers; the crypto runs add it where a
    /// target has it).
    Crypto,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Rng, Kind::Blk, Kind::Console, Kind::Net];

    /// Its name (`rng`, `blk`, …).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Rng => "rng",
            Kind::Blk => "blk",
            Kind::Console => "console",
            Kind::Net => "net",
            Kind::Crypto => "crypto",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The catalogue area of its device-type statements.
    pub fn area(self) -> &'static str {
        self.name()
    }

    fn vhost_user(self) -> VhostUserKind {
        match self {
            Kind::Blk => VhostUserKind::Blk {
                num_queues: 1,
                queue_size: 256,
            },
            Kind::Rng => VhostUserKind::Rng,
            Kind::Net => VhostUserKind::Net {
                mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
                queue_size: 256,
            },
            Kind::Console => VhostUserKind::Generic {
                device_type: DeviceType::Console,
                num_vqs: 4,
                vq_size: 128,
                config_size: 12,
            },
            Kind::Crypto => virtio_user::crypto::kind(),
        }
    }
}

/// Anonymous host memory as guest memory at [`GUEST_BASE`], shared by the
/// device model and the checks in one process.
#[derive(Clone, Debug)]
pub struct LocalMemory(Arc<(RegionMemory<1>, HostMemory)>);

impl LocalMemory {
    /// `len` bytes of zeroed anonymous memory.
    pub fn new(len: u64) -> Result<LocalMemory, String> {
        let host = HostMemory::ram(len, false, false).map_err(|e| e.to_string())?;
        let mut regions = RegionMemory::new();
        // SAFETY: `host` is `len` bytes mapped read-write; the region is
        // dropped with it (both in one `Arc`), and all accesses through
        // `RegionMemory` are copies or atomics.
        let region = unsafe { Region::new(GuestAddress(GUEST_BASE), host.as_ptr(), len) };
        regions.add(region).map_err(|e| format!("{e:?}"))?;
        Ok(LocalMemory(Arc::new((regions, host))))
    }

    /// The host address of its first byte (guest address [`GUEST_BASE`]).
    pub fn host_ptr(&self) -> *mut u8 {
        self.0.1.as_ptr()
    }
}

impl GuestMemory for LocalMemory {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        GuestMemory::map(&self.0.0, addr, len, access)
    }
    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        GuestMemory::read(&self.0.0, addr, buf)
    }
    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        GuestMemory::write(&self.0.0, addr, buf)
    }
    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        GuestMemory::load_u16_acquire(&self.0.0, addr)
    }
    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        GuestMemory::store_u16_release(&self.0.0, addr, val)
    }
}

/// Register access to a device model in this process: each write's
/// outcome is served at once, as a trapped MMIO write would be.
struct Local<D: VirtioDevice>(RefCell<MmioRegisters<MmioTransport<D>, 8>>);

impl<D: VirtioDevice> RegisterAccess for Local<D> {
    fn read32(&self, offset: u64) -> u32 {
        self.0.borrow().read32(offset).unwrap_or(0)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes());
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0; 2];
        let _ = self.0.borrow().read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.write(offset, &value.to_le_bytes());
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0; 1];
        let _ = self.0.borrow().read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        self.write(offset, &[value]);
    }
}

impl<D: VirtioDevice> Local<D> {
    fn write(&self, offset: u64, data: &[u8]) {
        let mut r = self.0.borrow_mut();
        if let Ok(o) = r.write(offset, data) {
            dispatch(&mut r, o);
        }
    }
}

/// [`Bus::wait`] for a device model in this process: looks at `done`
/// until it holds or `patience` runs out, taking in between the work a
/// backend finished (a file, a socket), as the monitor's event loop would.
fn wait_local<D: VirtioDevice>(
    regs: &Local<D>,
    done: &mut dyn FnMut() -> bool,
    patience: Patience,
) -> bool {
    let deadline = deadline(patience);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        backend_ready(&mut regs.0.borrow_mut());
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// What the host does to a device to change its configuration; whether
/// the device says it changed.
type HostChange<D> = Box<dyn Fn(&mut D) -> bool>;

/// One of our device models in this process.
struct LocalBus<D: VirtioDevice> {
    regs: Local<D>,
    mem: LocalMemory,
    /// What the host does to change the device's configuration, and
    /// whether the device says it changed ([`Bus::change_config`]).
    host: Option<HostChange<D>>,
}

impl<D: VirtioDevice> Bus for LocalBus<D> {
    fn regs(&self) -> &dyn RegisterAccess {
        &self.regs
    }
    fn mem(&self) -> &dyn conform::Memory {
        &self.mem
    }
    fn dma(&self) -> (GuestAddress, u64) {
        (GuestAddress(GUEST_BASE), DMA_LEN)
    }
    fn wait(&self, done: &mut dyn FnMut() -> bool, patience: Patience) -> bool {
        wait_local(&self.regs, done, patience)
    }
    fn path(&self) -> conform::Path {
        conform::Path::InProcess
    }
    fn change_config(&self) -> Option<bool> {
        let host = self.host.as_ref()?;
        let mut regs = self.regs.0.borrow_mut();
        let changed = host(regs.device_mut().device_mut());
        if changed {
            // What the transport does with a device's `config_changed`.
            regs.config_changed();
        }
        Some(changed)
    }
}

fn local<D: VirtioDevice + 'static>(dev: D, mem: LocalMemory) -> Result<Box<dyn Bus>, String> {
    local_with_host(dev, mem, None)
}

fn local_with_host<D: VirtioDevice + 'static>(
    dev: D,
    mem: LocalMemory,
    host: Option<HostChange<D>>,
) -> Result<Box<dyn Bus>, String> {
    let regs = MmioRegisters::new(MmioTransport::new(dev)).map_err(|e| e.to_string())?;
    Ok(Box::new(LocalBus {
        regs: Local(RefCell::new(regs)),
        mem,
        host,
    }))
}

/// One of our device models over [`LocalMemory`] (built once per run: the
/// sizes of the variants do not matter).
#[allow(clippy::large_enum_variant)]
pub enum Device<M = LocalMemory> {
    /// virtio-rng on a seeded stream.
    Rng(Rng<Deterministic, M>),
    /// virtio-blk on a 1 MiB memory disk.
    Blk(Blk<MemoryDisk, M>),
    /// virtio-console on a ring-buffer chardev.
    Console(Console<M>),
    /// virtio-net on a loopback network.
    Net(Net<Loopback, M>),
    /// virtio-crypto on the builtin cryptodev, one data queue.
    Crypto(virtio_devices::crypto::Crypto<backends::crypto::builtin::Builtin, M>),
}

/// Our device of `kind` over `mem`, with an in-memory backend (a seeded
/// entropy stream, a 1 MiB memory disk (discard and write zeroes offered), a ring-buffer chardev, a loopback
/// network with two queue pairs).
pub fn our_device<M: GuestMemory + Clone>(kind: Kind, mem: &M) -> Result<Device<M>, String> {
    Ok(match kind {
        Kind::Rng => Device::Rng(Rng::new(Deterministic::new(1), mem.clone())),
        Kind::Blk => Device::Blk(
            Blk::new(MemoryDisk::new(2048), mem.clone(), blk_config())
                .map_err(|e| e.to_string())?,
        ),
        Kind::Console => {
            Device::Console(Console::new(mem.clone(), Box::new(RingBuf::<4096>::new())))
        }
        Kind::Crypto => Device::Crypto(virtio_devices::crypto::Crypto::new(
            backends::crypto::builtin::Builtin::default(),
            mem.clone(),
            1,
        )),
        Kind::Net => Device::Net(
            Net::new(
                Loopback::new(64, 1 << 20),
                mem.clone(),
                NetConfig {
                    queue_pairs: 2,
                    ..NetConfig::default()
                },
            )
            .map_err(|e| e.to_string())?,
        ),
    })
}

/// Our console with two ports and MULTIPORT, port 0 a console (so the
/// device sends CONSOLE_PORT for it, §5.3.6.2) and port 1 named.
pub fn multiport_console<M: GuestMemory>(mem: M) -> Console<M> {
    use virtio_devices::console::Port;
    Console::with_ports(
        mem,
        vec![
            Port::new(Box::new(RingBuf::<4096>::new()), true, None),
            Port::new(
                Box::new(RingBuf::<4096>::new()),
                false,
                Some("org.bothends.conform".into()),
            ),
        ],
        true,
    )
}

/// Our block device's configuration in the checks: as the monitor's
/// default, with discard and write zeroes offered.
pub(crate) fn blk_config() -> BlkConfig {
    BlkConfig {
        discard: true,
        write_zeroes: true,
        ..BlkConfig::default()
    }
}

/// Our block device on a read-only 1 MiB memory disk (`VIRTIO_BLK_F_RO`),
/// in this process.
pub fn ours_read_only_blk() -> Result<Box<dyn Bus>, String> {
    let mem = LocalMemory::new(DMA_LEN)?;
    let disk = MemoryDisk::new(2048).with_read_only(true);
    let blk = Blk::new(disk, mem.clone(), blk_config()).map_err(|e| e.to_string())?;
    local(blk, mem)
}

/// Our device of `kind` in this process (see [`our_device`]).
pub fn ours_in_process(kind: Kind) -> Result<Box<dyn Bus>, String> {
    let mem = LocalMemory::new(DMA_LEN)?;
    match our_device(kind, &mem)? {
        Device::Rng(d) => local(d, mem),
        Device::Blk(d) => local(d, mem),
        Device::Console(d) => local(d, mem),
        Device::Crypto(d) => local(d, mem),
        // The host flips the link (QMP `set_link`), down then up.
        Device::Net(d) => {
            let up = std::cell::Cell::new(true);
            local_with_host(
                d,
                mem,
                Some(Box::new(move |n: &mut Net<Loopback, LocalMemory>| {
                    up.set(!up.get());
                    n.set_link(up.get())
                })),
            )
        }
    }
}

/// One of our device models behind a legacy face (test equipment: see
/// [`super::legacy_face`]): registers through the face, the configuration
/// as it is.
struct LegacyRegs<D: VirtioDevice> {
    inner: Local<D>,
    face: RefCell<super::legacy_face::Face>,
}

impl<D: VirtioDevice> RegisterAccess for LegacyRegs<D> {
    fn read32(&self, offset: u64) -> u32 {
        if offset < virtio_core::mmio::regs::CONFIG {
            self.face.borrow_mut().read(&self.inner, offset)
        } else {
            self.inner.read32(offset)
        }
    }
    fn write32(&self, offset: u64, value: u32) {
        if offset < virtio_core::mmio::regs::CONFIG {
            self.face.borrow_mut().write(&self.inner, offset, value);
        } else {
            self.inner.write32(offset, value);
        }
    }
    fn read16(&self, offset: u64) -> u16 {
        self.inner.read16(offset)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.inner.write16(offset, value);
    }
    fn read8(&self, offset: u64) -> u8 {
        self.inner.read8(offset)
    }
    fn write8(&self, offset: u64, value: u8) {
        self.inner.write8(offset, value);
    }
}

struct LegacyBus<D: VirtioDevice> {
    regs: LegacyRegs<D>,
    mem: LocalMemory,
}

impl<D: VirtioDevice> Bus for LegacyBus<D> {
    fn regs(&self) -> &dyn RegisterAccess {
        &self.regs
    }
    fn mem(&self) -> &dyn conform::Memory {
        &self.mem
    }
    fn dma(&self) -> (GuestAddress, u64) {
        (GuestAddress(GUEST_BASE), DMA_LEN)
    }
    fn wait(&self, done: &mut dyn FnMut() -> bool, patience: Patience) -> bool {
        wait_local(&self.regs.inner, done, patience)
    }
    fn path(&self) -> conform::Path {
        conform::Path::InProcess
    }
}

/// Our device of `kind` in this process behind a legacy (virtio-mmio
/// version 1) face offering VIRTIO_F_ANY_LAYOUT if `any_layout` and the
/// low-word feature bits `extra`, which the device does not honour: test
/// equipment for the legacy checks (see [`super::legacy_face`]), not a
/// target of the report. Not for network devices (an error).
pub fn ours_behind_legacy_face(
    kind: Kind,
    any_layout: bool,
    extra: u32,
) -> Result<Box<dyn Bus>, String> {
    fn bus<D: VirtioDevice + 'static>(
        dev: D,
        mem: LocalMemory,
        face: super::legacy_face::Face,
    ) -> Result<Box<dyn Bus>, String> {
        let regs = MmioRegisters::new(MmioTransport::new(dev)).map_err(|e| e.to_string())?;
        Ok(Box::new(LegacyBus {
            regs: LegacyRegs {
                inner: Local(RefCell::new(regs)),
                face: RefCell::new(face),
            },
            mem,
        }))
    }
    let mem = LocalMemory::new(DMA_LEN)?;
    let mut face = super::legacy_face::Face::new(any_layout);
    face.extra = extra;
    match our_device(kind, &mem)? {
        Device::Rng(d) => bus(d, mem, face),
        Device::Blk(d) => bus(d, mem, face),
        Device::Console(d) => bus(d, mem, face),
        // The face maps registers, not buffers: the modern 12-byte header
        // would stay.
        Device::Net(_) => Err(
            "a network device keeps its modern header behind the legacy face: not offered".into(),
        ),
        Device::Crypto(_) => Err("no legacy crypto device: virtio-crypto is modern only".into()),
    }
}

/// A vhost-user backend through our frontend in this process.
struct UserBus {
    dev: UserDevice,
    regs: UserRegisters,
    mem: UserMemory,
    /// The block backend's image, where the run knows it.
    backing: Option<PathBuf>,
}

/// `cachestat(2)` (Linux 6.5): the same number on every architecture.
const SYS_CACHESTAT: libc::c_long = 451;

/// Bytes of `path` in `[offset, offset + len)` (`len` 0: to the end) the
/// host's page cache holds dirty or under writeback, from `cachestat(2)`.
/// An error for a file on tmpfs or ramfs, whose pages are never marked
/// dirty (so nothing would ever look unwritten).
pub fn unwritten_bytes(path: &Path, offset: u64, len: u64) -> Result<u64, String> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        cache: u64,
        dirty: u64,
        writeback: u64,
        evicted: u64,
        recently_evicted: u64,
    }
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: an all-zero `statfs` is a valid value of the plain C struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a live, writable `statfs`; `f` is open.
    if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&f), &mut fs) } != 0 {
        return Err(format!(
            "statfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.f_type as i64;
    if kind == TMPFS_MAGIC || kind == RAMFS_MAGIC {
        return Err(format!(
            "{} is on tmpfs or ramfs, whose pages are never marked dirty",
            path.display()
        ));
    }
    let range = Range { off: offset, len };
    let mut st = Stat::default();
    // SAFETY: cachestat reads `range` and writes `st`, both alive for the
    // call and laid out as the kernel's `struct cachestat_range` and
    // `struct cachestat`; `f` stays open until after it returns.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            &range as *const Range,
            &mut st as *mut Stat,
            0u32,
        )
    };
    if r != 0 {
        return Err(format!(
            "cachestat {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Ok((st.dirty + st.writeback) * page)
}

impl Bus for UserBus {
    fn regs(&self) -> &dyn RegisterAccess {
        &self.regs
    }
    fn mem(&self) -> &dyn conform::Memory {
        &self.mem
    }
    fn dma(&self) -> (GuestAddress, u64) {
        (GuestAddress(GUEST_BASE), DMA_LEN)
    }
    fn wait(&self, done: &mut dyn FnMut() -> bool, patience: Patience) -> bool {
        let deadline = deadline(patience);
        loop {
            self.dev.take_calls();
            if done() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || self.dev.is_dead() {
                return false;
            }
            self.dev
                .block((deadline - now).min(Duration::from_millis(5)));
        }
    }
    fn path(&self) -> conform::Path {
        conform::Path::VhostUser
    }
    fn unwritten(&self, offset: u64, len: u64) -> Option<Result<u64, String>> {
        let path = self.backing.as_ref()?;
        Some(unwritten_bytes(path, offset, len))
    }
}

/// The vhost-user backend on `socket`, a device of `kind`. Waits a
/// moment for the socket to listen (some backends listen again only a
/// while after their last frontend left).
pub fn vhost_user(socket: &Path, kind: Kind) -> Result<Box<dyn Bus>, String> {
    vhost_user_backed(socket, kind, None)
}

/// [`vhost_user()`] for a block backend whose image is `backing`: the
/// checks then see what the host holds unwritten of it
/// ([`conform::Bus::unwritten`]).
pub fn vhost_user_backed(
    socket: &Path,
    kind: Kind,
    backing: Option<&Path>,
) -> Result<Box<dyn Bus>, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !crate::daemon::unix_listening(socket) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ram = UserRam::new(DMA_LEN).map_err(|e| e.to_string())?;
    let dev = UserDevice::connect(socket, kind.vhost_user(), &ram)
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let regs = dev.registers();
    Ok(Box::new(UserBus {
        regs,
        mem: ram.guest_memory(),
        dev,
        backing: backing.map(Path::to_path_buf),
    }))
}

/// Runs every device check against `bus`.
pub fn run_device_checks(bus: &dyn Bus) -> Vec<Record> {
    conform::run(bus, conform::device::CHECKS)
}

/// Runs every device check on a bus of its own from `connect` (a fresh
/// vhost-user connection per check, so that one check's trouble, such as
/// a backend that does not start again after a reset, does not spill into
/// the next); a check whose connection fails fails all its statements.
pub fn run_device_checks_each(connect: &dyn Fn() -> Result<Box<dyn Bus>, String>) -> Vec<Record> {
    let mut out = Vec::new();
    for c in conform::device::CHECKS {
        match connect() {
            Ok(bus) => out.extend(conform::run(bus.as_ref(), std::slice::from_ref(c))),
            Err(e) => out.extend(c.statements.iter().map(|s| Record {
                statement: s,
                check: c.name,
                outcome: conform::Outcome::Fail(format!("could not connect: {e}")),
            })),
        }
    }
    out
}
