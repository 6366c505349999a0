//! `mmio_registers`: sequences of register reads and writes (any offset,
//! any width) against the device-side virtio-mmio register file (§4.2.2) of
//! each device type, with resets in the middle, status writes out of order
//! and device-side events. Checks the invariants the register file owes the
//! driver: FEATURES_OK only over a valid feature set (§2.2.2), DRIVER_OK
//! only after FEATURES_OK (§3.1.1), reset clears everything (§2.4), a ready
//! queue always has a valid layout (§2.7), and the interrupt line matches
//! InterruptStatus (§4.2.2).

use arbitrary::{Arbitrary, Unstructured};
use virtio_core::features::{self, DeviceType};
use virtio_core::mmio::device::{ActivateError, MmioDevice, MmioRegisters, QueueState};
use virtio_core::mmio::regs;
use virtio_core::split::layout::QueueLayout;
use virtio_core::status::DeviceStatus;

/// A device whose identity and behaviour come from the input.
#[derive(Debug)]
struct FuzzDevice {
    id: u32,
    features: u64,
    queues: Vec<u16>,
    config: Vec<u8>,
    refuse_activate: bool,
}

impl MmioDevice for FuzzDevice {
    fn device_id(&self) -> u32 {
        self.id
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn num_queues(&self) -> u16 {
        self.queues.len() as u16
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        self.queues.get(usize::from(index)).copied().unwrap_or(0)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get_mut(o))
            {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, _features: u64, queues: &[QueueState]) -> Result<(), ActivateError> {
        for q in queues.iter().filter(|q| q.is_ready()) {
            assert!(q.layout().is_some());
        }
        if self.refuse_activate {
            Err(ActivateError {
                reason: "fuzz device refuses",
            })
        } else {
            Ok(())
        }
    }
    fn reset(&mut self) {}
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Write a register: `reg` picks one of the known offsets (or, beyond
    /// their count, a raw offset), `width` 1, 2, 4 or 8 bytes.
    Write { reg: u16, width: u8, value: u64 },
    /// Read a register.
    Read { reg: u16, width: u8 },
    /// The device signals a used buffer.
    UsedBuffer,
    /// The device changes its configuration.
    ConfigChanged,
    /// The device hits an internal error.
    NeedsReset,
}

#[derive(Arbitrary, Debug)]
struct Input {
    device: u8,
    features: u64,
    queues: Vec<u16>,
    config: Vec<u8>,
    refuse_activate: bool,
    ops: Vec<Op>,
}

/// The registers of §4.2.2 (and the legacy ones of §4.2.4) the fuzzer picks
/// from by index.
pub(crate) const OFFSETS: &[u64] = &[
    regs::MAGIC_VALUE,
    regs::VERSION,
    regs::DEVICE_ID,
    regs::VENDOR_ID,
    regs::DEVICE_FEATURES,
    regs::DEVICE_FEATURES_SEL,
    regs::DRIVER_FEATURES,
    regs::DRIVER_FEATURES_SEL,
    regs::QUEUE_SEL,
    regs::QUEUE_NUM_MAX,
    regs::QUEUE_NUM,
    regs::QUEUE_READY,
    regs::QUEUE_NOTIFY,
    regs::INTERRUPT_STATUS,
    regs::INTERRUPT_ACK,
    regs::STATUS,
    regs::QUEUE_DESC_LOW,
    regs::QUEUE_DESC_HIGH,
    regs::QUEUE_DRIVER_LOW,
    regs::QUEUE_DRIVER_HIGH,
    regs::QUEUE_DEVICE_LOW,
    regs::QUEUE_DEVICE_HIGH,
    regs::SHM_SEL,
    regs::SHM_LEN_LOW,
    regs::SHM_LEN_HIGH,
    regs::SHM_BASE_LOW,
    regs::SHM_BASE_HIGH,
    regs::QUEUE_RESET,
    regs::CONFIG_GENERATION,
    regs::CONFIG,
    regs::CONFIG + 4,
    regs::GUEST_PAGE_SIZE,
    regs::QUEUE_PFN,
];

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let all = DeviceType::ALL;
    let device_type = all[usize::from(input.device) % all.len()];
    let dev = FuzzDevice {
        id: device_type.id(),
        features: input.features,
        queues: input.queues.iter().take(10).copied().collect(),
        config: input.config.iter().take(256).copied().collect(),
        refuse_activate: input.refuse_activate,
    };
    let Ok(mut regs) = MmioRegisters::<_, 8>::new(dev) else {
        return;
    };
    let offered = regs.offered_features();
    for op in input.ops.iter().take(2048) {
        match *op {
            Op::Write { reg, width, value } => {
                let offset = offset_of(reg);
                let width = [1usize, 2, 4, 8][usize::from(width % 4)];
                let bytes = value.to_le_bytes();
                let was = regs.status();
                match regs.write(offset, &bytes[..width]) {
                    Ok(_) => {}
                    Err(e) => {
                        let _ = e.to_string();
                        if offset == regs::STATUS {
                            assert_eq!(regs.status(), was, "refused status write changed it");
                        }
                    }
                }
                if offset == regs::STATUS && width == 4 && value as u32 == 0 {
                    assert_eq!(regs.status(), DeviceStatus::empty(), "reset (§2.4)");
                    assert!(regs.queues().iter().all(|q| !q.is_ready()));
                    assert!(!regs.interrupt_asserted());
                }
            }
            Op::Read { reg, width } => {
                let offset = offset_of(reg);
                let width = [1usize, 2, 4, 8][usize::from(width % 4)];
                let mut buf = [0u8; 8];
                if let Err(e) = regs.read(offset, &mut buf[..width]) {
                    let _ = e.to_string();
                }
            }
            Op::UsedBuffer => {
                regs.raise_used_buffer();
            }
            Op::ConfigChanged => regs.config_changed(),
            Op::NeedsReset => {
                let _ = regs.set_needs_reset();
            }
        }
        check(&regs, device_type, offered);
    }
}

/// Register `reg` of [`OFFSETS`], or beyond them a raw offset.
pub(crate) fn offset_of(reg: u16) -> u64 {
    let i = usize::from(reg);
    match OFFSETS.get(i) {
        Some(&o) => o,
        None => u64::from(reg) % 0x200,
    }
}

/// The invariants the register file owes the driver after every access.
pub(crate) fn check<D: MmioDevice, const N: usize>(
    regs: &MmioRegisters<D, N>,
    device_type: DeviceType,
    offered: u64,
) {
    let status = regs.status();
    if status.contains(DeviceStatus::FEATURES_OK) {
        let f = regs
            .features()
            .expect("FEATURES_OK means negotiated features");
        assert!(
            features::validate(device_type, offered, f, true).is_ok(),
            "FEATURES_OK over invalid features {f:#x}"
        );
    }
    if status.contains(DeviceStatus::DRIVER_OK) {
        assert!(
            status.contains(DeviceStatus::FEATURES_OK),
            "DRIVER_OK without FEATURES_OK on a modern device (§3.1.1)"
        );
    }
    for q in regs.queues() {
        if let Some(l) = q.layout() {
            assert!(
                QueueLayout::new(l.size(), l.desc_table(), l.avail_ring(), l.used_ring()).is_ok()
            );
        }
    }
    assert_eq!(
        regs.interrupt_asserted(),
        !regs.interrupt_status().is_empty()
    );
}
