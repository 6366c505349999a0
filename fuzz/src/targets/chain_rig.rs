//! A structure-aware driver for the device request targets: the fuzzer
//! describes chains (buffers, directions, contents) instead of raw ring
//! bytes, so that inputs reach a device's request parser rather than stop
//! at ring validation. virtio-core's driver-side queue lays the chains out
//! and checks every used element the device writes (§2.7.8, §2.7.14): on a
//! driver that follows the rules, a device that writes a bad used element
//! is a bug and the target panics.
//!
//! Hostile memory pokes are allowed too; after one, the driver can no
//! longer vouch for the rings, so used-element checks stop being fatal.
//!
//! The device sees the memory through a double-fetch tracker (issue 16):
//! on rings the driver kept well-formed, a guest byte the device loads
//! twice between two publications of `used.idx` is a bug and the target
//! panics, like a bad used element. After a poke, or once the buffer
//! allocator wrapped (two chains in flight may then share bytes), double
//! fetches are the driver's doing and only counted.

use arbitrary::Arbitrary;
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::testing::OwnedMemory;
use virtio_core::testing::fetch::FetchTracker;
use virtio_devices::device::{QueueConfig, VirtioDevice};

/// Size of the memory image.
pub const MEM: usize = 0x8_0000;
/// Each queue's size.
pub const QSIZE: u16 = 16;
/// Where buffers live: above the rings of up to eight queues.
const BUF_BASE: u64 = 0x2_0000;

/// One buffer of a chain, as the fuzzer describes it.
#[derive(Arbitrary, Debug, Clone)]
pub struct BufSpec {
    /// Device-writable (else device-readable).
    pub writable: bool,
    /// Its length (0 is clamped to 1: the driver side refuses empty
    /// buffers, §2.7.4).
    pub len: u16,
    /// Its bytes for a readable buffer (repeated or cut to `len`).
    pub bytes: Vec<u8>,
}

/// One step of a run.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// Add a chain to queue `queue` (modulo the queue count) and publish it.
    Chain {
        /// The queue.
        queue: u8,
        /// The buffers; readable ones go first as a driver must (§2.7.4.2).
        bufs: Vec<BufSpec>,
        /// Swap the roles: what the request means to be device-readable is
        /// made device-writable and the other way round (a request in the
        /// wrong direction).
        swapped: bool,
    },
    /// Notify a queue.
    Notify(u8),
    /// The backend became ready.
    BackendReady,
    /// Take every used element of every queue.
    Drain,
    /// Write bytes anywhere in memory (rings included): a hostile driver.
    Poke {
        /// Where, modulo the memory size.
        at: u32,
        /// What (at most 64 bytes).
        bytes: Vec<u8>,
    },
    /// Reset the device and activate it again with fresh rings.
    Reset,
    /// Write the device's configuration space.
    WriteConfig {
        /// Offset.
        offset: u8,
        /// Bytes.
        bytes: Vec<u8>,
    },
}

/// The memory as the device sees it: the rig's memory behind a
/// double-fetch tracker.
pub type Tracked<'m> = FetchTracker<&'m OwnedMemory>;

/// The queues of one device and the memory they live in.
pub struct Rig<'m> {
    mem: &'m OwnedMemory,
    fetch: &'m Tracked<'m>,
    /// The buffer allocator wrapped: chains in flight may share bytes.
    reused: bool,
    queues: Vec<DriverQueue<{ QSIZE as usize }>>,
    features: u64,
    poked: bool,
    active: bool,
    next_buf: u64,
}

fn layout(i: u64) -> QueueLayout {
    let base = 0x1000 + i * 0x1000;
    QueueLayout::new(
        QueueSize::new(u32::from(QSIZE)).expect("power of two"),
        GuestAddress(base),
        GuestAddress(base + 0x200),
        GuestAddress(base + 0x400),
    )
    .expect("fixed layout is valid")
}

/// Fills `dst` with `pattern` repeated (left zero when it is empty), by
/// doubling copies: a byte loop here costs more than the device under
/// test once the fuzzer instruments every comparison.
fn repeat_into(dst: &mut [u8], pattern: &[u8]) {
    let first = pattern.len().min(dst.len());
    if first == 0 {
        return;
    }
    dst[..first].copy_from_slice(&pattern[..first]);
    // Double what is filled: a whole number of pattern copies each time.
    let mut filled = first;
    while filled < dst.len() {
        let more = filled.min(dst.len() - filled);
        dst.copy_within(..more, filled);
        filled += more;
    }
}

/// A zeroed memory of [`MEM`] bytes for a rig and its device.
pub fn memory() -> super::scratch::Scratch {
    super::scratch::memory(MEM)
}

