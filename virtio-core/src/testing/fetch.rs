//! Double-fetch detection: guest memory that remembers which guest bytes
//! the device loaded, and reports a byte loaded twice while the driver
//! could not have handed it over again.
//!
//! A device that reads the same guest byte twice for one request can see
//! two different values (the guest is free to write its buffers at any
//! time); if it checks the first and uses the second, the check proves
//! nothing (time of check, time of use). The spec's rules make the window
//! easy to state: a buffer belongs to the device from the moment its head
//! is made available until the device publishes it as used (§2.7.13,
//! §2.7.14). So between two publications of `used.idx` by the device, each
//! guest byte should be loaded at most once.
//!
//! [`FetchTracker`] wraps any [`GuestMemory`]. Copies and atomic loads
//! count; address translations ([`GuestMemory::map`]) do not, and neither
//! do the fields the device legitimately polls: `avail.flags`,
//! `avail.idx` and `used_event` of each queue registered with
//! [`FetchTracker::watch_queue`]. A store to a watched queue's `used.idx`
//! starts a new window. With [`FetchTracker::set_racing`] the tracker plays
//! a racing guest instead of only counting: before a second load it
//! changes the bytes, as a guest vCPU writing meanwhile would, so a fuzzer
//! reaches the code that would use the changed value.
//!
//! The idea follows QEMU's `fuzz_dma_read_cb` (its generic fuzzer flags
//! DMA reads of the same address within one I/O and rewrites the bytes);
//! this is our own, per byte and per window.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::ops::Range;

use crate::memory::{Access, GuestAddress, GuestMemory, Mapping, MemoryError};
use crate::split::layout::QueueLayout;

/// One guest range loaded a second time inside a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DoubleFetch {
    /// The guest address of the second load.
    pub addr: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Which window it happened in (0 is the first; each `used.idx`
    /// publication on a watched queue, or [`FetchTracker::new_window`],
    /// starts the next).
    pub window: u64,
}

#[derive(Default)]
struct State {
    /// Guest ranges loaded in this window: start → end, disjoint and not
    /// touching (merged as they grow).
    loaded: BTreeMap<u64, u64>,
    /// Ranges that never count (polled ring fields).
    ignored: Vec<Range<u64>>,
    /// `used.idx` of each watched queue: a store there ends a window.
    publish: Vec<u64>,
    window: u64,
    found: Vec<DoubleFetch>,
    racing: bool,
    /// Whether loads are recorded at all.
    off: bool,
    /// Queues are not known ([`FetchTracker::unwatched`]): atomic loads
    /// (ring fields) do not count, every release store opens a window.
    unwatched: bool,
    /// Counter that makes each racing rewrite differ from the last.
    flips: u8,
}

impl State {
    /// Whether some byte of `start..end` is in the loaded set.
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.loaded
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start)
    }

    /// Adds `start..end` to the loaded set, merging neighbours.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        while let Some((&s, &e)) = self.loaded.range(..=end).next_back() {
            if e < start {
                break;
            }
            self.loaded.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.loaded.insert(start, end);
    }

    /// Records a load of `addr..addr + len`; true if some byte of it was
    /// already loaded in this window (ignored ranges left out).
    fn record(&mut self, addr: u64, len: u64) -> bool {
        let end = addr.saturating_add(len);
        // The load minus the ignored ranges: a few pieces at most.
        let mut pieces = alloc::vec![(addr, end)];
        for r in &self.ignored {
            pieces = pieces
                .into_iter()
                .flat_map(|(a, b)| {
                    let left = (a, b.min(r.start));
                    let right = (a.max(r.end), b);
                    [left, right].into_iter().filter(|(x, y)| x < y)
                })
                .collect();
        }
        let mut again = false;
        for (a, b) in pieces {
            again |= self.overlaps(a, b);
            self.insert(a, b);
        }
        if again {
            self.found.push(DoubleFetch {
                addr,
                len,
                window: self.window,
            });
        }
        again
    }
}

/// Guest memory that reports double fetches (see the module doc).
pub struct FetchTracker<M> {
    inner: M,
    state: spin::Mutex<State>,
}

impl<M: GuestMemory> FetchTracker<M> {
    /// Wraps `inner`; nothing is watched or loaded yet.
    pub fn new(inner: M) -> Self {
        FetchTracker {
            inner,
            state: spin::Mutex::new(State::default()),
        }
    }

