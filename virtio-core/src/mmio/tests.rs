//! Register-level tests of the device side, and the driver side run against
//! it in-process (§4.2.2, §4.2.3, legacy §4.2.4).

extern crate std;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::vec::Vec;

use super::device::{
    ActivateError, MmioDevice, MmioError, MmioRegisters, QueueState, WriteOutcome,
};
use super::driver::{DriverError, MmioDriver, RegisterAccess};
use super::regs::{self, Direction, InterruptStatus, MmioVersion, Register};
use crate::features::{FeatureError, NetFeatures, TransportFeatures};
use crate::memory::GuestAddress;
use crate::split::layout::{Area, LayoutError, QueueLayout, QueueSize};
use crate::status::{DeviceStatus, StatusError};

const V1: u64 = TransportFeatures::VERSION_1.bits();
const A: u32 = 1;
const D: u32 = 2;
const O: u32 = 4;
const F: u32 = 8;

#[derive(Debug)]
struct TestDevice {
    features: u64,
    max: [u16; 2],
    config: [u8; 16],
    acceptable: bool,
    fail_activate: bool,
    activated: Option<(u64, Vec<Option<QueueLayout>>)>,
    resets: u32,
}

impl TestDevice {
    fn net() -> Self {
        TestDevice {
            features: (NetFeatures::MAC | NetFeatures::GUEST_CSUM | NetFeatures::GUEST_ECN).bits()
                | TransportFeatures::ADMIN_VQ.bits(),
            max: [256, 16],
            config: core::array::from_fn(|i| i as u8 + 0x10),
            acceptable: true,
            fail_activate: false,
            activated: None,
            resets: 0,
        }
    }
}

impl MmioDevice for TestDevice {
    fn device_id(&self) -> u32 {
        1
    }
    fn vendor_id(&self) -> u32 {
        0x1af4
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn features_acceptable(&self, _features: u64) -> bool {
        self.acceptable
    }
    fn num_queues(&self) -> u16 {
        2
    }
    fn queue_max_size(&self, index: u16) -> u16 {
        self.max.get(usize::from(index)).copied().unwrap_or(0)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in (offset..).zip(data.iter_mut()) {
            *b = usize::try_from(i)
                .ok()
                .and_then(|i| self.config.get(i))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, b) in (offset..).zip(data) {
            if let Some(c) = usize::try_from(i).ok().and_then(|i| self.config.get_mut(i)) {
                *c = *b;
            }
        }
    }
    fn activate(&mut self, features: u64, queues: &[QueueState]) -> Result<(), ActivateError> {
        if self.fail_activate {
            return Err(ActivateError { reason: "test" });
        }
        self.activated = Some((features, queues.iter().map(QueueState::layout).collect()));
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.activated = None;
    }
}

type Regs = MmioRegisters<TestDevice, 4>;

fn regs() -> Regs {
    MmioRegisters::new(TestDevice::net()).unwrap()
}

fn w(r: &mut Regs, offset: u64, v: u32) -> Result<WriteOutcome, MmioError> {
    r.write32(offset, v)
}

fn rd(r: &Regs, offset: u64) -> u32 {
    r.read32(offset).unwrap()
}

/// Brings `r` to FEATURES_OK with `features` (word 0 and 1).
fn to_features_ok(r: &mut Regs, features: u64) {
    w(r, regs::STATUS, A | D).unwrap();
    for (sel, word) in [(0, features as u32), (1, (features >> 32) as u32)] {
        w(r, regs::DRIVER_FEATURES_SEL, sel).unwrap();
        w(r, regs::DRIVER_FEATURES, word).unwrap();
    }
    assert_eq!(
        w(r, regs::STATUS, A | D | F),
        Ok(WriteOutcome::FeaturesOk { features })
    );
}

fn setup_queue(r: &mut Regs, q: u32, size: u32, base: u64) -> Result<WriteOutcome, MmioError> {
    w(r, regs::QUEUE_SEL, q)?;
    w(r, regs::QUEUE_NUM, size)?;
    for (low, addr) in [
        (regs::QUEUE_DESC_LOW, base),
        (regs::QUEUE_DRIVER_LOW, base + 0x1000),
        (regs::QUEUE_DEVICE_LOW, base + 0x2000),
    ] {
        w(r, low, addr as u32)?;
        w(r, low + 4, (addr >> 32) as u32)?;
    }
    w(r, regs::QUEUE_READY, 1)
}

fn live(features: u64) -> Regs {
    let mut r = regs();
    to_features_ok(&mut r, features);
    setup_queue(&mut r, 0, 128, 0x1_0000_0000).unwrap();
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | F | O),
        Ok(WriteOutcome::Activated)
    );
    r
}

#[test]
fn identity_registers_4_2_2() {
    let r = regs();
    assert_eq!(rd(&r, regs::MAGIC_VALUE), 0x7472_6976);
    assert_eq!(rd(&r, regs::VERSION), 2);
    assert_eq!(rd(&r, regs::DEVICE_ID), 1);
    assert_eq!(rd(&r, regs::VENDOR_ID), 0x1af4);
    assert_eq!(rd(&r, regs::STATUS), 0);
    assert_eq!(rd(&r, regs::CONFIG_GENERATION), 0);
}

