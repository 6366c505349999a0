//! Hostile devices (`misbehave=<mode>`): a device that breaks one rule of
//! the spec on purpose, so that a guest driver can be shown to survive it
//! (error or bounded timeout, never a panic, a hang or data taken from a
//! lying element).
//!
//! [`Misbehave`] names the rules. The used-ring lies (§2.7.8, §2.7.14) are
//! told here (feature `misbehave`) by `Misbehaving`, a [`VirtioDevice`](crate::VirtioDevice)
//! around the real one: after the real device has published used
//! elements, it rewrites the first new one in guest memory (an id out of
//! range or not in flight, a length beyond the chain's device-writable
//! bytes), publishes it a second time, or moves the used index a whole ring
//! too far. It lies once per device: a driver that noticed has marked the
//! queue broken, and one that did not has already accepted bad data. The
//! register lies (§2.5.1 `ConfigGeneration`, §2.4 reset, §4.2.2 interrupt
//! storm) belong to a transport: our monitor's slot tells them (its own
//! `misbehave` feature). Nothing here is used unless a caller asks for it.

use core::fmt;

#[cfg(feature = "misbehave")]
pub use lies::*;

/// The rule a hostile device breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Misbehave {
    /// A used element whose id is not below the queue size (§2.7.8).
    UsedIdOutOfRange,
    /// A used element whose id is a descriptor the driver has not made
    /// available (§2.7.8).
    UsedIdNotInFlight,
    /// A chain returned twice (§2.7.8).
    UsedTwice,
    /// A used length larger than the chain's buffers (§2.7.8.2).
    UsedLenTooLarge,
    /// The used index moved a whole ring past what was published
    /// (§2.7.8, §2.7.14).
    UsedIdxJump,
    /// `ConfigGeneration` differs on every read (§2.5.1, §4.2.2), so no
    /// configuration read is ever stable.
    ConfigGenerationChurn,
    /// A write of 0 to `Status` is ignored: the device never resets (§2.4,
    /// §4.2.2).
    ResetNeverClears,
    /// The interrupt is raised with `InterruptStatus` bit 0 set every
    /// `STORM_PERIOD` (the monitor's `misbehave` module) after DRIVER_OK whether or not a buffer was used
    /// (§4.2.2, §2.7.14), at most `STORM_MAX` times.
    InterruptStorm,
}

impl Misbehave {
    /// Every mode, in the order of the issue.
    pub const ALL: [Misbehave; 8] = [
        Misbehave::UsedIdOutOfRange,
        Misbehave::UsedIdNotInFlight,
        Misbehave::UsedTwice,
        Misbehave::UsedLenTooLarge,
        Misbehave::UsedIdxJump,
        Misbehave::ConfigGenerationChurn,
        Misbehave::ResetNeverClears,
        Misbehave::InterruptStorm,
    ];

    /// The option value naming every mode, for error messages.
    pub const EXPECTED: &'static str = "used-id-out-of-range, used-id-not-in-flight, used-twice, \
         used-len-too-large, used-idx-jump, config-generation-churn, reset-never-clears or \
         interrupt-storm";

    /// Its name as `misbehave=` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Misbehave::UsedIdOutOfRange => "used-id-out-of-range",
            Misbehave::UsedIdNotInFlight => "used-id-not-in-flight",
            Misbehave::UsedTwice => "used-twice",
            Misbehave::UsedLenTooLarge => "used-len-too-large",
            Misbehave::UsedIdxJump => "used-idx-jump",
            Misbehave::ConfigGenerationChurn => "config-generation-churn",
            Misbehave::ResetNeverClears => "reset-never-clears",
            Misbehave::InterruptStorm => "interrupt-storm",
        }
    }

    /// The mode called `name`, if any.
    pub fn from_name(name: &str) -> Option<Misbehave> {
        Misbehave::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The spec section whose rule it breaks.
    pub fn rule(self) -> &'static str {
        match self {
            Misbehave::UsedIdOutOfRange | Misbehave::UsedIdNotInFlight | Misbehave::UsedTwice => {
                "§2.7.8"
            }
            Misbehave::UsedLenTooLarge => "§2.7.8.2",
            Misbehave::UsedIdxJump => "§2.7.14",
            Misbehave::ConfigGenerationChurn => "§2.5.1",
            Misbehave::ResetNeverClears => "§2.4",
            Misbehave::InterruptStorm => "§4.2.2",
        }
    }

    /// Whether `Misbehaving` (feature `misbehave`) tells it in the used ring (the others are
    /// told by the slot's registers).
    pub fn is_ring_lie(self) -> bool {
        matches!(
            self,
            Misbehave::UsedIdOutOfRange
                | Misbehave::UsedIdNotInFlight
                | Misbehave::UsedTwice
                | Misbehave::UsedLenTooLarge
                | Misbehave::UsedIdxJump
        )
    }
}

