//! Shared by the virtio-blk tests: a disk over a `Vec<u8>` the test can
//! look into while the device owns it, and a rig (our driver queue and the
//! device over one memory) that builds requests byte by byte.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard};

use backends::IoSegment;
use backends::block::{BlockBackend, BlockError, QueuedOp, check_range};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::{DriverQueue, Token};
use virtio_core::testing::OwnedMemory;

use crate::queue_rig;
#[allow(unused_imports)]
pub use crate::queue_rig::{Buf, QSIZE, layout};
use virtio_devices::blk::{Blk, BlkConfig};
use virtio_devices::device::{Served, VirtioDevice};

/// What the disk holds and what happened to it.
#[derive(Default)]
pub struct DiskState {
    pub data: Vec<u8>,
    pub read_only: bool,
    pub block_size: u32,
    pub discard: bool,
    pub write_zeroes: bool,
    /// Whether the backend takes writethrough on itself (flushing after
    /// each write when the cache is off) and reports it; `false` models a
    /// backend that ignores `set_write_cache`.
    pub honours_writethrough: bool,
    /// The mode the device last asked for.
    pub cache: bool,
    pub set_cache_calls: Vec<bool>,
    pub writes: u64,
    pub flushes: u64,
    /// Writes not yet followed by a flush.
    pub unflushed: u64,
    /// Used index the driver could see at each flush.
    pub used_idx_at_flush: Vec<u16>,
    pub probe: Option<(&'static OwnedMemory, GuestAddress)>,
    pub discarded: Vec<(u64, u64)>,
    pub zeroed: Vec<(u64, u64, bool)>,
    /// The next flush fails.
    pub fail_flush: bool,
    /// Guest bytes written at each discard: the guest changing a request's
    /// buffers while the device works on it.
    pub on_discard: Option<(&'static OwnedMemory, GuestAddress, Vec<u8>)>,
    /// Depth of the modelled request queue (0: the disk has none).
    pub depth: usize,
    /// Queued requests not yet executed, in the order they came.
    pub started: Vec<Started>,
    /// Executed requests not yet reported: tag and result.
    pub finished: Vec<(u64, Result<(), String>)>,
    /// `submit` calls.
    pub submits: u64,
    /// `submit` executes what is queued (as io_uring does with reads the
    /// page cache holds).
    pub finish_on_submit: bool,
}

/// A request in the modelled queue.
pub struct Started {
    pub tag: u64,
    /// `None` for a flush; otherwise whether it writes.
    pub write: Option<bool>,
    pub offset: u64,
    /// Segments as (address, length): they point into the rig's leaked
    /// memory, which outlives the disk.
    pub segs: Vec<(usize, usize)>,
}

/// A handle on a shared [`DiskState`]; the device owns one, the test
/// another.
#[derive(Clone)]
pub struct MemDisk(pub Arc<Mutex<DiskState>>);

impl MemDisk {
    pub fn new(sectors: usize) -> MemDisk {
        let data = (0..sectors * 512).map(|i| (i * 7 % 251) as u8).collect();
        MemDisk(Arc::new(Mutex::new(DiskState {
            data,
            block_size: 512,
            honours_writethrough: true,
            cache: true,
            ..DiskState::default()
        })))
    }

    pub fn state(&self) -> MutexGuard<'_, DiskState> {
        self.0.lock().unwrap()
    }

    pub fn with(self, f: impl FnOnce(&mut DiskState)) -> MemDisk {
        f(&mut self.state());
        self
    }
}

impl MemDisk {
    /// Executes the queued requests at `order` (indices into `started`,
    /// each once) and holds their results for `complete`.
    pub fn run(&self, order: &[usize]) {
        let mut s = self.state();
        let mut picked: Vec<Option<Started>> = s.started.drain(..).map(Some).collect();
        for &i in order {
            let st = picked[i].take().expect("each started request runs once");
            let r = s.execute(&st);
            s.finished.push((st.tag, r));
        }
        s.started = picked.into_iter().flatten().collect();
    }