#[test]
fn device_features_by_selector_add_version_1_drop_admin_vq_4_2_2() {
    let mut r = regs();
    let n = NetFeatures::MAC | NetFeatures::GUEST_CSUM | NetFeatures::GUEST_ECN;
    assert_eq!(rd(&r, regs::DEVICE_FEATURES), n.bits() as u32);
    w(&mut r, regs::DEVICE_FEATURES_SEL, 1).unwrap();
    // VERSION_1 (bit 32) added; ADMIN_VQ (bit 41) not for mmio (§4.2.5).
    assert_eq!(rd(&r, regs::DEVICE_FEATURES), 1);
    w(&mut r, regs::DEVICE_FEATURES_SEL, 2).unwrap();
    assert_eq!(rd(&r, regs::DEVICE_FEATURES), 0);
}

#[test]
fn write_only_read_as_zero_and_read_only_writes_are_ignored_4_2_2_2() {
    for &reg in Register::ALL {
        if !reg.exists_in(MmioVersion::Modern) {
            continue;
        }
        let mut r = regs();
        if reg.direction() == Direction::Write {
            let mut b = [0xffu8; 4];
            assert_eq!(
                r.read(reg.offset(), &mut b),
                Err(MmioError::ReadOfWriteOnly { register: reg })
            );
            assert_eq!(b, [0; 4], "{reg}");
        }
        if reg.direction() == Direction::Read {
            let before = rd(&r, reg.offset());
            assert_eq!(
                w(&mut r, reg.offset(), 0x5a5a),
                Err(MmioError::WriteToReadOnly { register: reg })
            );
            assert_eq!(rd(&r, reg.offset()), before, "{reg}");
            assert_eq!(
                r.last_error(),
                Some(MmioError::WriteToReadOnly { register: reg })
            );
        }
    }
}

#[test]
fn unknown_offsets_and_bad_access_sizes_are_reported() {
    let mut r = regs();
    let mut b4 = [0u8; 4];
    let mut b2 = [0u8; 2];
    let mut b3 = [0u8; 3];
    let mut b8 = [0u8; 8];
    assert_eq!(
        r.read(0x018, &mut b4),
        Err(MmioError::UnknownOffset { offset: 0x018 })
    );
    // GuestPageSize is legacy only.
    assert_eq!(
        r.read(regs::GUEST_PAGE_SIZE, &mut b4),
        Err(MmioError::UnknownOffset { offset: 0x028 })
    );
    assert_eq!(
        r.read(regs::STATUS, &mut b2),
        Err(MmioError::BadAccess {
            offset: 0x70,
            size: 2
        })
    );
    assert_eq!(
        r.read(0x72, &mut b4),
        Err(MmioError::BadAccess {
            offset: 0x72,
            size: 4
        })
    );
    assert_eq!(
        r.read(regs::STATUS, &mut b8),
        Err(MmioError::BadAccess {
            offset: 0x70,
            size: 8
        })
    );
    assert_eq!(
        r.read(regs::CONFIG, &mut b3),
        Err(MmioError::BadAccess {
            offset: 0x100,
            size: 3
        })
    );
    assert_eq!(
        r.read(regs::CONFIG + 1, &mut b2),
        Err(MmioError::BadAccess {
            offset: 0x101,
            size: 2
        })
    );
    assert_eq!(
        r.write(regs::STATUS, &[1]),
        Err(MmioError::BadAccess {
            offset: 0x70,
            size: 1
        })
    );
    // The top of the address space is config space; nothing overflows.
    assert_eq!(r.write(u64::MAX - 1, &[1, 2]), Ok(WriteOutcome::Done));
    assert_eq!(rd(&r, regs::STATUS), 0);
}

#[test]
fn config_space_is_byte_addressed_with_1_2_4_8_byte_accesses_4_2_2() {
    let mut r = regs();
    let mut b1 = [0u8; 1];
    r.read(regs::CONFIG + 3, &mut b1).unwrap();
    assert_eq!(b1, [0x13]);
    let mut b2 = [0u8; 2];
    r.read(regs::CONFIG + 2, &mut b2).unwrap();
    assert_eq!(b2, [0x12, 0x13]);
    assert_eq!(rd(&r, regs::CONFIG + 4), 0x1716_1514);
    let mut b8 = [0u8; 8];
    r.read(regs::CONFIG + 8, &mut b8).unwrap();
    assert_eq!(u64::from_le_bytes(b8), 0x1f1e_1d1c_1b1a_1918);
    assert_eq!(
        r.write(regs::CONFIG + 6, &[0xaa, 0xbb]),
        Ok(WriteOutcome::Done)
    );
    assert_eq!(rd(&r, regs::CONFIG + 4), 0xbbaa_1514);
    // Past the end of the device's config space: zeros.
    assert_eq!(rd(&r, regs::CONFIG + 0x40), 0);
}