impl fmt::Display for Misbehave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The used-ring lies (feature `misbehave`).
#[cfg(feature = "misbehave")]
mod lies {
    use alloc::boxed::Box;
    use alloc::vec::Vec;
    use core::fmt;

    use virtio_core::features::DeviceType;
    use virtio_core::memory::{GuestAddress, GuestMemory, MemoryError, RegionMemory};
    use virtio_core::split::{DescFlags, Descriptor, QueueLayout, UsedElem};

    use super::Misbehave;
    use crate::device::{DeviceError, QueueConfig, Served, VirtioDevice};

    /// A device behind a trait object, as a caller that picks the type at
    /// run time holds it.
    pub type BoxedDevice = Box<dyn VirtioDevice + Send>;

    /// What one queue looked like when the device was last watched: where the
    /// available and used indices stood and which heads the driver has made
    /// available and not yet got back.
    #[derive(Clone, Debug)]
    pub struct RingWatch {
        avail_seen: u16,
        used_seen: u16,
        in_flight: Vec<bool>,
    }

    impl RingWatch {
        /// A queue just set up (both indices 0, nothing in flight).
        pub fn new(layout: &QueueLayout) -> RingWatch {
            RingWatch {
                avail_seen: 0,
                used_seen: 0,
                in_flight: alloc::vec![false; usize::from(layout.size().get())],
            }
        }
    }