    /// Executes every queued request, last first.
    pub fn run_reversed(&self) {
        let n = self.state().started.len();
        let order: Vec<usize> = (0..n).rev().collect();
        self.run(&order);
    }
}

impl DiskState {
    fn execute(&mut self, st: &Started) -> Result<(), String> {
        let segs: Vec<IoSegment> = st
            .segs
            .iter()
            .map(|&(p, len)| IoSegment {
                ptr: p as *mut u8,
                len,
            })
            .collect();
        let r = match st.write {
            None => self.do_flush(),
            // SAFETY: the segments point into the rig's leaked memory.
            Some(false) => unsafe { self.read_into(st.offset, &segs) },
            // SAFETY: as above.
            Some(true) => unsafe { self.write_from(st.offset, &segs) },
        };
        r.map_err(|e| e.to_string())
    }

    unsafe fn read_into(&self, offset: u64, segs: &[IoSegment]) -> Result<(), BlockError> {
        let len: usize = segs.iter().map(|s| s.len).sum();
        check_range(offset, len as u64, self.data.len() as u64)?;
        let mut at = offset as usize;
        for seg in segs {
            // SAFETY: the caller promises each segment is writable for its
            // length; the source is our own vector.
            unsafe { std::ptr::copy_nonoverlapping(self.data[at..].as_ptr(), seg.ptr, seg.len) };
            at += seg.len;
        }
        Ok(())
    }

    unsafe fn write_from(&mut self, offset: u64, segs: &[IoSegment]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let len: usize = segs.iter().map(|s| s.len).sum();
        check_range(offset, len as u64, self.data.len() as u64)?;
        let mut at = offset as usize;
        for seg in segs {
            // SAFETY: the caller promises each segment is readable for its
            // length; the destination is our own vector.
            unsafe {
                std::ptr::copy_nonoverlapping(seg.ptr, self.data[at..].as_mut_ptr(), seg.len)
            };
            at += seg.len;
        }
        self.after_write()
    }

    fn do_flush(&mut self) -> Result<(), BlockError> {
        if self.fail_flush {
            self.fail_flush = false;
            return Err(BlockError::Unsupported("injected flush failure"));
        }
        self.flushes += 1;
        self.unflushed = 0;
        if let Some((mem, addr)) = self.probe {
            let idx = mem.load_u16_acquire(addr).unwrap();
            self.used_idx_at_flush.push(idx);
        }
        Ok(())
    }