impl<'m> Rig<'m> {
    /// One driver queue per queue of `dev` in the memory `fetch` wraps
    /// (from [`memory`]; `dev` must use `fetch`), then activation with
    /// `features` (masked by what the device offers).
    pub fn new<D: VirtioDevice>(fetch: &'m Tracked<'m>, dev: &mut D, features: u64) -> Rig<'m> {
        let mut rig = Rig {
            mem: fetch.inner(),
            fetch,
            reused: false,
            queues: Vec::new(),
            features: dev.device_features() & features,
            poked: false,
            active: false,
            next_buf: BUF_BASE,
        };
        rig.activate(dev);
        rig
    }

    /// Whether the device took the activation.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Whether a hostile poke has happened (used-element checks are then
    /// no longer the device's fault).
    pub fn poked(&self) -> bool {
        self.poked
    }

    fn activate<D: VirtioDevice>(&mut self, dev: &mut D) {
        let event_idx =
            self.features & virtio_core::features::TransportFeatures::RING_EVENT_IDX.bits() != 0;
        let n = dev.queue_max_sizes().len().min(8);
        self.queues.clear();
        let mut qc = Vec::new();
        for i in 0..n as u64 {
            let mut q = DriverQueue::new(layout(i), event_idx, None).expect("size fits");
            q.init(self.mem).expect("rings inside memory");
            self.queues.push(q);
            qc.push(QueueConfig {
                layout: Some(layout(i)),
            });
        }
        self.active = dev.activate(self.features, qc).is_ok();
        self.poked = false;
        self.reused = false;
        // Fresh rings: the device reads them anew.
        self.fetch.new_window();
        for i in 0..n as u64 {
            self.fetch.watch_queue(&layout(i));
        }
    }

    /// Address for a new buffer of `len` bytes (a bump allocator that wraps
    /// within the buffer area; chains completed long ago get overwritten,
    /// as a real driver reuses its pages).
    fn alloc(&mut self, len: u64) -> GuestAddress {
        if self.next_buf + len > MEM as u64 {
            self.next_buf = BUF_BASE;
            self.reused = true;
        }
        let at = self.next_buf;
        self.next_buf += len.next_multiple_of(8);
        GuestAddress(at)
    }

    /// Adds a chain to queue `queue` and publishes it; returns whether it
    /// was added (the ring may be full).
    pub fn chain(&mut self, queue: u8, bufs: &[BufSpec], swapped: bool) -> bool {
        if self.queues.is_empty() || bufs.is_empty() {
            return false;
        }
        let qi = usize::from(queue) % self.queues.len();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let room = (MEM as u64 - BUF_BASE) / 4;
        for b in bufs.iter().take(usize::from(QSIZE)) {
            let len = u64::from(b.len.max(1)).min(room);
            let at = self.alloc(len);
            if b.writable {
                writable.push((at, len as u32));
            } else {
                let mut data = vec![0u8; len as usize];
                repeat_into(&mut data, &b.bytes);
                self.mem.write(at, &data).expect("inside memory");
                readable.push((at, len as u32));
            }
        }
        let q = &mut self.queues[qi];
        let added = if swapped {
            q.add(self.mem, &writable, &readable)
        } else {
            q.add(self.mem, &readable, &writable)
        };
        added.is_ok() && q.publish(self.mem).is_ok()
    }

    /// Takes every used element; a bad one from a device that was given
    /// only well-formed rings panics (a device bug).
    pub fn drain(&mut self) -> u32 {
        let mut n = 0;
        for q in &mut self.queues {
            loop {
                match q.pop_used(self.mem) {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => break,
                    Err(e) => {
                        assert!(
                            self.poked || !e.is_device_fault(),
                            "device wrote a bad used element: {e}"
                        );
                        break;
                    }
                }
            }
        }
        let twice = self.fetch.take_double_fetches();
        assert!(
            self.poked || self.reused || twice.is_empty(),
            "device loaded guest bytes twice on a well-formed ring: {twice:?}"
        );
        n
    }

    /// Runs `ops` against `dev` (at most 512 of them).
    pub fn run<D: VirtioDevice>(&mut self, dev: &mut D, ops: &[Op]) {
        for op in ops.iter().take(512) {
            match op {
                Op::Chain {
                    queue,
                    bufs,
                    swapped,
                } => {
                    self.chain(*queue, bufs, *swapped);
                }
                Op::Notify(q) => {
                    if self.active
                        && let Err(e) = dev.queue_notify(u16::from(*q) % 8)
                    {
                        // The transport would set DEVICE_NEEDS_RESET.
                        let _ = e.to_string();
                    }
                }
                Op::BackendReady => {
                    if self.active {
                        let _ = dev.backend_ready();
                    }
                }
                Op::Drain => {
                    self.drain();
                }
                Op::Poke { at, bytes } => {
                    let at = *at as usize % MEM;
                    let n = bytes.len().min(MEM - at).min(64);
                    self.mem
                        .write(GuestAddress(at as u64), &bytes[..n])
                        .expect("inside memory");
                    self.poked = true;
                }
                Op::Reset => {
                    dev.reset();
                    self.activate(dev);
                }
                Op::WriteConfig { offset, bytes } => {
                    let n = bytes.len().min(8);
                    dev.write_config(u64::from(*offset), &bytes[..n]);
                    let mut back = [0u8; 8];
                    dev.read_config(u64::from(*offset), &mut back[..n]);
                }
            }
        }
        self.drain();
    }
}

#[cfg(test)]
mod tests {
    use super::repeat_into;

    #[test]
    fn repeat_into_repeats_the_pattern_and_leaves_empty_patterns_alone() {
        for len in [0, 1, 2, 5, 7, 64, 1000] {
            for pattern in [&b""[..], b"a", b"xyz", b"0123456789"] {
                let mut dst = vec![0u8; len];
                repeat_into(&mut dst, pattern);
                let want: Vec<u8> = if pattern.is_empty() {
                    vec![0; len]
                } else {
                    pattern.iter().copied().cycle().take(len).collect()
                };
                assert_eq!(dst, want, "len {len} pattern {pattern:?}");
            }
        }
    }
}
