//! The legacy interface, driver side (§2.2.3, §2.7.2, §3.1.2, §6.3): the
//! register accesses of a driver facing a virtio-mmio version 1 device
//! (§4.2.4), judged for what a transitional driver owes such a device.
//! The harness presents one of our modern devices through a legacy face
//! and feeds this watch what the driver does on that face.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::mmio::regs;
use virtio_core::status::DeviceStatus;

use crate::{Check, Outcome, Record};

/// The driver tells a legacy device by VIRTIO_F_VERSION_1 not offered.
pub const DETECT: &str = "desc:basic/feature-bits/legacy-interface-a-note-on-feature-bits#1";
/// Queue Size read from the device, the rings laid out by the formula.
pub const LAYOUT: &str = "desc:basic/virtqueues/legacy-interfaces-a-note-on-virtqueue-layout#1";
/// The initialisation of §3.1.1 without FEATURES_OK.
pub const INIT: &str =
    "desc:general/device-initialization/legacy-interface-device-initialization#1";
/// VIRTIO_F_ANY_LAYOUT accepted when offered.
pub const ANY_LAYOUT: &str = "desc:reserved-features/legacy-interface-reserved-feature-bits#2";
/// Framing without ANY_LAYOUT: the block request header.
pub const BLK_FRAMING: &str = "desc:blk/legacy-interface-framing-requirements#1";
/// A legacy SCSI command's `cmd` alone in a device-readable buffer
/// (§5.2.6.3).
pub const BLK_SCSI_CMD: &str = "desc:blk/device-operation/legacy-interface-device-operation#3";
/// Framing without ANY_LAYOUT: a SCSI command's 96-byte sense buffer and
/// its 16 bytes of `errors`, `data_len`, `sense_len` and `residual`, each
/// a device-writable descriptor of its own (§5.2.6.4).
pub const BLK_SCSI_FRAMING: &str = "desc:blk/legacy-interface-framing-requirements#2";
/// Framing without ANY_LAYOUT: network headers and control commands.
pub const NET_FRAMING: &[&str] = &[
    "desc:net/legacy-interface-framing-requirements#1",
    "desc:net/legacy-interface-framing-requirements#2",
    "desc:net/legacy-interface-framing-requirements#3",
    "desc:net/legacy-interface-framing-requirements#4",
    "desc:net/legacy-interface-framing-requirements#5",
];
/// Framing without ANY_LAYOUT: console control buffers.
pub const CONSOLE_FRAMING: &str = "desc:console/legacy-interface-framing-requirements#1";

/// Every statement the watch records.
pub const STATEMENTS: &[&str] = &[
    DETECT,
    LAYOUT,
    INIT,
    ANY_LAYOUT,
    BLK_FRAMING,
    BLK_SCSI_CMD,
    BLK_SCSI_FRAMING,
    NET_FRAMING[0],
    NET_FRAMING[1],
    NET_FRAMING[2],
    NET_FRAMING[3],
    NET_FRAMING[4],
    CONSOLE_FRAMING,
];

/// The watch as a [`Check`] for the catalogue (fed by the harness).
pub const WATCH: Check = Check {
    name: "driver-legacy-watch",
    statements: STATEMENTS,
    run: |_| {},
};

/// One queue as the driver set it up.
#[derive(Clone, Copy, Debug, Default)]
struct Queue {
    max_read: Option<u32>,
    num: Option<u32>,
}

/// What a driver does to a legacy device, judged as it happens.
#[derive(Debug)]
pub struct LegacyWatch {
    device_type: Option<DeviceType>,
    features_sel: u32,
    driver_sel: u32,
    offered: u64,
    accepted: u64,
    status: u8,
    went_live: bool,
    page_size: Option<u32>,
    align: Option<u32>,
    queue_sel: u32,
    queues: BTreeMap<u32, Queue>,
    /// ANY_LAYOUT was offered in some session that went live.
    any_offered: bool,
    /// ANY_LAYOUT was negotiated in the last session that went live.
    any_taken: bool,
    broken: BTreeMap<&'static str, String>,
    kept: Vec<&'static str>,
}

