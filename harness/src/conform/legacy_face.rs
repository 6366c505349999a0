//! A virtio-mmio version 1 face (§4.2.4) over one of our version 2
//! register files, as a transitional device's own logic would map the
//! legacy registers: `QueuePFN` becomes the three ring addresses of the
//! legacy layout (§2.7.2) and QueueReady; FEATURES_OK (with VERSION_1,
//! which the face never offers) is set for the driver before its first
//! queue register or DRIVER_OK; FEATURES_OK never shows in Status.
//!
//! It maps registers only: what a device puts in its buffers stays the
//! modern device's (a network device keeps the 12-byte header, so the face
//! is not used for network devices).
//!
//! Test equipment, not a device of ours: our devices are modern only. It
//! puts our driver in front of a legacy device in this process (so the
//! legacy driver watch can judge it), and gives the legacy device checks
//! a device whose shortcomings are known (it serves nothing before
//! DRIVER_OK; it can offer VIRTIO_F_ANY_LAYOUT or a feature it does not
//! honour), so a test can see them caught.

use std::collections::BTreeMap;

use virtio_core::memory::GuestAddress;
use virtio_core::mmio::driver::RegisterAccess;
use virtio_core::mmio::regs;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_core::status::DeviceStatus;

/// VIRTIO_F_ANY_LAYOUT (§6.3), in the low feature word.
pub const ANY_LAYOUT: u32 = 1 << 27;

/// What the driver set up on the face.
#[derive(Debug, Default)]
pub struct Face {
    /// Offer VIRTIO_F_ANY_LAYOUT (§6.3 says a transitional device must).
    pub any_layout: bool,
    /// Low-word feature bits offered on top of the device's, which it does
    /// not honour (a test's provocation).
    pub extra: u32,
    page: u32,
    align: u32,
    sel: u32,
    num: BTreeMap<u32, u32>,
    pfn: BTreeMap<u32, u32>,
    features_sel: u32,
    driver_sel: u32,
    accepted: [u32; 2],
    /// The Status the driver last wrote.
    status: u32,
    features_ok: bool,
}

impl Face {
    /// A face offering VIRTIO_F_ANY_LAYOUT if `any_layout`.
    pub fn new(any_layout: bool) -> Self {
        Face {
            any_layout,
            ..Face::default()
        }
    }

    /// What the driver reads from the 32-bit register at `offset`, the
    /// modern register file being `raw`.
    pub fn read(&mut self, raw: &dyn RegisterAccess, offset: u64) -> u32 {
        match offset {
            regs::VERSION => 1,
            regs::DEVICE_FEATURES => match self.features_sel {
                0 => {
                    let any = if self.any_layout { ANY_LAYOUT } else { 0 };
                    raw.read32(offset) | any | self.extra
                }
                _ => 0,
            },
            regs::QUEUE_PFN => self.pfn.get(&self.sel).copied().unwrap_or(0),
            regs::STATUS => raw.read32(offset) & !u32::from(DeviceStatus::FEATURES_OK.bits()),
            _ => raw.read32(offset),
        }
    }

    /// The driver writes `v` to the 32-bit register at `offset`.
    pub fn write(&mut self, raw: &dyn RegisterAccess, offset: u64, v: u32) {
        match offset {
            regs::GUEST_PAGE_SIZE => self.page = v,
            regs::QUEUE_ALIGN => self.align = v,
            regs::DRIVER_FEATURES_SEL => self.driver_sel = v,
            regs::DRIVER_FEATURES => {
                if let Some(w) = self.accepted.get_mut(self.driver_sel as usize) {
                    *w = v;
                }
            }
            regs::DEVICE_FEATURES_SEL => {
                self.features_sel = v;
                raw.write32(offset, v);
            }
            regs::QUEUE_SEL => {
                self.sel = v;
                raw.write32(offset, v);
            }
            regs::QUEUE_NUM => {
                self.features_ok(raw);
                self.num.insert(self.sel, v);
                raw.write32(offset, v);
            }
            regs::QUEUE_PFN => {
                self.features_ok(raw);
                self.pfn.insert(self.sel, v);
                let num = self.num.get(&self.sel).copied().unwrap_or(0);
                let layout = QueueSize::new(num).ok().and_then(|size| {
                    // No GuestPageSize written: no address either.
                    if self.page == 0 {
                        return None;
                    }
                    let base = u64::from(v).checked_mul(u64::from(self.page))?;
                    QueueLayout::legacy(size, GuestAddress(base), u64::from(self.align)).ok()
                });
                match layout {
                    Some(l) if v != 0 => {
                        for (low, a) in [
                            (regs::QUEUE_DESC_LOW, l.desc_table()),
                            (regs::QUEUE_DRIVER_LOW, l.avail_ring()),
                            (regs::QUEUE_DEVICE_LOW, l.used_ring()),
                        ] {
                            raw.write32(low, a.0 as u32);
                            raw.write32(low + 4, (a.0 >> 32) as u32);
                        }
                        raw.write32(regs::QUEUE_READY, 1);
                    }
                    // QueuePFN 0, or a layout the device cannot use: the
                    // queue is not in use.
                    _ => raw.write32(regs::QUEUE_READY, 0),
                }
            }
            regs::STATUS => {
                self.status = v;
                if v == 0 {
                    let keep = (self.any_layout, self.extra);
                    *self = Face::default();
                    (self.any_layout, self.extra) = keep;
                    raw.write32(offset, 0);
                    return;
                }
                if v & u32::from(DeviceStatus::DRIVER_OK.bits()) != 0 {
                    self.features_ok(raw);
                }
                let fok = if self.features_ok {
                    u32::from(DeviceStatus::FEATURES_OK.bits())
                } else {
                    0
                };
                raw.write32(offset, v | fok);
            }
            _ => raw.write32(offset, v),
        }
    }

    /// Once the driver has set DRIVER: its features (with VERSION_1,
    /// without what only the face offers) and FEATURES_OK.
    fn features_ok(&mut self, raw: &dyn RegisterAccess) {
        if self.features_ok || self.status & u32::from(DeviceStatus::DRIVER.bits()) == 0 {
            return;
        }
        raw.write32(regs::DRIVER_FEATURES_SEL, 0);
        raw.write32(
            regs::DRIVER_FEATURES,
            self.accepted[0] & !(ANY_LAYOUT | self.extra),
        );
        raw.write32(regs::DRIVER_FEATURES_SEL, 1);
        raw.write32(regs::DRIVER_FEATURES, self.accepted[1] | 1);
        let fok = u32::from(DeviceStatus::FEATURES_OK.bits());
        let base = self.status & !u32::from(DeviceStatus::DRIVER_OK.bits());
        raw.write32(regs::STATUS, base | fok);
        self.features_ok = true;
    }
}