#[test]
fn status_register_enforces_the_status_machine_2_1() {
    let mut r = regs();
    assert!(matches!(
        w(&mut r, regs::STATUS, D),
        Err(MmioError::Status(StatusError::OutOfOrder { .. }))
    ));
    assert_eq!(rd(&r, regs::STATUS), 0);
    assert_eq!(w(&mut r, regs::STATUS, A | D), Ok(WriteOutcome::Done));
    assert_eq!(
        w(&mut r, regs::STATUS, A),
        Err(MmioError::Status(StatusError::ClearsBit {
            bits: DeviceStatus::DRIVER
        }))
    );
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | 0x40),
        Err(MmioError::Status(StatusError::SetsNeedsReset))
    );
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | O),
        Err(MmioError::Status(StatusError::DriverOkWithoutFeaturesOk))
    );
    assert_eq!(
        w(&mut r, regs::STATUS, 0x103),
        Err(MmioError::BadValue {
            register: Register::Status,
            value: 0x103
        })
    );
    assert_eq!(rd(&r, regs::STATUS), A | D);
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | 0x80),
        Ok(WriteOutcome::Failed)
    );
    assert_eq!(rd(&r, regs::STATUS), A | D | 0x80);
}

#[test]
fn features_ok_refused_for_invalid_features_2_2_2() {
    let mut r = regs();
    w(&mut r, regs::STATUS, A | D).unwrap();
    // Not offered: the lowest such bit is named.
    w(
        &mut r,
        regs::DRIVER_FEATURES,
        (NetFeatures::MAC | NetFeatures::CSUM).bits() as u32,
    )
    .unwrap();
    w(&mut r, regs::DRIVER_FEATURES_SEL, 1).unwrap();
    w(&mut r, regs::DRIVER_FEATURES, 1).unwrap();
    let err = w(&mut r, regs::STATUS, A | D | F).unwrap_err();
    assert!(matches!(
        err,
        MmioError::Features(FeatureError::NotOffered { bit: 0, .. })
    ));
    assert_eq!(rd(&r, regs::STATUS), A | D);
    // GUEST_ECN without GUEST_TSO4/6 (§5.1.3.1).
    w(&mut r, regs::DRIVER_FEATURES_SEL, 0).unwrap();
    w(
        &mut r,
        regs::DRIVER_FEATURES,
        NetFeatures::GUEST_ECN.bits() as u32,
    )
    .unwrap();
    let err = w(&mut r, regs::STATUS, A | D | F).unwrap_err();
    assert!(matches!(
        err,
        MmioError::Features(FeatureError::MissingDependency { rule, .. }) if rule.feature == 9
    ));
    // VERSION_1 missing.
    w(
        &mut r,
        regs::DRIVER_FEATURES,
        NetFeatures::MAC.bits() as u32,
    )
    .unwrap();
    w(&mut r, regs::DRIVER_FEATURES_SEL, 1).unwrap();
    w(&mut r, regs::DRIVER_FEATURES, 0).unwrap();
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | F),
        Err(MmioError::Features(FeatureError::Version1Missing))
    );
    // Fixed: accepted, and the features are now locked (§3.1.1 step 5).
    w(&mut r, regs::DRIVER_FEATURES, 1).unwrap();
    let want = NetFeatures::MAC.bits() | V1;
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | F),
        Ok(WriteOutcome::FeaturesOk { features: want })
    );
    assert_eq!(r.features(), Some(want));
    assert!(matches!(
        w(&mut r, regs::DRIVER_FEATURES, 0),
        Err(MmioError::FeaturesLocked { .. })
    ));
    assert_eq!(r.features(), Some(want));
}

#[test]
fn driver_features_only_in_the_driver_stage_3_1_1() {
    let mut r = regs();
    w(&mut r, regs::STATUS, A).unwrap();
    assert!(matches!(
        w(&mut r, regs::DRIVER_FEATURES, 1),
        Err(MmioError::FeaturesLocked { .. })
    ));
    w(&mut r, regs::STATUS, A | D).unwrap();
    w(&mut r, regs::DRIVER_FEATURES_SEL, 2).unwrap();
    assert_eq!(w(&mut r, regs::DRIVER_FEATURES, 0), Ok(WriteOutcome::Done));
    assert_eq!(
        w(&mut r, regs::DRIVER_FEATURES, 4),
        Err(MmioError::FeatureWord { sel: 2, value: 4 })
    );
}

#[test]
fn the_device_may_refuse_features_ok_2_2_2() {
    let mut dev = TestDevice::net();
    dev.acceptable = false;
    let mut r: Regs = MmioRegisters::new(dev).unwrap();
    w(&mut r, regs::STATUS, A | D).unwrap();
    w(&mut r, regs::DRIVER_FEATURES_SEL, 1).unwrap();
    w(&mut r, regs::DRIVER_FEATURES, 1).unwrap();
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | F),
        Err(MmioError::Status(StatusError::FeaturesNotAcceptable))
    );
    assert_eq!(rd(&r, regs::STATUS), A | D);
}

