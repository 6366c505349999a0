//! Shared set-up for the device request targets: a memory image written by
//! the fuzzer, every queue of a device laid out in it, then a sequence of
//! notifications, backend events and hostile pokes. The device must never
//! panic; errors are the device asking for `DEVICE_NEEDS_RESET`.

use arbitrary::Arbitrary;
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::testing::OwnedMemory;
use virtio_devices::device::{QueueConfig, VirtioDevice};

/// Size of the fuzzed memory image.
pub const MEM: usize = 0x4_0000;

/// One step of a device target.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// The driver notifies a queue.
    Notify(u8),
    /// The backend became ready.
    BackendReady,
    /// The hostile driver rewrites memory mid-run.
    Poke {
        /// Where, modulo the memory size.
        at: u32,
        /// What.
        bytes: Vec<u8>,
    },
    /// The host side produces input (for devices that take it: the target
    /// feeds these to its backend before the run).
    Input(Vec<u8>),
    /// The driver resets the device and activates it again.
    Reset,
}

/// The queues' layouts: queue `i` at a fixed place, size from the input.
pub fn layouts(n: usize, size_log2: u8) -> Vec<QueueLayout> {
    let size = QueueSize::new(1 << (size_log2 % 5)).expect("power of two <= 16");
    (0..n as u64)
        .map(|i| {
            let base = 0x1000 + i * 0x1000;
            QueueLayout::new(
                size,
                GuestAddress(base),
                GuestAddress(base + 0x400),
                GuestAddress(base + 0x800),
            )
            .expect("fixed layout is valid")
        })
        .collect()
}

/// Writes the image and activates `dev` with every queue enabled.
pub fn activate<D: VirtioDevice>(
    dev: &mut D,
    mem: &OwnedMemory,
    image: &[u8],
    size_log2: u8,
    features: u64,
) -> bool {
    let n = image.len().min(MEM);
    mem.write(GuestAddress(0), &image[..n]).expect("image fits");
    let qs = layouts(dev.queue_max_sizes().len(), size_log2)
        .into_iter()
        .map(|l| QueueConfig { layout: Some(l) })
        .collect();
    let features = dev.device_features() & features;
    dev.activate(features, qs).is_ok()
}

/// Runs the common steps; `input` handles [`Step::Input`].
pub fn run_steps<D: VirtioDevice>(
    dev: &mut D,
    mem: &OwnedMemory,
    steps: &[Step],
    size_log2: u8,
    features: u64,
) {
    for step in steps.iter().take(256) {
        match step {
            Step::Notify(q) => {
                if let Err(e) = dev.queue_notify(u16::from(*q % 8)) {
                    let _ = e.to_string();
                }
            }
            Step::BackendReady => {
                let _ = dev.backend_ready();
            }
            Step::Poke { at, bytes } => {
                let at = *at as usize % MEM;
                let n = bytes.len().min(MEM - at).min(64);
                mem.write(GuestAddress(at as u64), &bytes[..n])
                    .expect("inside memory");
            }
            Step::Input(_) => {}
            Step::Reset => {
                dev.reset();
                let _ = activate(dev, mem, &[], size_log2, features);
            }
        }
    }
}

/// Activates `dev` over `image` with every queue enabled, then runs
/// `steps`; a device that refuses activation ends the run.
pub fn exercise<D: VirtioDevice>(
    dev: &mut D,
    mem: &OwnedMemory,
    image: &[u8],
    steps: &[Step],
    size_log2: u8,
    features: u64,
) {
    if activate(dev, mem, image, size_log2, features) {
        run_steps(dev, mem, steps, size_log2, features);
    }
}