    fn after_write(&mut self) -> Result<(), BlockError> {
        self.writes += 1;
        self.unflushed += 1;
        if self.honours_writethrough && !self.cache {
            self.do_flush()?;
        }
        Ok(())
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.state().data.len() as u64
    }
    fn read_only(&self) -> bool {
        self.state().read_only
    }
    fn block_size(&self) -> u32 {
        self.state().block_size
    }
    fn supports_discard(&self) -> bool {
        self.state().discard
    }
    fn supports_write_zeroes(&self) -> bool {
        self.state().write_zeroes
    }
    fn write_cache(&self) -> bool {
        let s = self.state();
        if s.honours_writethrough {
            s.cache
        } else {
            true
        }
    }
    fn set_write_cache(&mut self, writeback: bool) {
        let mut s = self.state();
        s.cache = writeback;
        s.set_cache_calls.push(writeback);
    }
    unsafe fn read_vectored(&mut self, offset: u64, segs: &[IoSegment]) -> Result<(), BlockError> {
        // SAFETY: read_vectored's contract, passed on.
        unsafe { self.state().read_into(offset, segs) }
    }
    unsafe fn write_vectored(&mut self, offset: u64, segs: &[IoSegment]) -> Result<(), BlockError> {
        // SAFETY: write_vectored's contract, passed on.
        unsafe { self.state().write_from(offset, segs) }
    }
    fn queue_depth(&self) -> usize {
        self.state().depth
    }
    unsafe fn start(&mut self, tag: u64, op: QueuedOp<'_>) -> Result<bool, BlockError> {
        let mut s = self.state();
        if s.started.len() + s.finished.len() >= s.depth {
            return Ok(false);
        }
        let (write, offset, segments): (_, _, &[IoSegment]) = match op {
            QueuedOp::Read { offset, segments } => (Some(false), offset, segments),
            QueuedOp::Write { offset, segments } => {
                if s.read_only {
                    return Err(BlockError::ReadOnly);
                }
                (Some(true), offset, segments)
            }
            QueuedOp::Flush => (None, 0, &[]),
        };
        let len: usize = segments.iter().map(|s| s.len).sum();
        check_range(offset, len as u64, s.data.len() as u64)?;
        s.started.push(Started {
            tag,
            write,
            offset,
            segs: segments.iter().map(|g| (g.ptr as usize, g.len)).collect(),
        });
        Ok(true)
    }
    fn submit(&mut self) -> Result<(), BlockError> {
        let finish = {
            let mut s = self.state();
            s.submits += 1;
            s.finish_on_submit
        };
        if finish {
            let n = self.state().started.len();
            let order: Vec<usize> = (0..n).collect();
            self.run(&order);
        }
        Ok(())
    }
    fn complete(&mut self, wait: bool, done: &mut dyn FnMut(u64, Result<(), BlockError>)) {
        if wait {
            let n = self.state().started.len();
            let order: Vec<usize> = (0..n).collect();
            self.run(&order);
        }
        let finished = std::mem::take(&mut self.state().finished);
        for (tag, r) in finished {
            done(tag, r.map_err(BlockError::Image));
        }
    }
    fn in_flight(&self) -> usize {
        let s = self.state();
        s.started.len() + s.finished.len()
    }
    fn flush(&mut self) -> Result<(), BlockError> {
        self.state().do_flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> Result<(), BlockError> {
        let mut s = self.state();
        check_range(offset, len, s.data.len() as u64)?;
        s.discarded.push((offset, len));
        if let Some((mem, at, bytes)) = &s.on_discard {
            mem.write(*at, bytes).unwrap();
        }
        // What a discarded range reads is unspecified; this disk zeroes it.
        s.data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> Result<(), BlockError> {
        let mut s = self.state();
        check_range(offset, len, s.data.len() as u64)?;
        s.zeroed.push((offset, len, unmap));
        s.data[offset as usize..(offset + len) as usize].fill(0);
        s.after_write()
    }
}

pub const MEM_SIZE: usize = 0x10_0000;

/// Our driver queues and the device over one memory.
pub struct Rig {
    pub mem: &'static OwnedMemory,
    pub drv: Vec<DriverQueue<64>>,
    pub dev: Blk<MemDisk, &'static queue_rig::Tracked>,
    pub disk: MemDisk,
    /// What the device loads, checked for double fetches when the rig is
    /// dropped.
    pub fetch: &'static queue_rig::Tracked,
    /// Next free byte of the scratch area for headers, data and status.
    pub next: u64,
}

/// A rig with `features` negotiated (`None`: all offered) and `cfg`.
pub fn rig_with(disk: MemDisk, cfg: BlkConfig, features: Option<u64>) -> Rig {
    let mem: &'static OwnedMemory =
        Box::leak(Box::new(OwnedMemory::new(GuestAddress(0), MEM_SIZE)));
    let fetch = queue_rig::tracked(mem, usize::from(cfg.num_queues));
    let mut dev = Blk::new(disk.clone(), fetch, cfg).unwrap();
    let features = features.unwrap_or(dev.device_features());
    let drv = queue_rig::activate(&mut dev, mem, features);
    Rig {
        mem,
        drv,
        dev,
        disk,
        fetch,
        next: 0x2_0000,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.fetch.assert_none();
        }
    }
}

pub fn rig(disk: MemDisk) -> Rig {
    rig_with(disk, BlkConfig::default(), None)
}

impl Rig {
    /// Reserves `len` bytes of scratch memory (16-byte aligned).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let a = self.next;
        self.next = (self.next + len + 15) & !15;
        assert!(self.next < MEM_SIZE as u64, "rig scratch memory exhausted");
        a
    }