    /// A lie told in a used ring.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Lie {
        /// The free-running used index of the element lied about.
        pub at: u16,
        /// The element as the device published it.
        pub real: (u32, u32),
        /// The element (id, len) the driver now finds; for
        /// [`Misbehave::UsedIdxJump`] the element is unchanged and the index
        /// jumped.
        pub told: (u32, u32),
    }

    /// Device-writable bytes of the indirect table of `len` bytes at
    /// `table` (§2.7.5.3), following `NEXT` from entry 0 within the table;
    /// `None` if it leaves the table or nests another.
    fn table_writable<M: GuestMemory + ?Sized>(
        mem: &M,
        table: GuestAddress,
        len: u32,
    ) -> Result<Option<u64>, MemoryError> {
        let n = u64::from(len) / Descriptor::SIZE;
        let (mut index, mut total) = (0u64, 0u64);
        for _ in 0..n {
            if index >= n {
                return Ok(None);
            }
            let Some(at) = table.checked_add(index * Descriptor::SIZE) else {
                return Ok(None);
            };
            let d: Descriptor = mem.read_obj(at)?;
            if d.flags().contains(DescFlags::INDIRECT) {
                return Ok(None);
            }
            if d.flags().contains(DescFlags::WRITE) {
                total += u64::from(d.len());
            }
            if !d.flags().contains(DescFlags::NEXT) {
                return Ok(Some(total));
            }
            index = u64::from(d.next());
        }
        Ok(None)
    }

    /// Device-writable bytes of the chain with head `head`, following `NEXT`
    /// at most `size` times and into an indirect table; `None` if it leaves
    /// the table.
    fn chain_writable<M: GuestMemory + ?Sized>(
        mem: &M,
        layout: &QueueLayout,
        head: u16,
    ) -> Result<Option<u64>, MemoryError> {
        let size = layout.size().get();
        let (mut index, mut total) = (head, 0u64);
        for _ in 0..size {
            if index >= size {
                return Ok(None);
            }
            let d: Descriptor = mem.read_obj(layout.desc(index))?;
            if d.flags().contains(DescFlags::INDIRECT) {
                // An indirect descriptor is the whole chain (§2.7.5.3.1).
                return table_writable(mem, d.addr(), d.len());
            }
            if d.flags().contains(DescFlags::WRITE) {
                total += u64::from(d.len());
            }
            if !d.flags().contains(DescFlags::NEXT) {
                return Ok(Some(total));
            }
            index = d.next();
        }
        Ok(None)
    }

    /// Looks at one queue after the real device served it and, if `mode` is a
    /// ring lie and a new used element is there to lie about, tells it.
    /// `watch` follows the rings between calls. Returns the lie told, if any.
    pub fn tamper<M: GuestMemory + ?Sized>(
        mode: Misbehave,
        mem: &M,
        layout: &QueueLayout,
        watch: &mut RingWatch,
    ) -> Result<Option<Lie>, MemoryError> {
        let size = layout.size().get();
        // Heads the driver made available since the last look (at most a ring
        // of them: a driver that claims more broke §2.7.6 itself).
        let avail = mem.load_u16_acquire(layout.avail_idx())?;
        let fresh = avail.wrapping_sub(watch.avail_seen).min(size);
        for i in 0..fresh {
            let at = watch.avail_seen.wrapping_add(i);
            let head: u16 = mem.read_obj(layout.avail_slot(at))?;
            if let Some(f) = watch.in_flight.get_mut(usize::from(head)) {
                *f = true;
            }
        }
        watch.avail_seen = avail;
        let used = mem.load_u16_acquire(layout.used_idx())?;
        let new = used.wrapping_sub(watch.used_seen).min(size);
        if new == 0 {
            return Ok(None);
        }
        let mut at = watch.used_seen;
        if mode == Misbehave::UsedLenTooLarge {
            // The lie is about a chain the device could write: a length for a
            // chain without device-writable bytes carries nothing the driver
            // could misread, and drivers take it as 0 (see `virtio-core`'s
            // `DriverQueue::pop_used`).
            let mut found = None;
            for i in 0..new {
                let e: UsedElem = mem.read_obj(layout.used_slot(at.wrapping_add(i)))?;
                let head = u16::try_from(e.id()).unwrap_or(u16::MAX);
                if chain_writable(mem, layout, head)?.is_some_and(|w| w > 0) {
                    found = Some(at.wrapping_add(i));
                    break;
                }
            }
            match found {
                Some(i) => at = i,
                None => {
                    advance(mem, layout, watch, used, new)?;
                    return Ok(None);
                }
            }
        }
        let first: UsedElem = mem.read_obj(layout.used_slot(at))?;
        let real = (first.id(), first.len());
        let lie = if mode.is_ring_lie() {
            let told = match mode {
                Misbehave::UsedIdOutOfRange => Some((u32::from(size) + 7, real.1)),
                Misbehave::UsedIdNotInFlight => (0..size)
                    .find(|&id| {
                        !watch
                            .in_flight
                            .get(usize::from(id))
                            .copied()
                            .unwrap_or(true)
                    })
                    .map(|id| (u32::from(id), real.1)),
                Misbehave::UsedLenTooLarge => {
                    let head = u16::try_from(real.0).unwrap_or(u16::MAX);
                    let len = match chain_writable(mem, layout, head)? {
                        Some(n) => u32::try_from(n + 1).unwrap_or(u32::MAX),
                        None => u32::MAX,
                    };
                    Some((real.0, len))
                }
                _ => Some(real),
            };
            match told {
                Some(told) => {
                    match mode {
                        Misbehave::UsedTwice => {
                            mem.write_obj(layout.used_slot(used), &first)?;
                            mem.store_u16_release(layout.used_idx(), used.wrapping_add(1))?;
                        }
                        Misbehave::UsedIdxJump => {
                            mem.store_u16_release(layout.used_idx(), used.wrapping_add(size))?;
                        }
                        _ => mem.write_obj(layout.used_slot(at), &UsedElem::new(told.0, told.1))?,
                    }
                    Some(Lie { at, real, told })
                }
                // Every descriptor is in flight: no id to lie with yet.
                None => None,
            }
        } else {
            None
        };
        advance(mem, layout, watch, used, new)?;
        Ok(lie)
    }

    /// Marks the `new` used elements before `used` as seen.
    fn advance<M: GuestMemory + ?Sized>(
        mem: &M,
        layout: &QueueLayout,
        watch: &mut RingWatch,
        used: u16,
        new: u16,
    ) -> Result<(), MemoryError> {
        for i in 0..new {
            let e: UsedElem = mem.read_obj(layout.used_slot(watch.used_seen.wrapping_add(i)))?;
            let id = usize::try_from(e.id()).unwrap_or(usize::MAX);
            if let Some(f) = watch.in_flight.get_mut(id) {
                *f = false;
            }
        }
        watch.used_seen = used;
        Ok(())
    }

    /// A device that tells one used-ring lie (see the module docs) and carries
    /// its mode for the slot, which tells the register lies. `M` is the guest
    /// memory its rings are in (the monitor's is guarded against a shrinking
    /// RAM file).
    pub struct Misbehaving<M = RegionMemory> {
        inner: BoxedDevice,
        mode: Misbehave,
        mem: M,
        queues: Vec<Option<(QueueLayout, RingWatch)>>,
        lie: Option<Lie>,
    }

    impl<M> fmt::Debug for Misbehaving<M> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("Misbehaving")
                .field("mode", &self.mode)
                .field("lie", &self.lie)
                .finish_non_exhaustive()
        }
    }

    impl<M: GuestMemory> Misbehaving<M> {
        /// `inner`, misbehaving as `mode`, with its rings in `mem`.
        pub fn new(inner: BoxedDevice, mode: Misbehave, mem: M) -> Misbehaving<M> {
            Misbehaving {
                inner,
                mode,
                mem,
                queues: Vec::new(),
                lie: None,
            }
        }

        /// The mode.
        pub fn mode(&self) -> Misbehave {
            self.mode
        }

        /// The used-ring lie told, if one was.
        pub fn lie(&self) -> Option<Lie> {
            self.lie
        }

        /// The real device.
        pub fn inner_mut(&mut self) -> &mut BoxedDevice {
            &mut self.inner
        }

        /// After the real device served: lies once, in the first queue with a
        /// new used element, and then asks for an interrupt so the driver
        /// looks.
        fn after(&mut self, mut served: Served) -> Served {
            if self.lie.is_some() || !self.mode.is_ring_lie() {
                return served;
            }
            for (layout, watch) in self.queues.iter_mut().flatten() {
                // A ring the device cannot read is the device's own error; the
                // lie waits for a queue it can.
                if let Ok(Some(lie)) = tamper(self.mode, &self.mem, layout, watch) {
                    self.lie = Some(lie);
                    served.interrupt = true;
                    break;
                }
            }
            served
        }
    }

    impl<M: GuestMemory> VirtioDevice for Misbehaving<M> {
        fn device_type(&self) -> DeviceType {
            self.inner.device_type()
        }
        fn device_features(&self) -> u64 {
            self.inner.device_features()
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
        fn features_ok(&mut self, features: u64) {
            self.inner.features_ok(features);
        }
        fn activate(&mut self, features: u64, queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
            self.queues = queues
                .iter()
                .map(|q| q.layout.map(|l| (l, RingWatch::new(&l))))
                .collect();
            self.inner.activate(features, queues)
        }
        fn queue_notify(&mut self, queue: u16) -> Result<Served, DeviceError> {
            let served = self.inner.queue_notify(queue)?;
            Ok(self.after(served))
        }
        fn backend_ready(&mut self) -> Result<Served, DeviceError> {
            let served = self.inner.backend_ready()?;
            Ok(self.after(served))
        }
        fn quiesce(&mut self) -> Result<Served, DeviceError> {
            let served = self.inner.quiesce()?;
            Ok(self.after(served))
        }
        fn set_polling(&mut self, on: bool) -> Option<Result<Served, DeviceError>> {
            let served = self.inner.set_polling(on)?;
            Some(served.map(|s| self.after(s)))
        }
        fn disable_queue(&mut self, queue: u16) -> Result<Served, DeviceError> {
            if let Some(q) = self.queues.get_mut(usize::from(queue)) {
                *q = None;
            }
            let served = self.inner.disable_queue(queue)?;
            Ok(self.after(served))
        }
        fn reset(&mut self) {
            self.queues.clear();
            self.inner.reset();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use virtio_core::memory::{GuestAddress, Region};
        use virtio_core::split::QueueSize;

        struct Ram {
            _buf: Vec<u64>,
            mem: RegionMemory<1>,
            layout: QueueLayout,
        }

        /// A queue of 8 at guest address 0x1000: descriptors, avail, used.
        fn ram() -> Ram {
            let mut buf = alloc::vec![0u64; 1024];
            let mut mem = RegionMemory::new();
            // SAFETY: the buffer outlives the memory (both in `Ram`) and only
            // copies reach it.
            let r = unsafe { Region::new(GuestAddress(0x1000), buf.as_mut_ptr().cast(), 8192) };
            mem.add(r).unwrap();
            let size = QueueSize::new(8).unwrap();
            let layout = QueueLayout::new(
                size,
                GuestAddress(0x1000),
                GuestAddress(0x1080),
                GuestAddress(0x10a0),
            )
            .unwrap();
            Ram {
                _buf: buf,
                mem,
                layout,
            }
        }

        /// The driver made heads `heads` available (each one 100-byte
        /// writable descriptor, head 2 chained to 3), the device used the
        /// first with `len`.
        fn serve(r: &Ram, heads: &[u16], len: u32) {
            for (i, h) in heads.iter().enumerate() {
                let (flags, next) = if *h == 2 {
                    (DescFlags::WRITE | DescFlags::NEXT, 3)
                } else {
                    (DescFlags::WRITE, 0)
                };
                let d = Descriptor::new(GuestAddress(0x3000), 100, flags, next);
                r.mem.write_obj(r.layout.desc(*h), &d).unwrap();
                r.mem.write_obj(r.layout.avail_slot(i as u16), h).unwrap();
            }
            let d = Descriptor::new(GuestAddress(0x3000), 50, DescFlags::WRITE, 0);
            r.mem.write_obj(r.layout.desc(3), &d).unwrap();
            r.mem
                .store_u16_release(r.layout.avail_idx(), heads.len() as u16)
                .unwrap();
            let e = UsedElem::new(u32::from(heads[0]), len);
            r.mem.write_obj(r.layout.used_slot(0), &e).unwrap();
            r.mem.store_u16_release(r.layout.used_idx(), 1).unwrap();
        }

        fn used(r: &Ram, at: u16) -> (u32, u32) {
            let e: UsedElem = r.mem.read_obj(r.layout.used_slot(at)).unwrap();
            (e.id(), e.len())
        }

        fn used_idx(r: &Ram) -> u16 {
            r.mem.load_u16_acquire(r.layout.used_idx()).unwrap()
        }

        fn lie(mode: Misbehave, heads: &[u16]) -> (Ram, Option<Lie>) {
            let r = ram();
            let mut w = RingWatch::new(&r.layout);
            serve(&r, heads, 10);
            let lie = tamper(mode, &r.mem, &r.layout, &mut w).unwrap();
            (r, lie)
        }

        #[test]
        fn names_parse_back_and_unknown_is_none() {
            for m in Misbehave::ALL {
                assert_eq!(Misbehave::from_name(m.name()), Some(m));
                assert!(Misbehave::EXPECTED.contains(m.name()));
                assert!(m.rule().starts_with('§'));
            }
            assert_eq!(Misbehave::from_name("used-thrice"), None);
            assert_eq!(Misbehave::from_name(""), None);
        }

        #[test]
        fn used_id_out_of_range_2_7_8() {
            let (r, lie) = lie(Misbehave::UsedIdOutOfRange, &[0, 1]);
            assert_eq!(used(&r, 0), (15, 10));
            assert_eq!(lie.unwrap().real, (0, 10));
        }

        #[test]
        fn used_id_not_in_flight_picks_a_free_descriptor_2_7_8() {
            let (r, lie) = lie(Misbehave::UsedIdNotInFlight, &[0, 1, 2]);
            // 0, 1, 2 are in flight; 3 is free (a chain's tail, never a head).
            assert_eq!(used(&r, 0), (3, 10));
            assert!(lie.is_some());
        }

        #[test]
        fn used_id_not_in_flight_waits_while_every_descriptor_is_in_flight() {
            let (r, lie) = lie(Misbehave::UsedIdNotInFlight, &[0, 1, 2, 3, 4, 5, 6, 7]);
            assert_eq!(lie, None);
            assert_eq!(used(&r, 0), (0, 10));
        }

        #[test]
        fn used_twice_publishes_the_element_again_2_7_8() {
            let (r, lie) = lie(Misbehave::UsedTwice, &[1]);
            assert_eq!(used(&r, 0), (1, 10));
            assert_eq!(used(&r, 1), (1, 10));
            assert_eq!(used_idx(&r), 2);
            assert!(lie.is_some());
        }

        #[test]
        fn used_len_too_large_is_one_past_the_chain_2_7_8_2() {
            let (r, _) = lie(Misbehave::UsedLenTooLarge, &[2]);
            // Head 2 (100 bytes) chained to 3 (50 bytes).
            assert_eq!(used(&r, 0), (2, 151));
            let (r, _) = lie(Misbehave::UsedLenTooLarge, &[1]);
            assert_eq!(used(&r, 0), (1, 101));
        }

        /// A length is only a lie where the chain has device-writable bytes:
        /// an element for a chain without them is left alone (drivers take its
        /// length as 0) and the next one with them is lied about.
        #[test]
        fn used_len_too_large_skips_chains_without_writable_bytes() {
            let r = ram();
            let mut w = RingWatch::new(&r.layout);
            serve(&r, &[1], 10);
            let readable = Descriptor::new(GuestAddress(0x3000), 100, DescFlags::empty(), 0);
            r.mem.write_obj(r.layout.desc(1), &readable).unwrap();
            let lie = tamper(Misbehave::UsedLenTooLarge, &r.mem, &r.layout, &mut w).unwrap();
            assert_eq!(lie, None);
            assert_eq!(used(&r, 0), (1, 10));
            // Head 0 (100 writable bytes) used next: lied about.
            let writable = Descriptor::new(GuestAddress(0x3000), 100, DescFlags::WRITE, 0);
            r.mem.write_obj(r.layout.desc(0), &writable).unwrap();
            r.mem.write_obj(r.layout.avail_slot(1), &0u16).unwrap();
            r.mem.store_u16_release(r.layout.avail_idx(), 2).unwrap();
            r.mem
                .write_obj(r.layout.used_slot(1), &UsedElem::new(0, 10))
                .unwrap();
            r.mem.store_u16_release(r.layout.used_idx(), 2).unwrap();
            let lie = tamper(Misbehave::UsedLenTooLarge, &r.mem, &r.layout, &mut w).unwrap();
            assert_eq!(lie.map(|l| (l.at, l.told)), Some((1, (0, 101))));
        }

        #[test]
        fn used_idx_jumps_a_whole_ring_2_7_14() {
            let (r, lie) = lie(Misbehave::UsedIdxJump, &[0]);
            assert_eq!(used_idx(&r), 9);
            assert_eq!(used(&r, 0), (0, 10));
            assert!(lie.is_some());
        }

        #[test]
        fn register_modes_tell_no_ring_lie() {
            for m in [
                Misbehave::ConfigGenerationChurn,
                Misbehave::ResetNeverClears,
                Misbehave::InterruptStorm,
            ] {
                let (r, lie) = lie(m, &[0]);
                assert_eq!(lie, None);
                assert_eq!((used(&r, 0), used_idx(&r)), ((0, 10), 1));
            }
        }
    }
}
