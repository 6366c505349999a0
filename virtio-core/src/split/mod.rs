//! The split virtqueue (spec §2.7) from both ends.
//!
//! [`layout`] holds the wire formats and offsets both sides agree on;
//! [`fields`] the one pair of atomic accessors both sides use for the ring
//! fields the other side reads concurrently (`flags`, `idx`, the event
//! indices);
//! [`chain`] walks a descriptor chain as the device must (bounded, loop-free,
//! indirect tables per §2.7.5.3) and reads and writes through it;
//! [`device`] is the device's view of a queue (pop, add_used, notification
//! suppression); [`driver`] is the driver's (add, kick, pop_used) and trusts
//! nothing the device writes.
//!
//! The packed virtqueue (§2.8) is not implemented.

pub mod chain;
pub mod device;
pub mod driver;
pub mod fields;
pub mod layout;

pub use chain::{ChainError, DescriptorChain, ParkedReader, Reader, Writer};
pub use device::{DeviceQueue, QueueError};
pub use driver::{DriverError, DriverQueue, IndirectArea, Token, Used};
pub use fields::RingField;
pub use layout::{
    AvailFlags, DescFlags, Descriptor, LayoutError, QueueLayout, QueueSize, UsedElem, UsedFlags,
    vring_need_event,
};

#[cfg(test)]
mod tests {
    //! The two sides at once: a driver thread and a device thread over one
    //! memory, as a guest's vCPU and a device run, touching the fields each
    //! writes while the other reads them (§2.7.6, §2.7.7, §2.7.8,
    //! §2.7.10). Under Miri a plain access on one side against an atomic
    //! on the other is a data race.
    extern crate std;

    use super::{DeviceQueue, DriverQueue};
    use crate::memory::GuestAddress;
    use crate::testing::RingFixture;

    /// Chains the driver makes available, one at a time.
    const CHAINS: u16 = 12;

    /// Without `VIRTIO_F_EVENT_IDX`: avail.flags and used.flags (§2.7.7).
    #[test]
    fn section_2_7_7_flags_between_driver_and_device_threads() {
        driver_and_device_threads(false);
    }

    /// With `VIRTIO_F_EVENT_IDX`: used_event and avail_event (§2.7.10).
    #[test]
    fn section_2_7_10_event_indices_between_driver_and_device_threads() {
        driver_and_device_threads(true);
    }

    fn driver_and_device_threads(event_idx: bool) {
        let f = RingFixture::new(4);
        let mem = &f.mem;
        let mut drv = DriverQueue::<4>::new(f.layout, event_idx, None).unwrap();
        drv.init(mem).unwrap();
        let mut dev = DeviceQueue::new(f.layout, event_idx, false);
        std::thread::scope(|s| {
            // The device: serves every chain, asking for notifications
            // only while idle (avail_event or used.flags), deciding on
            // interrupts from used_event or avail.flags.
            s.spawn(move || {
                let mut served = 0;
                while served < CHAINS {
                    dev.disable_notification(mem).unwrap();
                    while let Some(chain) = dev.pop(mem).unwrap() {
                        let head = chain.head();
                        dev.add_used(mem, head, 0).unwrap();
                        served += 1;
                    }
                    dev.publish_used(mem).unwrap();
                    dev.needs_notification(mem).unwrap();
                    if !dev.enable_notification(mem).unwrap() {
                        std::thread::yield_now();
                    }
                }
            });
            // The driver: adds and kicks as the device asks (avail_event
            // or used.flags), and switches interrupts off while it
            // drains and on before it would wait (used_event or
            // avail.flags).
            let (mut added, mut done) = (0, 0);
            while done < CHAINS {
                if added < CHAINS && drv.num_free() > 0 {
                    let buf = GuestAddress(RingFixture::DATA + u64::from(added) * 64);
                    drv.add(mem, &[(buf, 64)], &[]).unwrap();
                    drv.publish(mem).unwrap();
                    drv.should_kick(mem).unwrap();
                    added += 1;
                }
                drv.disable_interrupts(mem).unwrap();
                while drv.pop_used(mem).unwrap().is_some() {
                    done += 1;
                }
                if !drv.enable_interrupts(mem).unwrap() {
                    std::thread::yield_now();
                }
            }
        });
        assert_eq!(drv.in_flight(), 0);
    }
}