#[test]
fn queue_registers_4_2_3_2() {
    let mut r = regs();
    to_features_ok(&mut r, V1);
    assert_eq!(rd(&r, regs::QUEUE_NUM_MAX), 256);
    w(&mut r, regs::QUEUE_SEL, 1).unwrap();
    assert_eq!(rd(&r, regs::QUEUE_NUM_MAX), 16);
    w(&mut r, regs::QUEUE_SEL, 2).unwrap();
    assert_eq!(rd(&r, regs::QUEUE_NUM_MAX), 0);
    assert_eq!(rd(&r, regs::QUEUE_READY), 0);
    assert_eq!(
        w(&mut r, regs::QUEUE_NUM, 8),
        Err(MmioError::NoSuchQueue { queue: 2 })
    );
    w(&mut r, regs::QUEUE_SEL, 0).unwrap();
    assert_eq!(
        w(&mut r, regs::QUEUE_NUM, 3),
        Err(MmioError::QueueSize {
            queue: 0,
            err: LayoutError::BadSize { size: 3 }
        })
    );
    assert_eq!(
        w(&mut r, regs::QUEUE_NUM, 512),
        Err(MmioError::QueueSize {
            queue: 0,
            err: LayoutError::TooLarge {
                size: 512,
                max: 256
            }
        })
    );
    assert_eq!(r.queue(0).map(QueueState::size), Some(256));
    assert_eq!(
        setup_queue(&mut r, 0, 128, 0x1_0000_0000),
        Ok(WriteOutcome::QueueEnabled { queue: 0 })
    );
    assert_eq!(rd(&r, regs::QUEUE_READY), 1);
    let q = r.queue(0).unwrap();
    let size = QueueSize::new(128).unwrap();
    let g = GuestAddress;
    let want =
        QueueLayout::new(size, g(0x1_0000_0000), g(0x1_0000_1000), g(0x1_0000_2000)).unwrap();
    assert_eq!(q.layout(), Some(want));
    // While ready, the set-up registers are not to be touched (§4.2.2.2).
    for reg in [
        Register::QueueNum,
        Register::QueueDescLow,
        Register::QueueDeviceHigh,
    ] {
        assert_eq!(
            w(&mut r, reg.offset(), 64),
            Err(MmioError::QueueBusy {
                queue: 0,
                register: reg
            })
        );
    }
    assert_eq!(r.queue(0).unwrap().layout(), Some(want));
    assert_eq!(w(&mut r, regs::QUEUE_READY, 1), Ok(WriteOutcome::Done));
    assert_eq!(
        w(&mut r, regs::QUEUE_READY, 2),
        Err(MmioError::BadValue {
            register: Register::QueueReady,
            value: 2
        })
    );
    assert_eq!(
        w(&mut r, regs::QUEUE_READY, 0),
        Ok(WriteOutcome::QueueDisabled { queue: 0 })
    );
    assert_eq!(rd(&r, regs::QUEUE_READY), 0);
}

#[test]
fn an_invalid_layout_leaves_queue_ready_0_and_is_recorded_2_7() {
    let mut r = regs();
    to_features_ok(&mut r, V1);
    let err = setup_queue(&mut r, 1, 16, 0x1008).unwrap_err();
    let want = MmioError::QueueLayout {
        queue: 1,
        err: LayoutError::Misaligned {
            area: Area::Descriptors,
            addr: GuestAddress(0x1008),
            align: 16,
        },
    };
    assert_eq!(err, want);
    assert_eq!(r.last_error(), Some(want));
    assert_eq!(rd(&r, regs::QUEUE_READY), 0);
    assert_eq!(r.take_error(), Some(want));
    assert_eq!(r.last_error(), None);
}

#[test]
fn queue_ready_needs_features_ok_3_1_1() {
    let mut r = regs();
    w(&mut r, regs::STATUS, A | D).unwrap();
    assert!(matches!(
        setup_queue(&mut r, 0, 8, 0x4000),
        Err(MmioError::QueueEnableNotAllowed { queue: 0, .. })
    ));
    assert_eq!(rd(&r, regs::QUEUE_READY), 0);
}

#[test]
fn notify_4_2_3_3() {
    let mut r = regs();
    to_features_ok(&mut r, V1);
    setup_queue(&mut r, 0, 128, 0x8000).unwrap();
    assert_eq!(
        w(&mut r, regs::QUEUE_NOTIFY, 0),
        Err(MmioError::NotifyBeforeDriverOk { value: 0 })
    );
    w(&mut r, regs::STATUS, A | D | F | O).unwrap();
    assert_eq!(
        w(&mut r, regs::QUEUE_NOTIFY, 0),
        Ok(WriteOutcome::Notify { queue: 0, value: 0 })
    );
    // Notification data: the queue index is the low 16 bits.
    assert_eq!(
        w(&mut r, regs::QUEUE_NOTIFY, 0x8005_0000),
        Ok(WriteOutcome::Notify {
            queue: 0,
            value: 0x8005_0000
        })
    );
    assert_eq!(
        w(&mut r, regs::QUEUE_NOTIFY, 1),
        Err(MmioError::NotifyQueueNotReady { queue: 1 })
    );
    assert_eq!(
        w(&mut r, regs::QUEUE_NOTIFY, 7),
        Err(MmioError::NotifyQueueNotReady { queue: 7 })
    );
}