    /// Wraps `inner` for a device whose rings the caller does not know (a
    /// driver in another crate lays them out): the device's atomic loads
    /// (they are ring fields, §2.7.13: indices, flags, event indices) do
    /// not count, and every release store it makes (the used index, or a
    /// notification flag or event index) starts a new window. Coarser than
    /// [`FetchTracker::watch_queue`], never wrong about a well-behaved
    /// driver.
    pub fn unwatched(inner: M) -> Self {
        let t = Self::new(inner);
        t.state.lock().unwatched = true;
        t
    }

    /// The wrapped memory (accesses through it are not tracked: use it to
    /// play the driver's side).
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// Registers a queue: its polled fields stop counting, and a store to
    /// its `used.idx` starts a new window (§2.7.14: only then may the
    /// driver reuse what was used).
    pub fn watch_queue(&self, layout: &QueueLayout) {
        let mut s = self.state.lock();
        for (at, len) in [
            (layout.avail_flags(), 2),
            (layout.avail_idx(), 2),
            (layout.used_event(), 2),
        ] {
            s.ignored.push(at.0..at.0 + len);
        }
        s.publish.push(layout.used_idx().0);
    }

    /// Stops counting loads of `range` (e.g. a field the device is meant
    /// to poll).
    pub fn ignore(&self, range: Range<u64>) {
        self.state.lock().ignored.push(range);
    }

    /// Starts a new window by hand: everything loaded so far may be loaded
    /// again (for rings the tracker does not watch).
    pub fn new_window(&self) {
        let mut s = self.state.lock();
        s.loaded.clear();
        s.window += 1;
    }

    /// In racing mode a second load first rewrites the bytes it is about
    /// to read, as a guest writing concurrently would.
    pub fn set_racing(&self, racing: bool) {
        self.state.lock().racing = racing;
    }

    /// Turns recording off (or back on): the wrapper then only forwards,
    /// and allocates nothing (for tests that count allocations).
    pub fn set_tracking(&self, on: bool) {
        let mut s = self.state.lock();
        s.off = !on;
        s.loaded.clear();
    }

    /// The double fetches seen so far, oldest first.
    pub fn double_fetches(&self) -> Vec<DoubleFetch> {
        self.state.lock().found.clone()
    }

    /// The double fetches seen so far, which are then forgotten (for a test
    /// whose chain is meant to be read twice, e.g. a descriptor loop that
    /// is only found by walking it).
    pub fn take_double_fetches(&self) -> Vec<DoubleFetch> {
        core::mem::take(&mut self.state.lock().found)
    }

    /// Panics if any double fetch was seen: for fuzz targets and tests,
    /// where one is a bug.
    ///
    /// # Panics
    ///
    /// With the first double fetch in the message.
    pub fn assert_none(&self) {
        let s = self.state.lock();
        if let Some(first) = s.found.first() {
            panic!(
                "double fetch: guest bytes {:#x}..{:#x} loaded twice in window {} ({} in all)",
                first.addr,
                first.addr + first.len,
                first.window,
                s.found.len()
            );
        }
    }

    /// Records a load; in racing mode changes the bytes first when they
    /// were loaded before.
    fn load(&self, addr: GuestAddress, len: usize) {
        let mut s = self.state.lock();
        if s.off {
            return;
        }
        if s.record(addr.0, len as u64) && s.racing {
            s.flips = s.flips.wrapping_add(0x5b) | 1;
            let flip = s.flips;
            drop(s);
            let mut cur = alloc::vec![0u8; len];
            if self.inner.read(addr, &mut cur).is_ok() {
                for b in &mut cur {
                    *b ^= flip;
                }
                let _ = self.inner.write(addr, &cur);
            }
        }
    }
}

impl<M: GuestMemory> GuestMemory for FetchTracker<M> {
    fn map(&self, addr: GuestAddress, len: u64, access: Access) -> Result<Mapping, MemoryError> {
        self.inner.map(addr, len, access)
    }

    fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.load(addr, buf.len());
        self.inner.read(addr, buf)
    }

    fn write(&self, addr: GuestAddress, buf: &[u8]) -> Result<(), MemoryError> {
        self.inner.write(addr, buf)
    }

    fn load_u16_acquire(&self, addr: GuestAddress) -> Result<u16, MemoryError> {
        if !self.state.lock().unwatched {
            self.load(addr, 2);
        }
        self.inner.load_u16_acquire(addr)
    }

    fn store_u16_release(&self, addr: GuestAddress, val: u16) -> Result<(), MemoryError> {
        let r = self.inner.store_u16_release(addr, val);
        let mut s = self.state.lock();
        if s.unwatched || s.publish.contains(&addr.0) {
            s.loaded.clear();
            s.window += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::layout::QueueSize;
    use crate::testing::OwnedMemory;

    fn layout() -> QueueLayout {
        QueueLayout::new(
            QueueSize::new(8).unwrap(),
            GuestAddress(0),
            GuestAddress(0x100),
            GuestAddress(0x200),
        )
        .unwrap()
    }

    #[test]
    fn a_byte_loaded_twice_in_a_window_is_reported_once_per_load() {
        let t = FetchTracker::new(OwnedMemory::new(GuestAddress(0), 0x1000));
        t.watch_queue(&layout());
        let mut b = [0u8; 4];
        t.read(GuestAddress(0x800), &mut b).unwrap();
        t.read(GuestAddress(0x804), &mut b).unwrap();
        assert!(t.double_fetches().is_empty(), "adjacent, not the same");
        t.read(GuestAddress(0x802), &mut b).unwrap();
        assert_eq!(
            t.double_fetches(),
            [DoubleFetch {
                addr: 0x802,
                len: 4,
                window: 0
            }]
        );
    }

    #[test]
    fn polled_ring_fields_do_not_count_and_used_idx_opens_a_window_2_7_14() {
        let l = layout();
        let t = FetchTracker::new(OwnedMemory::new(GuestAddress(0), 0x1000));
        t.watch_queue(&l);
        for _ in 0..3 {
            t.load_u16_acquire(l.avail_idx()).unwrap();
            t.read_u16(l.avail_flags()).unwrap();
            t.read_u16(l.used_event()).unwrap();
        }
        t.read_u16(l.avail_slot(0)).unwrap();
        t.store_u16_release(l.used_idx(), 1).unwrap();
        t.read_u16(l.avail_slot(0)).unwrap();
        t.assert_none();
        t.read_u16(l.avail_slot(0)).unwrap();
        assert_eq!(t.double_fetches().len(), 1);
        assert_eq!(t.double_fetches()[0].window, 1);
    }

    #[test]
    fn racing_mode_changes_the_bytes_before_the_second_load() {
        let t = FetchTracker::new(OwnedMemory::new(GuestAddress(0), 0x1000));
        t.inner().write(GuestAddress(0x10), &[1, 2, 3, 4]).unwrap();
        t.set_racing(true);
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        t.read(GuestAddress(0x10), &mut a).unwrap();
        t.read(GuestAddress(0x10), &mut b).unwrap();
        assert_eq!(a, [1, 2, 3, 4]);
        assert_ne!(a, b, "the guest 'wrote' between the two loads");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: if cfg!(miri) { 4 } else { 256 },
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// The merged-range bookkeeping answers as a set of single bytes
        /// would.
        #[test]
        fn ranges_agree_with_a_byte_set(
            loads in proptest::collection::vec((0u64..200, 1u64..24), 1..40),
            ignored in proptest::collection::vec((0u64..200, 1u64..8), 0..4),
        ) {
            let mut s = State::default();
            for &(a, n) in &ignored {
                s.ignored.push(a..a + n);
            }
            let mut bytes = alloc::collections::BTreeSet::new();
            for &(a, n) in &loads {
                let mut want = false;
                for b in a..a + n {
                    if !s.ignored.iter().any(|r| r.contains(&b)) {
                        want |= !bytes.insert(b);
                    }
                }
                proptest::prop_assert_eq!(s.record(a, n), want);
            }
        }
    }

    #[test]
    #[should_panic(expected = "double fetch")]
    fn assert_none_panics_on_a_double_fetch() {
        let t = FetchTracker::new(OwnedMemory::new(GuestAddress(0), 0x1000));
        let mut b = [0u8; 1];
        t.read(GuestAddress(0), &mut b).unwrap();
        t.read(GuestAddress(0), &mut b).unwrap();
        t.assert_none();
    }
}
