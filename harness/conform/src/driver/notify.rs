//! The notification half of the driver watch (§2.7.10, §2.7.7): whether
//! the driver notifies the device whenever the device's suppression state
//! asks for it, and only then, and whether it copes with used-buffer
//! notifications that carry nothing.
//!
//! The device's state (the used ring's `flags`, and `avail_event` with
//! VIRTIO_F_EVENT_IDX) changes only while the device acts. So the entries
//! the driver publishes between two of the device's steps were all
//! published under the state the device left after the first one, and the
//! watch settles them at the start of the next step: owed a notification
//! or not. A notification pays what is owed on its queue; at the end of
//! the session nothing may still be owed. That is exact where the device
//! acts only inside the driver's own steps, i.e. in process; behind
//! vhost-user the backend runs on its own thread and the kicks of a guest
//! reach it through an eventfd that merges them, so these statements are
//! not observable there.
//!
//! Provoking (opt-in): after each step the device's ring also carries what
//! a driver must ignore: without VIRTIO_F_EVENT_IDX an `avail_event` that
//! would suppress the next notification (§2.7.10: the driver MUST ignore
//! it), with it the used ring's NO_NOTIFY bit (the driver MUST ignore the
//! lower bit of flags; the device writing it breaks the device's own rule,
//! on purpose: no conforming device can test this driver rule); and now
//! and then a used-buffer notification with nothing used (§2.7.10: the
//! driver MUST handle spurious notifications).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, vring_need_event};

use super::{Seen, judge, keep};
use crate::{Check, Memory, Outcome, Record};

const IGNORE_AVAIL_EVENT: &str =
    "driver:basic/virtqueues/available-buffer-notification-suppression#2";
const QUIET_WHEN_FLAGGED: &str =
    "driver:basic/virtqueues/available-buffer-notification-suppression#3";
const NOTIFY_WHEN_FLAGS_0: &str =
    "driver:basic/virtqueues/available-buffer-notification-suppression#4";
const IGNORE_FLAG_BIT: &str = "driver:basic/virtqueues/available-buffer-notification-suppression#5";
const NOTIFY_AT_EVENT: &str = "driver:basic/virtqueues/available-buffer-notification-suppression#6";
const QUIET_OTHERWISE: &str = "driver:basic/virtqueues/available-buffer-notification-suppression#7";
/// The driver copes with a used-buffer notification that carries nothing.
pub const SPURIOUS: &str = "driver:basic/virtqueues/used-buffer-notification-suppression#3";

/// Every statement the notification watch judges.
pub const STATEMENTS: &[&str] = &[
    IGNORE_AVAIL_EVENT,
    QUIET_WHEN_FLAGGED,
    NOTIFY_WHEN_FLAGS_0,
    IGNORE_FLAG_BIT,
    NOTIFY_AT_EVENT,
    QUIET_OTHERWISE,
    SPURIOUS,
];

/// The notification watch as a [`Check`] for the catalogue (fed by a
/// device-side wrapper, not run against a bus).
pub const WATCH: Check = Check {
    name: "driver-notification-watch",
    statements: STATEMENTS,
    run: |_| {},
};

/// VIRTQ_USED_F_NO_NOTIFY (§2.7.10).
const NO_NOTIFY: u16 = 1;

/// How often a provoking device adds a spurious used-buffer notification:
/// every this many of its steps that had none.
const SPURIOUS_EVERY: u32 = 2;

/// Entries published under a state that asked for a notification, with
/// none sent yet.
#[derive(Clone, Copy, Debug)]
struct Owed {
    first: u16,
    end: u16,
    flags: u16,
    event: u16,
}

/// One queue as the watch follows it.
#[derive(Clone, Debug)]
struct Queue {
    layout: QueueLayout,
    /// The available index up to which the driver's entries are settled.
    settled: u16,
    /// The used ring's flags and `avail_event` since the device's last
    /// step, as the driver reads them.
    flags: u16,
    event: u16,
    owed: Option<Owed>,
    /// Entries published under a state that asked for no notification,
    /// since the last notification: first and end indices.
    quiet: Option<(u16, u16)>,
}

/// The notification watch on one driver.
#[derive(Clone, Debug, Default)]
pub struct NotifyWatch {
    event_idx: bool,
    provoke: bool,
    queues: BTreeMap<u16, Queue>,
    /// Steps since the last spurious notification.
    steps: u32,
    /// Spurious used-buffer notifications given.
    spurious: u32,
    seen: BTreeMap<&'static str, Seen>,
}