#[test]
fn interrupts_and_config_generation_4_2_2() {
    let mut r = regs();
    assert!(!r.raise_used_buffer());
    r.config_changed();
    assert_eq!(rd(&r, regs::CONFIG_GENERATION), 1);
    assert!(!r.interrupt_asserted());
    let mut r = live(V1);
    assert!(r.raise_used_buffer());
    assert!(r.interrupt_asserted());
    r.config_changed();
    assert_eq!(rd(&r, regs::CONFIG_GENERATION), 1);
    assert_eq!(rd(&r, regs::INTERRUPT_STATUS), 3);
    assert_eq!(
        w(&mut r, regs::INTERRUPT_ACK, 1),
        Ok(WriteOutcome::InterruptAcked)
    );
    assert_eq!(r.interrupt_status(), InterruptStatus::CONFIG_CHANGE);
    assert!(r.interrupt_asserted());
    w(&mut r, regs::INTERRUPT_ACK, 0xffff_fffe).unwrap();
    assert!(!r.interrupt_asserted());
}

#[test]
fn needs_reset_raises_a_config_change_interrupt_2_1_2() {
    let mut r = regs();
    assert_eq!(r.set_needs_reset(), Err(StatusError::NotInitialized));
    let mut r = live(V1);
    r.set_needs_reset().unwrap();
    assert_eq!(rd(&r, regs::STATUS), A | D | F | O | 0x40);
    assert_eq!(r.interrupt_status(), InterruptStatus::CONFIG_CHANGE);
    // The driver may echo it while adding FAILED, never set it itself.
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | F | O | 0x40 | 0x80),
        Ok(WriteOutcome::Failed)
    );
}

#[test]
fn activation_failure_sets_needs_reset_2_1_2() {
    let mut dev = TestDevice::net();
    dev.fail_activate = true;
    let mut r: Regs = MmioRegisters::new(dev).unwrap();
    to_features_ok(&mut r, V1);
    assert_eq!(
        w(&mut r, regs::STATUS, A | D | F | O),
        Ok(WriteOutcome::ActivationFailed(ActivateError {
            reason: "test"
        }))
    );
    assert_eq!(rd(&r, regs::STATUS), A | D | F | O | 0x40);
    assert!(r.interrupt_asserted());
}

#[test]
fn reset_clears_everything_2_4_and_4_2_2_1() {
    let mut r = live(V1);
    let (features, layouts) = r.device().activated.clone().unwrap();
    assert_eq!(features, V1);
    assert!(layouts[0].is_some() && layouts[1].is_none());
    r.raise_used_buffer();
    w(&mut r, regs::DEVICE_FEATURES_SEL, 1).unwrap();
    w(&mut r, regs::QUEUE_SEL, 1).unwrap();
    assert_eq!(w(&mut r, regs::STATUS, 0), Ok(WriteOutcome::Reset));
    assert_eq!(r.device().resets, 1);
    assert!(r.device().activated.is_none());
    assert_eq!(rd(&r, regs::STATUS), 0);
    assert_eq!(rd(&r, regs::INTERRUPT_STATUS), 0);
    assert_eq!(r.features(), None);
    // Selectors back to 0: queue 0 and the low feature word.
    assert_eq!(rd(&r, regs::QUEUE_NUM_MAX), 256);
    assert_eq!(rd(&r, regs::QUEUE_READY), 0);
    assert_eq!(rd(&r, regs::DEVICE_FEATURES), r.offered_features() as u32);
    assert!(r.queues().iter().all(|q| !q.is_ready()));
    assert_eq!(r.queue(0).map(QueueState::size), Some(256));
}

#[test]
fn shared_memory_regions_read_as_absent_4_2_2() {
    let mut r = regs();
    w(&mut r, regs::SHM_SEL, 0).unwrap();
    for off in [
        regs::SHM_LEN_LOW,
        regs::SHM_LEN_HIGH,
        regs::SHM_BASE_LOW,
        regs::SHM_BASE_HIGH,
    ] {
        assert_eq!(rd(&r, off), u32::MAX);
    }
}

#[test]
fn queue_reset_needs_ring_reset_2_6_1() {
    let mut r = live(V1);
    assert_eq!(
        w(&mut r, regs::QUEUE_RESET, 1),
        Err(MmioError::RingResetNotNegotiated)
    );
    let mut dev = TestDevice::net();
    dev.features |= TransportFeatures::RING_RESET.bits();
    let mut r: Regs = MmioRegisters::new(dev).unwrap();
    to_features_ok(&mut r, V1 | TransportFeatures::RING_RESET.bits());
    setup_queue(&mut r, 0, 64, 0x8000).unwrap();
    w(&mut r, regs::STATUS, A | D | F | O).unwrap();
    assert_eq!(
        w(&mut r, regs::QUEUE_RESET, 1),
        Ok(WriteOutcome::QueueReset { queue: 0 })
    );
    assert_eq!(rd(&r, regs::QUEUE_RESET), 0);
    assert_eq!(rd(&r, regs::QUEUE_READY), 0);
    // Re-enable after the reset (§2.6.1.2).
    assert_eq!(
        setup_queue(&mut r, 0, 32, 0x8000),
        Ok(WriteOutcome::QueueEnabled { queue: 0 })
    );
}

