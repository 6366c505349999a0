//! Device cleanup, driver side (§3.3.1): a driver that removes memory it
//! exposed to the device (frees a ring, takes a buffer back) must first
//! make sure no queue is live, by a reset (or, on virtio-mmio, by writing
//! 0 to `QueueReady`, §4.2.2.2). The harness tells the watch of each
//! removal its DMA layer sees, with what the device could still touch.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use super::{Seen, judge, keep};
use crate::{Check, Record};

/// §3.3.1: no exposed buffer removed while its queue is live.
pub const REMOVE_AFTER_RESET: &str = "driver:general/device-cleanup#2";

/// Every statement the watch judges.
pub const STATEMENTS: &[&str] = &[REMOVE_AFTER_RESET];

/// The cleanup watch as a [`Check`] for the catalogue (fed by the
/// harness's DMA layer).
pub const WATCH: Check = Check {
    name: "driver-cleanup-watch",
    statements: STATEMENTS,
    run: |_| {},
};

/// Memory the device may still access: a live queue's ring area or a
/// chain the driver exposed on it and the device has not returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveRange {
    /// Guest physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// The queue.
    pub queue: u16,
    /// What it is (`descriptor table`, `exposed buffer`, ...).
    pub what: &'static str,
}

/// What the driver removed, judged against what was live then.
#[derive(Clone, Debug, Default)]
pub struct CleanupWatch {
    seen: BTreeMap<&'static str, Seen>,
    /// A queue was live at some point.
    been_live: bool,
}

impl CleanupWatch {
    /// Notes that queues went live: only a removal after that is about
    /// memory the device had.
    pub fn went_live(&mut self) {
        self.been_live = true;
    }

    /// The driver is removing `len` bytes at `addr` (giving DMA memory
    /// back, ending a buffer's sharing) while `live` is what the device
    /// may still access. With nothing live, once something was, the
    /// removal keeps the statement; one that overlaps a live range breaks
    /// it; any other (memory the device never had, or a removal before
    /// any queue went live) is not judged.
    pub fn removing(&mut self, addr: u64, len: u64, live: &[LiveRange]) {
        if live.is_empty() {
            if self.been_live {
                keep(&mut self.seen, REMOVE_AFTER_RESET);
            }
            return;
        }
        let end = addr.saturating_add(len);
        if let Some(r) = live
            .iter()
            .find(|r| r.addr < end && addr < r.addr.saturating_add(r.len))
        {
            judge(&mut self.seen, REMOVE_AFTER_RESET, false, || {
                format!(
                    "the driver removed {len} bytes at {addr:#x}, which hold queue {}'s {} ({} bytes at {:#x}), while the queue was live (no reset)",
                    r.queue, r.what, r.len, r.addr
                )
            });
        }
    }

    /// The watch's records.
    pub fn records(&self) -> Vec<Record> {
        super::records_of(STATEMENTS, WATCH.name, &self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    fn outcome(w: &CleanupWatch) -> Outcome {
        w.records()[0].outcome.clone()
    }

    /// §3.3.1: freeing a live queue's ring breaks the statement; freeing
    /// unrelated memory while live, or anything before a queue ever went
    /// live, is not judged; freeing after the reset (nothing live) keeps
    /// it.
    #[test]
    fn section_3_3_1_no_exposed_buffer_removed_while_live() {
        let ring = LiveRange {
            addr: 0x4000,
            len: 0x1000,
            queue: 0,
            what: "descriptor table",
        };
        let mut w = CleanupWatch::default();
        w.removing(0, 0x1000, &[]);
        assert!(matches!(outcome(&w), Outcome::NotObservable(_)));
        w.went_live();
        w.removing(0x9000, 0x1000, core::slice::from_ref(&ring));
        assert!(matches!(outcome(&w), Outcome::NotObservable(_)));
        w.removing(0, 0x1000, &[]);
        assert_eq!(outcome(&w), Outcome::Pass);
        w.removing(0x4800, 16, &[ring]);
        match outcome(&w) {
            Outcome::Fail(why) => assert!(why.contains("queue 0's descriptor table"), "{why}"),
            o => panic!("{o:?}"),
        }
    }
}