fn u16_at(mem: &dyn Memory, at: GuestAddress) -> Option<u16> {
    let mut b = [0u8; 2];
    mem.read(at, &mut b).ok()?;
    Some(u16::from_le_bytes(b))
}

impl NotifyWatch {
    /// A watch for a driver that negotiated VIRTIO_F_EVENT_IDX or not;
    /// `provoke` adds the decoys and spurious notifications.
    pub fn new(event_idx: bool, provoke: bool) -> Self {
        NotifyWatch {
            event_idx,
            provoke,
            ..NotifyWatch::default()
        }
    }

    /// Queue `index` went live with `layout`.
    pub fn queue(&mut self, mem: &dyn Memory, index: u16, layout: QueueLayout) {
        let settled = u16_at(mem, layout.avail_idx()).unwrap_or(0);
        self.queues.insert(
            index,
            Queue {
                layout,
                settled,
                flags: 0,
                event: 0,
                owed: None,
                quiet: None,
            },
        );
        self.after(mem, index);
    }

    /// Whether the state `flags`/`event` asks for a notification for
    /// entries `old..new`.
    fn wanted(&self, flags: u16, event: u16, new: u16, old: u16) -> bool {
        if self.event_idx {
            vring_need_event(event, new, old)
        } else {
            flags & NO_NOTIFY == 0
        }
    }

    /// The device is about to act: settles what the driver published on
    /// queue `index` since the device's last step.
    pub fn settle(&mut self, mem: &dyn Memory, index: u16) {
        let Some(q) = self.queues.get(&index) else {
            return;
        };
        let Some(now) = u16_at(mem, q.layout.avail_idx()) else {
            return;
        };
        if now == q.settled {
            return;
        }
        let old = q.settled;
        let wanted = self.wanted(q.flags, q.event, now, old);
        let Some(q) = self.queues.get_mut(&index) else {
            return;
        };
        q.settled = now;
        if let Some(o) = &mut q.owed {
            o.end = now;
        } else if wanted {
            q.owed = Some(Owed {
                first: old,
                end: now,
                flags: q.flags,
                event: q.event,
            });
        } else {
            q.quiet = Some((q.quiet.map_or(old, |(f, _)| f), now));
        }
    }

    /// The driver notified queue `index`.
    pub fn notified(&mut self, mem: &dyn Memory, index: u16) {
        self.settle(mem, index);
        let event_idx = self.event_idx;
        let provoke = self.provoke;
        let Some(q) = self.queues.get_mut(&index) else {
            return;
        };
        let quiet = q.quiet.take();
        if q.owed.take().is_some() {
            let (must, ignore) = if event_idx {
                (NOTIFY_AT_EVENT, IGNORE_FLAG_BIT)
            } else {
                (NOTIFY_WHEN_FLAGS_0, IGNORE_AVAIL_EVENT)
            };
            keep(&mut self.seen, must);
            if provoke {
                keep(&mut self.seen, ignore);
            }
        } else if let Some((first, end)) = quiet {
            let (flags, event) = (q.flags, q.event);
            let s = if event_idx {
                QUIET_OTHERWISE
            } else {
                QUIET_WHEN_FLAGGED
            };
            judge(&mut self.seen, s, false, || {
                if event_idx {
                    format!(
                        "queue {index}: a notification after available entries {first}..{end}, none at avail_event {event}"
                    )
                } else {
                    format!(
                        "queue {index}: a notification after available entries {first}..{end} published with flags {flags:#x}"
                    )
                }
            });
        }
    }

    /// The device's step is over: notes the state it left on queue
    /// `index` (after writing the decoys, when provoking).
    pub fn after(&mut self, mem: &dyn Memory, index: u16) {
        let event_idx = self.event_idx;
        let provoke = self.provoke;
        let Some(q) = self.queues.get_mut(&index) else {
            return;
        };
        let l = q.layout;
        if provoke {
            if event_idx {
                let flags = u16_at(mem, l.used_flags()).unwrap_or(0);
                let _ = mem.write(l.used_flags(), &(flags | NO_NOTIFY).to_le_bytes());
            } else {
                // Under VIRTIO_F_EVENT_IDX's rule this value would let the
                // driver publish a whole ring without a notification.
                let decoy = q.settled.wrapping_sub(1);
                let _ = mem.write(l.avail_event(), &decoy.to_le_bytes());
            }
        }
        q.flags = u16_at(mem, l.used_flags()).unwrap_or(0);
        q.event = u16_at(mem, l.avail_event()).unwrap_or(0);
        // The driver may read the suppression state any time after it
        // publishes: what is owed under the state before this step but not
        // under the state after it may rightly go unnotified, and a
        // notification for quiet entries the new state asks for is no
        // breach. Only what both states agree on is judged.
        let (flags, event) = (q.flags, q.event);
        let still = |first: u16, end: u16| {
            if event_idx {
                vring_need_event(event, end, first)
            } else {
                flags & NO_NOTIFY == 0
            }
        };
        if q.owed.is_some_and(|o| !still(o.first, o.end)) {
            q.owed = None;
        }
        if q.quiet.is_some_and(|(f, e)| still(f, e)) {
            q.quiet = None;
        }
    }