#[test]
fn too_many_queues_for_the_register_file() {
    assert_eq!(
        MmioRegisters::<TestDevice, 1>::new(TestDevice::net()).unwrap_err(),
        MmioError::TooManyQueues {
            queues: 2,
            capacity: 1
        }
    );
}

/// The device-side register file behind the driver's `RegisterAccess`,
/// with a log of every access it refused.
struct Bus {
    regs: RefCell<Regs>,
    errors: RefCell<Vec<MmioError>>,
    outcomes: RefCell<Vec<WriteOutcome>>,
    /// Bump the configuration generation on this many more
    /// `ConfigGeneration` reads.
    churn: Cell<u32>,
}

impl Bus {
    fn new(dev: TestDevice) -> Self {
        Bus {
            regs: RefCell::new(MmioRegisters::new(dev).unwrap()),
            errors: RefCell::new(Vec::new()),
            outcomes: RefCell::new(Vec::new()),
            churn: Cell::new(0),
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        if offset == regs::CONFIG_GENERATION && self.churn.get() > 0 {
            self.churn.set(self.churn.get() - 1);
            self.regs.borrow_mut().config_changed();
        }
        if let Err(e) = self.regs.borrow().read(offset, buf) {
            self.errors.borrow_mut().push(e);
        }
    }

    fn write(&self, offset: u64, buf: &[u8]) {
        match self.regs.borrow_mut().write(offset, buf) {
            Ok(WriteOutcome::Done) => {}
            Ok(o) => self.outcomes.borrow_mut().push(o),
            Err(e) => self.errors.borrow_mut().push(e),
        }
    }
}

impl RegisterAccess for Bus {
    fn read32(&self, offset: u64) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.write(offset, &value.to_le_bytes())
    }
    fn read16(&self, offset: u64) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    fn write16(&self, offset: u64, value: u16) {
        self.write(offset, &value.to_le_bytes())
    }
    fn read8(&self, offset: u64) -> u8 {
        let mut b = [0; 1];
        self.read(offset, &mut b);
        b[0]
    }
    fn write8(&self, offset: u64, value: u8) {
        self.write(offset, &[value])
    }
}

fn layout(size: u32, base: u64) -> QueueLayout {
    let g = GuestAddress;
    QueueLayout::new(
        QueueSize::new(size).unwrap(),
        g(base),
        g(base + 0x1000),
        g(base + 0x2000),
    )
    .unwrap()
}

#[test]
fn driver_init_sequence_against_the_register_file_3_1_1() {
    let bus = Bus::new(TestDevice::net());
    let mut drv = MmioDriver::probe(&bus).unwrap();
    assert_eq!(drv.version(), MmioVersion::Modern);
    assert_eq!(drv.device_type(), Some(crate::features::DeviceType::Net));
    assert_eq!(drv.vendor_id(), 0x1af4);
    // GUEST_ECN is offered but its requirement (GUEST_TSO4/6) is not: dropped.
    let wanted = (NetFeatures::MAC | NetFeatures::GUEST_ECN | NetFeatures::GUEST_CSUM).bits();
    let features = drv.begin_init(wanted).unwrap();
    let want = (NetFeatures::MAC | NetFeatures::GUEST_CSUM).bits() | V1;
    assert_eq!(features, want);
    assert_eq!(drv.status().bits(), (A | D | F) as u8);
    let (l0, l1) = (layout(256, 0x10_0000), layout(16, 0x20_0000));
    drv.setup_queue(0, &l0).unwrap();
    drv.setup_queue(1, &l1).unwrap();
    drv.finish_init().unwrap();
    assert_eq!(drv.status().bits(), (A | D | F | O) as u8);
    let activated = bus.regs.borrow().device().activated.clone();
    assert_eq!(activated, Some((want, std::vec![Some(l0), Some(l1)])));
    // Notify, interrupt, acknowledge.
    drv.notify(1);
    bus.regs.borrow_mut().raise_used_buffer();
    assert_eq!(drv.interrupt_status(), InterruptStatus::USED_BUFFER);
    drv.ack_interrupt(InterruptStatus::USED_BUFFER);
    assert!(!bus.regs.borrow().interrupt_asserted());
    // Config reads under the generation (§2.5.1).
    assert_eq!(drv.read_config_u8(1), Ok(0x11));
    assert_eq!(drv.read_config_u16(2), Ok(0x1312));
    assert_eq!(drv.read_config_u32(4), Ok(0x1716_1514));
    assert_eq!(drv.read_config_u64(8), Ok(0x1f1e_1d1c_1b1a_1918));
    let mut buf = [0u8; 3];
    drv.read_config_bytes(5, &mut buf).unwrap();
    assert_eq!(buf, [0x15, 0x16, 0x17]);
    drv.write_config_u16(0, 0xbeef).unwrap();
    assert_eq!(drv.read_config_u16(0), Ok(0xbeef));
    assert_eq!(
        drv.read_config_u16(1),
        Err(DriverError::ConfigAccess { offset: 1, size: 2 })
    );
    // The driver broke no rule the device checks.
    assert_eq!(*bus.errors.borrow(), []);
    assert!(
        bus.outcomes
            .borrow()
            .contains(&WriteOutcome::Notify { queue: 1, value: 1 })
    );
    assert!(bus.outcomes.borrow().contains(&WriteOutcome::Activated));
}

