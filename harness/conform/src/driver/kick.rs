//! The barrier before a driver reads the device's suppression field
//! (§2.7.13.4.1): after storing the available index the driver needs a
//! full barrier before it reads `used->flags` or `avail_event`, or it may
//! read a stale "do not notify" while the device, which just turned
//! notifications back on and found nothing new, goes to sleep. Neither side
//! sees the other's store, and the buffer waits with no notification.
//!
//! Seen from the device: a device thread that serves a queue by polling,
//! now and then turns notifications on (store, full fence, read the index:
//! the other half of the pairing), and when nothing new is there waits for
//! a notification while it keeps watching the index. A publication that
//! arrives after that read must be notified: with the barrier the
//! driver's read of the suppression field comes after its index store, so
//! either the device saw the index or the driver sees notifications on.
//! A publication seen while armed with no notification within a grace
//! period is a lost notification. The race is narrow: a pass means none
//! was lost in the waits that counted, not that none can be. The harness
//! runs the device thread; this module judges what it saw.

use alloc::format;
use alloc::vec::Vec;

use super::{Seen, judge};
use crate::{Check, Record};

/// §2.7.13.4.1: a barrier before reading flags or avail_event.
pub const BARRIER_BEFORE_SUPPRESSION_READ: &str =
    "driver:basic/virtqueues/supplying-buffers-to-the-device/notifying-the-device#1";

/// Every statement the watch judges.
pub const STATEMENTS: &[&str] = &[BARRIER_BEFORE_SUPPRESSION_READ];

/// The watch as a [`Check`] for the catalogue (fed by a device thread of
/// the harness).
pub const WATCH: Check = Check {
    name: "driver-notify-barrier",
    statements: STATEMENTS,
    run: |_| {},
};

/// How one armed wait of the device ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A notification came and the driver had published after the device
    /// armed: the publication was notified (counts).
    Notified,
    /// A notification came for nothing new (a late decision about an
    /// earlier publication): does not count.
    Early,
    /// The driver published after the device armed and no notification
    /// came within the grace period.
    Lost {
        /// The queue.
        queue: u16,
        /// The available index the device read after turning
        /// notifications on.
        armed_at: u16,
        /// The index it saw afterwards.
        seen: u16,
        /// The grace period, in milliseconds.
        grace_ms: u64,
        /// With `VIRTIO_F_EVENT_IDX` (the field was `avail_event`) or
        /// without (`flags`).
        event_idx: bool,
    },
    /// The session ended, or the ring could not be read, before the wait
    /// was decided (a publication still inside its grace period is not
    /// judged).
    Ended,
}

/// What the watch concluded from the device's armed waits.
#[derive(Clone, Debug, Default)]
pub struct KickWatch {
    seen: alloc::collections::BTreeMap<&'static str, Seen>,
    /// Waits that counted: a publication after the device armed, notified
    /// or lost.
    pub counted: u64,
    /// Armed waits in all.
    pub waits: u64,
    /// A loss before any armed wait was notified: the driver may never
    /// notify at all (a §2.7.10 matter), so the barrier is not judged.
    never_notified: bool,
    /// Losses not judged (before any notification).
    unjudged_losses: u32,
}

impl KickWatch {
    /// Judges one armed wait.
    pub fn wait(&mut self, w: &Wait) {
        self.waits += 1;
        match *w {
            Wait::Notified => {
                self.counted += 1;
                // A kept wait has no breach to describe.
                judge(
                    &mut self.seen,
                    BARRIER_BEFORE_SUPPRESSION_READ,
                    true,
                    alloc::string::String::new,
                );
            }
            Wait::Lost {
                queue,
                armed_at,
                seen,
                grace_ms,
                event_idx,
            } => {
                if self.counted == 0 {
                    self.never_notified = true;
                    self.unjudged_losses += 1;
                    return;
                }
                self.counted += 1;
                let field = if event_idx {
                    "avail_event"
                } else {
                    "used flags"
                };
                judge(
                    &mut self.seen,
                    BARRIER_BEFORE_SUPPRESSION_READ,
                    false,
                    || {
                        format!(
                            "queue {queue}: the device turned notifications on ({field}), fenced and read available index {armed_at}; the driver then published (index {seen} seen) and no notification came within {grace_ms} ms, though it had notified earlier armed waits: it read the field before its index store was visible, as a missing barrier allows"
                        )
                    },
                );
            }
            Wait::Early | Wait::Ended => {}
        }
    }

    /// Whether the device should go on arming: not after a judged loss
    /// (the first breach is what is reported; the driver should get its
    /// buffers without more 2-second waits), nor after a few losses from a
    /// driver that never notified.
    pub fn keep_arming(&self) -> bool {
        let judged = self
            .seen
            .get(BARRIER_BEFORE_SUPPRESSION_READ)
            .is_some_and(|s| s.broken.is_some());
        !judged && self.unjudged_losses < 3
    }

    /// The watch's records: not observable when no wait counted.
    pub fn records(&self) -> Vec<Record> {
        let mut out = super::records_of(STATEMENTS, WATCH.name, &self.seen);
        if self.counted == 0 && self.never_notified {
            for r in &mut out {
                r.outcome = crate::Outcome::NotObservable(
                    "the driver sent no notification in any armed wait: it never notifies (a §2.7.10 matter), so its barrier cannot be told".into(),
                );
            }
        } else if self.counted == 0 {
            for r in &mut out {
                r.outcome = crate::Outcome::NotObservable(
                    "the device never caught a publication while it waited for a notification (the driver's run was too short)".into(),
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

    /// §2.7.13.4.1: a publication after the device armed with no
    /// notification breaks the statement; notified ones keep it; early
    /// notifications and ended sessions do not count.
    #[test]
    fn section_2_7_13_4_1_a_lost_notification_is_caught() {
        let mut w = KickWatch::default();
        assert!(matches!(w.records()[0].outcome, Outcome::NotObservable(_)));
        w.wait(&Wait::Early);
        w.wait(&Wait::Ended);
        assert!(matches!(w.records()[0].outcome, Outcome::NotObservable(_)));
        w.wait(&Wait::Notified);
        assert_eq!(w.records()[0].outcome, Outcome::Pass);
        w.wait(&Wait::Lost {
            queue: 0,
            armed_at: 7,
            seen: 8,
            grace_ms: 2000,
            event_idx: true,
        });
        match &w.records()[0].outcome {
            Outcome::Fail(why) => assert!(why.contains("avail_event") && why.contains("index 7")),
            o => panic!("{o:?}"),
        }
        assert_eq!((w.counted, w.waits), (2, 4));
        assert!(!w.keep_arming());
    }
}
