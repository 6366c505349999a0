//! The order of a driver's publication (§2.7.13.3.1): the ring entry and
//! the descriptors it names must be in memory before the available index
//! that exposes them, so the driver needs a barrier before the index
//! update. Seen from a second CPU: a thread that follows the available
//! index and, for each entry it exposes, reads the entry twice a moment
//! apart. A change in between (with the chain it exposed not yet
//! returned, so the driver cannot lawfully have written the slot again)
//! means the index was visible before the entry it exposes. The
//! race is narrow: a pass means no publication out of order was seen,
//! not that none can happen. The harness runs the thread; this module
//! judges what it read.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use super::{Seen, judge};
use crate::{Check, Record};

/// §2.7.13.3.1: a barrier before the idx update.
pub const BARRIER_BEFORE_IDX: &str =
    "driver:basic/virtqueues/supplying-buffers-to-the-device/updating-idx#1";

/// Every statement the watch judges.
pub const STATEMENTS: &[&str] = &[BARRIER_BEFORE_IDX];

/// The publication-order watch as a [`Check`] for the catalogue (fed by a
/// thread of the harness).
pub const WATCH: Check = Check {
    name: "driver-publish-order",
    statements: STATEMENTS,
    run: |_| {},
};

/// Two reads of one newly exposed ring entry, a moment apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The queue.
    pub queue: u16,
    /// The available index the entry sits at (before wrapping).
    pub slot: u16,
    /// The entry (a head), first read.
    pub first: u16,
    /// The same entry, read again.
    pub second: u16,
    /// Whether the slot could not lawfully change while it was read: the
    /// used index had not passed it (with at most a ring of chains
    /// outstanding, the driver writes the slot again only after), the
    /// driver was within half a ring of it and the reads were close
    /// together. Only then the probe counts.
    pub fresh: bool,
}

/// What the watch concluded from its probes.
#[derive(Clone, Debug, Default)]
pub struct PublishWatch {
    seen: BTreeMap<&'static str, Seen>,
    /// Probes that counted.
    pub counted: u64,
}

impl PublishWatch {
    /// Judges one probe.
    pub fn probe(&mut self, p: &Probe) {
        if !p.fresh {
            return;
        }
        self.counted += 1;
        judge(
            &mut self.seen,
            BARRIER_BEFORE_IDX,
            p.first == p.second,
            || {
                format!(
                    "queue {}: available index {} was visible before the entry it exposes (read {} then {})",
                    p.queue,
                    p.slot.wrapping_add(1),
                    p.first,
                    p.second
                )
            },
        );
    }

    /// The watch's records: not observable when no probe counted.
    pub fn records(&self) -> Vec<Record> {
        let mut out = super::records_of(STATEMENTS, WATCH.name, &self.seen);
        if self.counted == 0 {
            for r in &mut out {
                r.outcome = crate::Outcome::NotObservable(
                    "the probing thread caught no publication in time (the driver's run was too short or ran on the same CPU)".into(),
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    /// §2.7.13.3.1: a probe whose second read differs breaks the
    /// statement; one that could lawfully change (not fresh) does not
    /// count; steady reads keep it.
    #[test]
    fn section_2_7_13_3_1_an_entry_written_after_its_index_is_caught() {
        let mut w = PublishWatch::default();
        let p = Probe {
            queue: 0,
            slot: 3,
            first: 2,
            second: 2,
            fresh: true,
        };
        w.probe(&p);
        assert_eq!(w.records()[0].outcome, Outcome::Pass);
        w.probe(&Probe {
            first: 0,
            fresh: false,
            ..p
        });
        assert_eq!(w.records()[0].outcome, Outcome::Pass);
        w.probe(&Probe { first: 0, ..p });
        assert!(matches!(w.records()[0].outcome, Outcome::Fail(_)));
        assert_eq!(w.counted, 2);
    }
}