#[test]
fn driver_sees_features_ok_refused_for_a_feature_not_offered_3_1_1() {
    let bus = Bus::new(TestDevice::net());
    let mut drv = MmioDriver::probe(&bus).unwrap();
    drv.reset().unwrap();
    drv.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
    drv.write_driver_features(V1 | NetFeatures::MRG_RXBUF.bits());
    drv.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK);
    assert!(!drv.status().contains(DeviceStatus::FEATURES_OK));
    assert!(matches!(
        bus.errors.borrow().last(),
        Some(MmioError::Features(FeatureError::NotOffered {
            bit: 15,
            ..
        }))
    ));
    // Through the init walk: the device refuses, the driver reports it and
    // sets FAILED.
    let mut dev = TestDevice::net();
    dev.acceptable = false;
    let bus = Bus::new(dev);
    let mut drv = MmioDriver::probe(&bus).unwrap();
    assert_eq!(
        drv.begin_init(u64::MAX),
        Err(DriverError::Status(StatusError::FeaturesRefused))
    );
    assert_eq!(drv.status().bits(), (A | D) as u8 | 0x80);
}

#[test]
fn driver_queue_errors_4_2_3_2() {
    let bus = Bus::new(TestDevice::net());
    let mut drv = MmioDriver::probe(&bus).unwrap();
    drv.begin_init(0).unwrap();
    assert_eq!(
        drv.setup_queue(1, &layout(32, 0x10_0000)),
        Err(DriverError::QueueTooLarge {
            queue: 1,
            size: 32,
            max: 16
        })
    );
    assert_eq!(
        drv.setup_queue(2, &layout(8, 0x10_0000)),
        Err(DriverError::QueueUnavailable { queue: 2 })
    );
    drv.setup_queue(0, &layout(8, 0x10_0000)).unwrap();
    assert_eq!(
        drv.setup_queue(0, &layout(8, 0x10_0000)),
        Err(DriverError::QueueInUse { queue: 0 })
    );
    drv.disable_queue(0).unwrap();
    drv.setup_queue(0, &layout(8, 0x10_0000)).unwrap();
    assert_eq!(*bus.errors.borrow(), []);
}

#[test]
fn config_generation_retry_is_bounded_2_5_1() {
    let bus = Bus::new(TestDevice::net());
    let drv = MmioDriver::probe(&bus).unwrap();
    bus.churn.set(5);
    assert_eq!(drv.read_config_u32(0), Ok(0x1312_1110));
    bus.churn.set(u32::MAX);
    assert_eq!(drv.read_config_u32(0), Err(DriverError::ConfigUnstable));
    let mut buf = [0u8; 2];
    assert_eq!(
        drv.read_config_bytes(0, &mut buf),
        Err(DriverError::ConfigUnstable)
    );
}

/// A scripted register window: preset values, writes echo on read, and a
/// log of writes. Stands in for devices the register file does not model
/// (bad identity, legacy version 1).
#[derive(Debug, Default)]
struct Fake {
    values: RefCell<BTreeMap<u64, u32>>,
    writes: RefCell<Vec<(u64, u32)>>,
}

impl Fake {
    fn new(version: u32, id: u32) -> Self {
        let f = Fake::default();
        f.values.borrow_mut().extend([
            (regs::MAGIC_VALUE, regs::MAGIC),
            (regs::VERSION, version),
            (regs::DEVICE_ID, id),
            (regs::QUEUE_NUM_MAX, 256),
            // Block SIZE_MAX in both words (bit 33 high is never asked for).
            (regs::DEVICE_FEATURES, 2),
        ]);
        f
    }

    fn writes_to(&self, offset: u64) -> Vec<u32> {
        let w = self.writes.borrow();
        w.iter()
            .filter(|(o, _)| *o == offset)
            .map(|(_, v)| *v)
            .collect()
    }
}

impl RegisterAccess for Fake {
    fn read32(&self, offset: u64) -> u32 {
        self.values.borrow().get(&offset).copied().unwrap_or(0)
    }
    fn write32(&self, offset: u64, value: u32) {
        self.writes.borrow_mut().push((offset, value));
        self.values.borrow_mut().insert(offset, value);
    }
    fn read16(&self, offset: u64) -> u16 {
        self.read32(offset) as u16
    }
    fn write16(&self, offset: u64, value: u16) {
        self.write32(offset, value.into())
    }
    fn read8(&self, offset: u64) -> u8 {
        self.read32(offset) as u8
    }
    fn write8(&self, offset: u64, value: u8) {
        self.write32(offset, value.into())
    }
}