    /// Whether the device's step that had no used-buffer notification of
    /// its own should carry a spurious one (provoking only).
    pub fn spurious_now(&mut self) -> bool {
        if !self.provoke || self.queues.is_empty() {
            return false;
        }
        self.steps += 1;
        if self.steps < SPURIOUS_EVERY {
            return false;
        }
        self.steps = 0;
        self.spurious += 1;
        true
    }

    /// The session is over: what is still owed was never notified.
    pub fn due(&mut self, mem: &dyn Memory) {
        let indices: Vec<u16> = self.queues.keys().copied().collect();
        for index in indices {
            self.settle(mem, index);
            // Entries published under suppression and never followed by a
            // notification: the driver kept quiet.
            if self.queues.get(&index).is_some_and(|q| q.quiet.is_some()) {
                keep(
                    &mut self.seen,
                    if self.event_idx {
                        QUIET_OTHERWISE
                    } else {
                        QUIET_WHEN_FLAGGED
                    },
                );
            }
            let Some(o) = self.queues.get_mut(&index).and_then(|q| q.owed.take()) else {
                continue;
            };
            let provoke = self.provoke;
            let detail = |what: &str| -> String {
                format!(
                    "queue {index}: available entries {}..{} published with {what}, and no notification by the end of the session",
                    o.first, o.end
                )
            };
            if self.event_idx {
                let what = format!("avail_event {}", o.event);
                judge(&mut self.seen, NOTIFY_AT_EVENT, false, || detail(&what));
                if provoke && o.flags & NO_NOTIFY != 0 {
                    let what = format!("{what} and the NO_NOTIFY decoy set");
                    judge(&mut self.seen, IGNORE_FLAG_BIT, false, || detail(&what));
                }
            } else {
                let what = format!("flags {:#x}", o.flags);
                judge(&mut self.seen, NOTIFY_WHEN_FLAGS_0, false, || detail(&what));
                if provoke {
                    let what = format!("{what} and the decoy avail_event {}", o.event);
                    judge(&mut self.seen, IGNORE_AVAIL_EVENT, false, || detail(&what));
                }
            }
        }
    }

    /// The watch's records; statements that do not apply to what was
    /// negotiated, or that were not provoked, say so.
    pub fn records(&self) -> Vec<Record> {
        let mut out = super::records_of(STATEMENTS, WATCH.name, &self.seen);
        for r in &mut out {
            match r.statement {
                IGNORE_AVAIL_EVENT | QUIET_WHEN_FLAGGED | NOTIFY_WHEN_FLAGS_0 if self.event_idx => {
                    r.outcome = Outcome::NotApplicable("VIRTIO_F_EVENT_IDX was negotiated".into());
                }
                IGNORE_FLAG_BIT | NOTIFY_AT_EVENT | QUIET_OTHERWISE if !self.event_idx => {
                    r.outcome =
                        Outcome::NotApplicable("VIRTIO_F_EVENT_IDX was not negotiated".into());
                }
                IGNORE_AVAIL_EVENT | IGNORE_FLAG_BIT if !self.provoke => {
                    r.outcome =
                        Outcome::NotObservable("the device did not provoke it on this path".into());
                }
                _ => {}
            }
            if r.statement == SPURIOUS {
                r.outcome = if self.spurious == 0 {
                    Outcome::NotObservable("no spurious notification was given".into())
                } else {
                    // Whether the driver coped is its workload's outcome:
                    // the harness that ran it turns this into a failure if
                    // the workload failed.
                    Outcome::Pass
                };
            }
        }
        out
    }
}

/// Records for a path that cannot judge notifications: every statement
/// not observable, with `why`.
pub fn not_observable(why: &str) -> Vec<Record> {
    STATEMENTS
        .iter()
        .map(|s| Record {
            statement: s,
            check: WATCH.name,
            outcome: Outcome::NotObservable(why.into()),
        })
        .collect()
}

#[cfg(test)]
mod tests;
