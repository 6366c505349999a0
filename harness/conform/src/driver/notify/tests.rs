use super::*;
use crate::driver::test_ram::{Ram, layout};

fn setup(event_idx: bool, provoke: bool) -> (Ram, QueueLayout, NotifyWatch) {
    let ram = Ram::new(0x10000);
    let l = layout(8, 0x1000);
    let mut w = NotifyWatch::new(event_idx, provoke);
    w.queue(&ram, 0, l);
    (ram, l, w)
}

/// The driver publishes available index `idx`.
fn publish(ram: &Ram, l: &QueueLayout, idx: u16) {
    ram.store_u16_release(l.avail_idx(), idx).unwrap();
}

/// The device's step after a notification, leaving `avail_event` at
/// `event` (it took everything).
fn device_step(ram: &Ram, l: &QueueLayout, w: &mut NotifyWatch, event: Option<u16>) {
    if let Some(e) = event {
        ram.write(l.avail_event(), &e.to_le_bytes()).unwrap();
    }
    w.after(ram, 0);
}

fn outcome(w: &NotifyWatch, s: &str) -> Outcome {
    w.records()
        .into_iter()
        .find(|r| r.statement == s)
        .unwrap()
        .outcome
}

#[test]
fn crossed_is_vring_need_event() {
    assert!(vring_need_event(0, 1, 0));
    assert!(!vring_need_event(1, 1, 0));
    assert!(vring_need_event(5, 8, 3));
    assert!(!vring_need_event(8, 8, 3));
    // Across the wrap of the 16-bit index.
    assert!(vring_need_event(0xffff, 2, 0xfffe));
    assert!(!vring_need_event(0xfffd, 2, 0xfffe));
}

/// §2.7.10: without VIRTIO_F_EVENT_IDX, flags 0 and the decoy
/// `avail_event` behind the index: a driver that notifies keeps #2 and
/// #4; one that honours the decoy and stays quiet breaks both at the end.
#[test]
fn section_2_7_10_flags_0_needs_a_notification_whatever_avail_event_says() {
    let (ram, l, mut w) = setup(false, true);
    // The decoy is in the ring.
    assert_eq!(ram.load_u16_acquire(l.avail_event()).unwrap(), 0xffff);
    publish(&ram, &l, 1);
    w.notified(&ram, 0);
    device_step(&ram, &l, &mut w, None);
    w.due(&ram);
    assert_eq!(outcome(&w, NOTIFY_WHEN_FLAGS_0), Outcome::Pass);
    assert_eq!(outcome(&w, IGNORE_AVAIL_EVENT), Outcome::Pass);
    assert!(matches!(
        outcome(&w, NOTIFY_AT_EVENT),
        Outcome::NotApplicable(_)
    ));

    let (ram, l, mut w) = setup(false, true);
    publish(&ram, &l, 1);
    w.due(&ram);
    assert!(matches!(outcome(&w, NOTIFY_WHEN_FLAGS_0), Outcome::Fail(_)));
    assert!(matches!(outcome(&w, IGNORE_AVAIL_EVENT), Outcome::Fail(_)));
}

/// §2.7.10: with NO_NOTIFY set (no EVENT_IDX) the driver owes nothing, and
/// a notification anyway is the SHOULD NOT.
#[test]
fn section_2_7_10_no_notify_owes_nothing_and_a_notification_is_a_should_not() {
    let (ram, l, mut w) = setup(false, false);
    ram.write(l.used_flags(), &NO_NOTIFY.to_le_bytes()).unwrap();
    w.after(&ram, 0);
    publish(&ram, &l, 2);
    // Another queue's notification: the device steps, nothing owed.
    w.settle(&ram, 0);
    w.due(&ram);
    assert!(matches!(
        outcome(&w, NOTIFY_WHEN_FLAGS_0),
        Outcome::NotObservable(_)
    ));
    assert_eq!(outcome(&w, QUIET_WHEN_FLAGGED), Outcome::Pass);

    let (ram, l, mut w) = setup(false, false);
    ram.write(l.used_flags(), &NO_NOTIFY.to_le_bytes()).unwrap();
    w.after(&ram, 0);
    publish(&ram, &l, 1);
    w.notified(&ram, 0);
    assert!(matches!(outcome(&w, QUIET_WHEN_FLAGGED), Outcome::Fail(_)));
    assert!(matches!(
        outcome(&w, IGNORE_AVAIL_EVENT),
        Outcome::NotObservable(_)
    ));
}