#[test]
fn probe_checks_magic_version_and_device_id_4_2_3_1_1() {
    let f = Fake::new(2, 2);
    f.values.borrow_mut().insert(regs::MAGIC_VALUE, 0x1234);
    assert_eq!(
        MmioDriver::probe(&f).unwrap_err(),
        DriverError::BadMagic { found: 0x1234 }
    );
    assert_eq!(
        MmioDriver::probe(&Fake::new(3, 2)).unwrap_err(),
        DriverError::UnsupportedVersion { found: 3 }
    );
    let f = Fake::new(2, 0);
    assert_eq!(MmioDriver::probe(&f).unwrap_err(), DriverError::NoDevice);
    // Nothing but the three identity registers was touched.
    assert!(f.writes.borrow().is_empty());
    let f = Fake::new(1, 2);
    assert_eq!(
        MmioDriver::probe(&f).unwrap().version(),
        MmioVersion::Legacy
    );
}

#[test]
fn legacy_v1_init_and_queue_setup_math_4_2_4() {
    let f = Fake::new(1, 2);
    let mut drv = MmioDriver::probe(&f).unwrap();
    assert!(!drv.is_modern());
    // VIRTIO_F_ANY_LAYOUT offered: accepted on legacy without being asked
    // for (§6.3).
    f.values
        .borrow_mut()
        .insert(regs::DEVICE_FEATURES, 2 | 1 << 27);
    assert_eq!(drv.begin_init(0), Ok(1 << 27));
    f.values.borrow_mut().insert(regs::DEVICE_FEATURES, 2);
    f.writes.borrow_mut().clear();
    // No FEATURES_OK step, no VERSION_1 (§3.1.2).
    let size_max = crate::features::BlkFeatures::SIZE_MAX.bits();
    assert_eq!(drv.begin_init(size_max | V1), Ok(size_max));
    assert_eq!(f.writes_to(regs::STATUS), [0, A, A | D]);
    assert_eq!(f.writes_to(regs::DRIVER_FEATURES), [2, 0]);
    let size = QueueSize::new(256).unwrap();
    let l = drv.legacy_layout(size, GuestAddress(0x2_0000)).unwrap();
    // 256 descriptors = 4096 bytes; avail 6 + 512 bytes; used at the next page.
    assert_eq!(l.avail_ring(), GuestAddress(0x2_1000));
    assert_eq!(l.used_ring(), GuestAddress(0x2_2000));
    drv.setup_queue(0, &l).unwrap();
    assert_eq!(f.writes_to(regs::GUEST_PAGE_SIZE), [4096]);
    assert_eq!(f.writes_to(regs::QUEUE_NUM), [256]);
    assert_eq!(f.writes_to(regs::QUEUE_ALIGN), [4096]);
    assert_eq!(f.writes_to(regs::QUEUE_PFN), [0x20]);
    // The queue is now in use (QueuePFN != 0).
    assert_eq!(
        drv.setup_queue(0, &l),
        Err(DriverError::QueueInUse { queue: 0 })
    );
    drv.disable_queue(0).unwrap();
    // Not page aligned, or not the legacy layout: refused before any write.
    let n = f.writes.borrow().len();
    let off = drv.legacy_layout(size, GuestAddress(0x2_0800)).unwrap();
    assert_eq!(
        drv.setup_queue(0, &off),
        Err(DriverError::LegacyLayout { queue: 0 })
    );
    let g = GuestAddress;
    let split = QueueLayout::new(size, g(0x2_0000), g(0x2_1000), g(0x2_4000)).unwrap();
    assert_eq!(
        drv.setup_queue(0, &split),
        Err(DriverError::LegacyLayout { queue: 0 })
    );
    let high = drv.legacy_layout(size, GuestAddress(1 << 44)).unwrap();
    assert_eq!(
        drv.setup_queue(0, &high),
        Err(DriverError::LegacyAddress {
            queue: 0,
            addr: GuestAddress(1 << 44)
        })
    );
    // Only the QueueSel of `queue_max_size` was written.
    assert!(
        f.writes.borrow()[n..]
            .iter()
            .all(|(o, _)| *o == regs::QUEUE_SEL)
    );
    // A 16 KiB page: the used ring moves to the next 16 KiB boundary.
    drv.set_page_size(0x4000).unwrap();
    assert_eq!(
        drv.set_page_size(3000),
        Err(DriverError::BadPageSize { size: 3000 })
    );
    let l = drv.legacy_layout(size, GuestAddress(0x4_0000)).unwrap();
    assert_eq!(l.used_ring(), GuestAddress(0x4_4000));
    drv.setup_queue(0, &l).unwrap();
    assert_eq!(f.writes_to(regs::QUEUE_PFN).last(), Some(&0x10));
    assert_eq!(f.writes_to(regs::QUEUE_ALIGN).last(), Some(&0x4000));
    drv.finish_init().unwrap();
    assert_eq!(f.writes_to(regs::STATUS).last(), Some(&(A | D | O)));
    // Legacy devices have no ConfigGeneration: two equal reads instead.
    f.values.borrow_mut().insert(regs::CONFIG, 0xabcd);
    assert_eq!(drv.read_config_u32(0), Ok(0xabcd));
}

#[test]
fn version_2_device_without_version_1_is_refused_6_1() {
    let f = Fake::new(2, 2);
    let mut drv = MmioDriver::probe(&f).unwrap();
    assert_eq!(
        drv.begin_init(u64::MAX),
        Err(DriverError::Version1NotOffered)
    );
    assert_eq!(f.writes_to(regs::STATUS).last(), Some(&(A | D | 0x80)));
}