    /// A 16-byte header in fresh memory.
    pub fn header(&mut self, ty: u32, sector: u64) -> u64 {
        let a = self.alloc(16);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&ty.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(GuestAddress(a), &h).unwrap();
        a
    }

    /// Fills fresh memory with `bytes`.
    pub fn data(&mut self, bytes: &[u8]) -> u64 {
        let a = self.alloc(bytes.len() as u64);
        self.mem.write(GuestAddress(a), bytes).unwrap();
        a
    }

    /// Writes `bytes` at `addr`.
    pub fn mem_write(&self, addr: u64, bytes: &[u8]) {
        self.mem.write(GuestAddress(addr), bytes).unwrap();
    }

    /// A fresh status byte, preset to 0xff so "not written" shows.
    pub fn status_buf(&mut self) -> u64 {
        let a = self.alloc(1);
        self.mem.write(GuestAddress(a), &[0xff]).unwrap();
        a
    }

    /// Adds a chain on queue `q` and publishes it.
    pub fn add_on(&mut self, q: usize, bufs: &[Buf]) -> Token {
        queue_rig::add(&mut self.drv[q], self.mem, bufs)
    }

    pub fn add(&mut self, bufs: &[Buf]) -> Token {
        self.add_on(0, bufs)
    }

    /// A well-formed request with data buffers `data` (each readable for
    /// OUT, writable otherwise); returns its token and status address.
    pub fn request(
        &mut self,
        ty: u32,
        sector: u64,
        data: &[(u64, u32)],
        out: bool,
    ) -> (Token, u64) {
        let h = self.header(ty, sector);
        let s = self.status_buf();
        let mut bufs = vec![Buf::R(h, 16)];
        for &(a, l) in data {
            bufs.push(if out { Buf::R(a, l) } else { Buf::W(a, l) });
        }
        bufs.push(Buf::W(s, 1));
        (self.add(&bufs), s)
    }

    pub fn notify(&mut self, q: u16) -> Served {
        self.dev.queue_notify(q).unwrap()
    }

    pub fn completions_on(&mut self, q: usize) -> Vec<(Token, u32)> {
        let mut out = vec![];
        while let Some(u) = self.drv[q].pop_used(self.mem).unwrap() {
            out.push((u.token, u.len));
        }
        out
    }

    pub fn completions(&mut self) -> Vec<(Token, u32)> {
        self.completions_on(0)
    }

    pub fn status(&self, addr: u64) -> u8 {
        let mut b = [0u8];
        self.mem.read(GuestAddress(addr), &mut b).unwrap();
        b[0]
    }

    pub fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read(GuestAddress(addr), &mut v).unwrap();
        v
    }

    /// Writes `bytes` at `sector` through the device and checks OK.
    pub fn write_ok(&mut self, sector: u64, bytes: &[u8]) {
        let d = self.data(bytes);
        let (t, s) = self.request(0x1, sector, &[(d, bytes.len() as u32)], true);
        self.notify(0);
        assert_eq!(self.completions(), vec![(t, 1)]);
        assert_eq!(self.status(s), 0);
    }

    /// Reads `len` bytes at `sector` through the device, checking OK.
    pub fn read_ok(&mut self, sector: u64, len: u32) -> Vec<u8> {
        let d = self.alloc(u64::from(len));
        let (t, s) = self.request(0x0, sector, &[(d, len)], false);
        self.notify(0);
        assert_eq!(self.completions(), vec![(t, len + 1)]);
        assert_eq!(self.status(s), 0);
        self.bytes(d, len as usize)
    }
}