/// §2.7.10 with VIRTIO_F_EVENT_IDX: entries that cross `avail_event` owe a
/// notification even with the NO_NOTIFY decoy set (#5, #6); entries that
/// do not cross it owe none, and a notification then is the SHOULD NOT
/// (#7). Several entries published at once owe one notification.
#[test]
fn section_2_7_10_event_idx_owes_a_notification_at_avail_event_only() {
    let (ram, l, mut w) = setup(true, true);
    assert_eq!(
        ram.load_u16_acquire(l.used_flags()).unwrap() & NO_NOTIFY,
        NO_NOTIFY
    );
    // avail_event 0: publishing 0..3 crosses it.
    publish(&ram, &l, 3);
    w.settle(&ram, 0);
    w.notified(&ram, 0);
    device_step(&ram, &l, &mut w, Some(6));
    // 3..5 does not reach 6: nothing owed, and a notification is too many.
    publish(&ram, &l, 5);
    w.notified(&ram, 0);
    device_step(&ram, &l, &mut w, Some(6));
    w.due(&ram);
    assert_eq!(outcome(&w, NOTIFY_AT_EVENT), Outcome::Pass);
    assert_eq!(outcome(&w, IGNORE_FLAG_BIT), Outcome::Pass);
    assert!(matches!(outcome(&w, QUIET_OTHERWISE), Outcome::Fail(_)));

    // A driver that honours the NO_NOTIFY decoy never notifies.
    let (ram, l, mut w) = setup(true, true);
    publish(&ram, &l, 1);
    w.settle(&ram, 0);
    w.due(&ram);
    assert!(matches!(outcome(&w, NOTIFY_AT_EVENT), Outcome::Fail(_)));
    assert!(matches!(outcome(&w, IGNORE_FLAG_BIT), Outcome::Fail(_)));
}

/// A notification that comes after another queue's (the device stepped in
/// between) still pays what was owed.
#[test]
fn an_owed_notification_may_come_after_other_steps() {
    let (ram, l, mut w) = setup(false, false);
    publish(&ram, &l, 1);
    w.settle(&ram, 0);
    w.after(&ram, 0);
    publish(&ram, &l, 2);
    w.settle(&ram, 0);
    w.notified(&ram, 0);
    w.due(&ram);
    assert_eq!(outcome(&w, NOTIFY_WHEN_FLAGS_0), Outcome::Pass);
}

#[test]
fn spurious_notifications_come_only_when_provoking() {
    let (_, _, mut w) = setup(false, false);
    assert!((0..20).all(|_| !w.spurious_now()));
    assert!(matches!(outcome(&w, SPURIOUS), Outcome::NotObservable(_)));
    let (_, _, mut w) = setup(false, true);
    let given = (0..20).filter(|_| w.spurious_now()).count();
    assert_eq!(given as u32, 20 / SPURIOUS_EVERY);
    assert_eq!(outcome(&w, SPURIOUS), Outcome::Pass);
}

/// The driver may read the suppression state after the device's next
/// step: entries owed under flags 0 that the device then suppresses
/// (NO_NOTIFY, polling) may go unnotified; no breach at the end.
#[test]
fn an_obligation_the_next_state_lifts_is_not_a_breach() {
    let (ram, l, mut w) = setup(false, false);
    publish(&ram, &l, 1);
    w.settle(&ram, 0);
    ram.write(l.used_flags(), &NO_NOTIFY.to_le_bytes()).unwrap();
    w.after(&ram, 0);
    w.due(&ram);
    assert!(!matches!(
        outcome(&w, NOTIFY_WHEN_FLAGS_0),
        Outcome::Fail(_)
    ));
}