impl LegacyWatch {
    /// A watch on a driver of a legacy device of `device_type`.
    pub fn new(device_type: Option<DeviceType>) -> Self {
        LegacyWatch {
            device_type,
            features_sel: 0,
            driver_sel: 0,
            offered: 0,
            accepted: 0,
            status: 0,
            went_live: false,
            page_size: None,
            align: None,
            queue_sel: 0,
            queues: BTreeMap::new(),
            any_offered: false,
            any_taken: false,
            broken: BTreeMap::new(),
            kept: Vec::new(),
        }
    }

    fn judge(&mut self, s: &'static str, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            if !self.kept.contains(&s) {
                self.kept.push(s);
            }
        } else {
            self.broken.entry(s).or_insert_with(what);
        }
    }

    /// The driver read `value` from register `offset`.
    pub fn read(&mut self, offset: u64, value: u32) {
        match offset {
            regs::DEVICE_FEATURES => {
                let shift = match self.features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.offered = self.offered & !(0xffff_ffff << shift) | u64::from(value) << shift;
            }
            regs::QUEUE_NUM_MAX => {
                self.queues.entry(self.queue_sel).or_default().max_read = Some(value);
            }
            _ => {}
        }
    }

    /// The driver wrote `value` to register `offset`.
    pub fn write(&mut self, offset: u64, value: u32) {
        let v1 = TransportFeatures::VERSION_1.bits();
        match offset {
            regs::DEVICE_FEATURES_SEL => self.features_sel = value,
            regs::DRIVER_FEATURES_SEL => self.driver_sel = value,
            regs::DRIVER_FEATURES => {
                let shift = match self.driver_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                self.accepted = self.accepted & !(0xffff_ffff << shift) | u64::from(value) << shift;
                // §2.2.3: VERSION_1 is not offered, so the device is legacy
                // and the driver must not accept it.
                let accepted = self.accepted;
                self.judge(DETECT, accepted & v1 == 0, || {
                    format!("accepted {accepted:#x} (VIRTIO_F_VERSION_1) from a legacy device")
                });
            }
            regs::GUEST_PAGE_SIZE => self.page_size = Some(value),
            regs::QUEUE_ALIGN => self.align = Some(value),
            regs::QUEUE_SEL => self.queue_sel = value,
            regs::QUEUE_NUM => {
                let q = self.queue_sel;
                let e = self.queues.entry(q).or_default();
                e.num = Some(value);
                let max = e.max_read;
                // §2.7.2 legacy: Queue Size comes from the device.
                self.judge(
                    LAYOUT,
                    max.is_some_and(|m| value != 0 && value <= m),
                    || format!("queue {q}: QueueNum {value} with QueueNumMax read as {max:?}"),
                );
            }
            regs::QUEUE_PFN if value != 0 => {
                let q = self.queue_sel;
                let num = self.queues.get(&q).and_then(|e| e.num);
                let (page, align) = (self.page_size, self.align);
                let pow2 = |x: Option<u32>| x.is_some_and(u32::is_power_of_two);
                // §4.2.4: GuestPageSize before any QueuePFN, QueueAlign and
                // QueueNum for this queue, both powers of two; the rings
                // then sit where the formula of §2.7.2 puts them.
                self.judge(LAYOUT, num.is_some() && pow2(page) && pow2(align), || {
                    format!(
                        "queue {q}: QueuePFN {value:#x} with QueueNum {num:?}, GuestPageSize {page:?}, QueueAlign {align:?}"
                    )
                });
            }
            regs::STATUS => self.status_written(value as u8),
            _ => {}
        }
    }

    fn status_written(&mut self, s: u8) {
        if s == 0 {
            // A reset: the next session starts from nothing (what was
            // judged stays judged).
            self.status = 0;
            self.offered = 0;
            self.accepted = 0;
            self.page_size = None;
            self.align = None;
            self.queues.clear();
            return;
        }
        let fok = DeviceStatus::FEATURES_OK.bits();
        let ok = DeviceStatus::DRIVER_OK.bits();
        let status = self.status;
        // §3.1.2: no FEATURES_OK step on a legacy device.
        self.judge(INIT, s & fok == 0, || {
            format!("Status {s:#x} sets FEATURES_OK on a legacy device (after {status:#x})")
        });
        if s & DeviceStatus::FAILED.bits() == 0 && s & ok != 0 && status & ok == 0 {
            // The rest of §3.1.1 before DRIVER_OK: ACKNOWLEDGE and DRIVER
            // kept, the features written.
            let need = DeviceStatus::ACKNOWLEDGE.bits() | DeviceStatus::DRIVER.bits();
            let wrote = self.accepted != 0 || self.kept.contains(&DETECT);
            self.judge(INIT, s & need == need && status & need == need && wrote, || {
                format!(
                    "DRIVER_OK set with Status {s:#x} after {status:#x}, features written: {wrote}"
                )
            });
            // §6.3, judged per session: ANY_LAYOUT accepted if offered.
            let any = TransportFeatures::ANY_LAYOUT.bits();
            if self.offered & any != 0 {
                self.any_offered = true;
                let (offered, accepted) = (self.offered, self.accepted);
                self.judge(ANY_LAYOUT, accepted & any != 0, || {
                    format!(
                        "VIRTIO_F_ANY_LAYOUT offered ({offered:#x}), not accepted ({accepted:#x})"
                    )
                });
            }
            self.any_taken = self.accepted & any != 0;
            self.went_live = true;
        }
        self.status = s;
    }

    /// The records: each statement kept, broken, not applicable (framing
    /// rules with VIRTIO_F_ANY_LAYOUT negotiated, another device type) or
    /// not observable.
    pub fn records(&self) -> Vec<Record> {
        let (any_offered, any_taken) = (self.any_offered, self.any_taken);
        STATEMENTS
            .iter()
            .map(|s| {
                let framing_type = if *s == BLK_FRAMING {
                    Some(DeviceType::Blk)
                } else if NET_FRAMING.contains(s) {
                    Some(DeviceType::Net)
                } else if *s == CONSOLE_FRAMING {
                    Some(DeviceType::Console)
                } else {
                    None
                };
                let outcome = if let Some(t) = framing_type {
                    if self.device_type != Some(t) {
                        Outcome::NotApplicable(format!("not a {t:?} device"))
                    } else if any_taken {
                        Outcome::NotApplicable("VIRTIO_F_ANY_LAYOUT negotiated".into())
                    } else {
                        // The block framing is judged on the rings
                        // (`RingWatch::with_legacy_framing`), whose record
                        // replaces this one.
                        Outcome::NotObservable(
                            "framing without VIRTIO_F_ANY_LAYOUT is judged on the rings only for block requests".into(),
                        )
                    }
                } else if *s == ANY_LAYOUT && !any_offered {
                    if self.went_live {
                        Outcome::NotApplicable("VIRTIO_F_ANY_LAYOUT not offered".into())
                    } else {
                        Outcome::NotObservable("the driver never set DRIVER_OK".into())
                    }
                } else if let Some(w) = self.broken.get(s) {
                    Outcome::Fail(w.clone())
                } else if *s == DETECT && self.went_live {
                    // Live on a legacy device without VERSION_1 accepted
                    // (no DriverFeatures write names it).
                    Outcome::Pass
                } else if self.kept.contains(s) {
                    Outcome::Pass
                } else {
                    Outcome::NotObservable("the driver never did what this is about".into())
                };
                Record {
                    statement: s,
                    check: WATCH.name,
                    outcome,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(w: &LegacyWatch, s: &str) -> Outcome {
        w.records()
            .into_iter()
            .find(|r| r.statement == s)
            .map(|r| r.outcome)
            .unwrap()
    }

    /// A legacy driver as §3.1.2 and §4.2.4 describe it.
    fn good(w: &mut LegacyWatch, accept: u32) {
        w.write(regs::STATUS, 0);
        w.write(regs::STATUS, 1);
        w.write(regs::STATUS, 3);
        w.write(regs::DEVICE_FEATURES_SEL, 0);
        w.read(regs::DEVICE_FEATURES, 1 << 27 | 1 << 9);
        w.write(regs::DEVICE_FEATURES_SEL, 1);
        w.read(regs::DEVICE_FEATURES, 0);
        w.write(regs::DRIVER_FEATURES_SEL, 0);
        w.write(regs::DRIVER_FEATURES, accept);
        w.write(regs::GUEST_PAGE_SIZE, 4096);
        w.write(regs::QUEUE_SEL, 0);
        w.read(regs::QUEUE_NUM_MAX, 256);
        w.write(regs::QUEUE_NUM, 128);
        w.write(regs::QUEUE_ALIGN, 4096);
        w.write(regs::QUEUE_PFN, 0x20);
        w.write(regs::STATUS, 7);
    }

    /// §3.1.2, §2.7.2, §6.3: a driver that does it all right.
    #[test]
    fn section_3_1_2_a_legacy_initialisation_keeps_every_statement() {
        let mut w = LegacyWatch::new(Some(DeviceType::Blk));
        good(&mut w, 1 << 27 | 1 << 9);
        for s in [DETECT, LAYOUT, INIT, ANY_LAYOUT] {
            assert_eq!(outcome(&w, s), Outcome::Pass, "{s}");
        }
        assert!(matches!(
            outcome(&w, BLK_FRAMING),
            Outcome::NotApplicable(_)
        ));
        assert!(matches!(
            outcome(&w, NET_FRAMING[0]),
            Outcome::NotApplicable(_)
        ));
    }

    /// §6.3: VIRTIO_F_ANY_LAYOUT offered and not accepted.
    #[test]
    fn section_6_3_any_layout_refused_is_a_breach() {
        let mut w = LegacyWatch::new(Some(DeviceType::Blk));
        good(&mut w, 1 << 9);
        assert!(matches!(outcome(&w, ANY_LAYOUT), Outcome::Fail(_)));
        assert!(matches!(
            outcome(&w, BLK_FRAMING),
            Outcome::NotObservable(_)
        ));
    }

    /// §6.3 per session: a session that refused ANY_LAYOUT stays a breach
    /// after a reset and a session that accepted it; a reset forgets
    /// QueueNumMax and GuestPageSize.
    #[test]
    fn section_6_3_each_session_is_judged_on_its_own() {
        let mut w = LegacyWatch::new(Some(DeviceType::Blk));
        good(&mut w, 1 << 9);
        good(&mut w, 1 << 27 | 1 << 9);
        assert!(matches!(outcome(&w, ANY_LAYOUT), Outcome::Fail(_)));
        let mut w = LegacyWatch::new(Some(DeviceType::Blk));
        good(&mut w, 1 << 27);
        w.write(regs::STATUS, 0);
        w.write(regs::QUEUE_SEL, 0);
        w.write(regs::QUEUE_NUM, 128);
        assert!(matches!(outcome(&w, LAYOUT), Outcome::Fail(_)));
    }

    /// §3.1.2: FEATURES_OK on a legacy device; §2.2.3: VERSION_1 accepted;
    /// §2.7.2: a queue size the device never gave.
    #[test]
    fn section_3_1_2_modern_habits_on_a_legacy_device_are_breaches() {
        let mut w = LegacyWatch::new(Some(DeviceType::Rng));
        w.write(regs::STATUS, 1);
        w.write(regs::STATUS, 3);
        w.write(regs::DRIVER_FEATURES_SEL, 1);
        w.write(regs::DRIVER_FEATURES, 1);
        w.write(regs::STATUS, 0xb);
        w.write(regs::QUEUE_SEL, 0);
        w.write(regs::QUEUE_NUM, 128);
        w.write(regs::STATUS, 0xf);
        for s in [DETECT, LAYOUT, INIT] {
            assert!(matches!(outcome(&w, s), Outcome::Fail(_)), "{s}");
        }
    }
}
