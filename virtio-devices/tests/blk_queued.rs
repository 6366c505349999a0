//! virtio-blk over a backend with a request queue (`BlkConfig::queued_io`):
//! requests handed to the queue complete when the backend reports them, in
//! any order; quiesce, reset, a full queue, writethrough and flush failures.

mod blk_support;
mod queue_rig;

use backends::block::BlockBackend;
use blk_support::{MemDisk, Rig, rig_with};
use virtio_core::GuestMemory;
use virtio_devices::blk::{BlkConfig, req, status};
use virtio_devices::device::VirtioDevice;

fn queued_rig(depth: usize) -> Rig {
    let disk = MemDisk::new(64).with(|s| s.depth = depth);
    rig_with(
        disk,
        BlkConfig {
            queued_io: true,
            ..BlkConfig::default()
        },
        None,
    )
}

fn used_idx(r: &Rig) -> u16 {
    r.mem
        .load_u16_acquire(blk_support::layout(0).used_idx())
        .unwrap()
}

/// §2.7.5 / §2.7.8: used entries need not follow the available order; each
/// queued request completes when the backend reports it, with its own
/// length and status.
#[test]
fn section_2_7_8_queued_requests_complete_in_the_order_the_backend_finishes_them() {
    let mut r = queued_rig(8);
    let bufs: Vec<u64> = (0..3).map(|_| r.alloc(512)).collect();
    let reads: Vec<_> = (0..3)
        .map(|i| r.request(req::IN, i as u64, &[(bufs[i], 512)], false))
        .collect();
    let w = r.data(&[0x5a; 512]);
    let write = r.request(req::OUT, 10, &[(w, 512)], true);
    let served = r.notify(0);
    assert_eq!(served.completed, 0, "nothing finished yet");
    assert!(!served.interrupt);
    assert!(r.completions().is_empty());
    assert_eq!(r.dev.stats().queued, 4);
    assert_eq!(r.disk.state().submits, 1, "one submission for the batch");
    assert_eq!(r.dev.queue_position(0), None, "not known while queued");

    r.disk.run_reversed();
    let served = r.dev.backend_ready().unwrap();
    assert_eq!(served.completed, 4);
    assert!(served.interrupt);
    let done = r.completions();
    let expect = vec![
        (write.0, 1),
        (reads[2].0, 513),
        (reads[1].0, 513),
        (reads[0].0, 513),
    ];
    assert_eq!(done, expect, "last started, first finished");
    for (i, (_, s)) in reads.iter().enumerate() {
        assert_eq!(r.status(*s), status::OK);
        let want = r.disk.state().data[i * 512..(i + 1) * 512].to_vec();
        assert_eq!(r.bytes(bufs[i], 512), want);
    }
    assert_eq!(r.status(write.1), status::OK);
    assert_eq!(&r.disk.state().data[10 * 512..11 * 512], &[0x5a; 512][..]);
    assert_eq!(r.dev.queue_position(0), Some(4));
    let st = r.dev.stats();
    assert_eq!((st.bytes_read, st.bytes_written), (3 * 512, 512));
}

/// A request the backend finishes while it is submitted (an io_uring read
/// served from the page cache) completes in the same notification, with
/// one notification decision for the batch.
#[test]
fn requests_finished_during_submission_complete_in_the_notification() {
    let mut r = queued_rig(8);
    r.disk.state().finish_on_submit = true;
    let b = r.alloc(1024);
    let (t1, s1) = r.request(req::IN, 3, &[(b, 512)], false);
    let (t2, s2) = r.request(req::IN, 4, &[(b + 512, 512)], false);
    let served = r.notify(0);
    assert_eq!(served.completed, 2);
    assert!(served.interrupt);
    assert_eq!(r.completions(), vec![(t1, 513), (t2, 513)]);
    assert_eq!((r.status(s1), r.status(s2)), (status::OK, status::OK));
    assert_eq!(r.dev.stats().batches, 1);
}

/// `quiesce` waits for the queue and completes everything; afterwards the
/// position is exact (vhost-user GET_VRING_BASE).
#[test]
fn quiesce_completes_every_queued_request_and_the_position_is_known_again() {
    let mut r = queued_rig(8);
    let mut tokens = Vec::new();
    for i in 0..5u64 {
        let b = r.alloc(512);
        tokens.push(r.request(req::IN, i, &[(b, 512)], false).0);
    }
    r.notify(0);
    assert_eq!(r.dev.queue_position(0), None);
    let served = r.dev.quiesce().unwrap();
    assert_eq!(served.completed, 5);
    assert!(served.interrupt);
    assert_eq!(r.disk.state().started.len(), 0);
    assert_eq!(r.dev.queue_position(0), Some(5));
    assert_eq!(r.completions().len(), 5);
    // Nothing left: a second quiesce has nothing to do.
    assert_eq!(r.dev.quiesce().unwrap().completed, 0);
}

/// §2.4: after a reset the device writes nothing to the rings; it still
/// waits for the queue (the backend may be using guest memory).
#[test]
fn section_2_4_reset_waits_for_the_queue_and_publishes_nothing() {
    let mut r = queued_rig(8);
    let b = r.alloc(512);
    r.request(req::IN, 0, &[(b, 512)], false);
    let (_, flush_status) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    assert_eq!(r.disk.state().started.len(), 2);
    r.dev.reset();
    assert_eq!(r.dev.backend().in_flight(), 0, "the queue was drained");
    assert_eq!(used_idx(&r), 0, "nothing published after the reset");
    assert_eq!(r.status(flush_status), 0xff, "no status written");
}

/// A queue that declines (full) leaves the request to the synchronous
/// path: it completes in the notification.
#[test]
fn a_full_queue_falls_back_to_synchronous_service() {
    let mut r = queued_rig(2);
    for i in 0..4u64 {
        let b = r.alloc(512);
        r.request(req::IN, i, &[(b, 512)], false);
    }
    let served = r.notify(0);
    assert_eq!(served.completed, 2, "the two the queue declined");
    assert_eq!(r.dev.stats().queued, 2);
    assert_eq!(r.dev.stats().queue_declined, 2);
    r.disk.run_reversed();
    assert_eq!(r.dev.backend_ready().unwrap().completed, 2);
    assert_eq!(r.completions().len(), 4);
}

/// §5.2.6.2: a FLUSH goes to the queue and completes only once the backend
/// flushed; a failed queued flush is sticky like a synchronous one.
#[test]
fn section_5_2_6_2_a_queued_flush_completes_after_the_backend_flushed_and_its_failure_sticks() {
    let mut r = queued_rig(8);
    let d = r.data(&[3; 512]);
    r.request(req::OUT, 0, &[(d, 512)], true);
    r.notify(0);
    r.disk.run(&[0]);
    r.dev.backend_ready().unwrap();
    r.completions();
    let (t, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    assert_eq!(r.status(s), 0xff, "not before the backend flushed");
    assert_eq!(r.disk.state().flushes, 0);
    r.disk.run(&[0]);
    r.dev.backend_ready().unwrap();
    assert_eq!(r.completions(), vec![(t, 1)]);
    assert_eq!(r.status(s), status::OK);
    assert_eq!(r.disk.state().flushes, 1);
    assert_eq!(r.disk.state().unflushed, 0);

    r.disk.state().fail_flush = true;
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    r.disk.run(&[0]);
    r.dev.backend_ready().unwrap();
    assert_eq!(r.status(s), status::IOERR);
    // Sticky: the next FLUSH fails without reaching the backend.
    let (_, s) = r.request(req::FLUSH, 0, &[], true);
    let served = r.notify(0);
    assert_eq!(served.completed, 1);
    assert_eq!(r.status(s), status::IOERR);
}

/// §5.2.6.2: in writethrough a write completes only once stable, so it is
/// not queued; turning writeback off first completes what is queued, then
/// flushes, and the interrupt the configuration write could not send comes
/// with the next call.
#[test]
fn section_5_2_6_2_writethrough_is_synchronous_and_the_switch_waits_for_the_queue() {
    let mut r = queued_rig(8);
    let d = r.data(&[9; 512]);
    let (t, s) = r.request(req::OUT, 1, &[(d, 512)], true);
    r.notify(0);
    assert_eq!(r.disk.state().started.len(), 1);
    r.dev.write_config(32, &[0]);
    assert!(!r.dev.writeback());
    assert_eq!(
        r.disk.state().started.len(),
        0,
        "completed before the flush"
    );
    assert_eq!(r.disk.state().unflushed, 0);
    assert_eq!(r.status(s), status::OK);
    assert_eq!(used_idx(&r), 1, "published");
    let served = r.dev.backend_ready().unwrap();
    assert!(served.interrupt, "the owed notification");
    assert_eq!(r.completions(), vec![(t, 1)]);

    let d = r.data(&[8; 512]);
    let (t, s) = r.request(req::OUT, 2, &[(d, 512)], true);
    let served = r.notify(0);
    assert_eq!(served.completed, 1, "writethrough: completed at once");
    assert_eq!(r.completions(), vec![(t, 1)]);
    assert_eq!(r.status(s), status::OK);
    assert_eq!(r.dev.stats().queued, 1);
}

/// Checks the queue makes before any I/O still hold (§5.2.6.1): a read past
/// the capacity is IOERR without reaching the backend's queue.
#[test]
fn section_5_2_6_1_checks_come_before_the_queue() {
    let mut r = queued_rig(8);
    let b = r.alloc(512);
    let (_, s) = r.request(req::IN, 64, &[(b, 512)], false);
    let served = r.notify(0);
    assert_eq!(served.completed, 1);
    assert_eq!(r.status(s), status::IOERR);
    assert_eq!(r.dev.stats().queued, 0);
}

/// Without `queued_io` a backend's queue is never used.
#[test]
fn without_queued_io_the_queue_is_not_used() {
    let disk = MemDisk::new(16).with(|s| s.depth = 8);
    let mut r = rig_with(disk, BlkConfig::default(), None);
    let b = r.alloc(512);
    r.request(req::IN, 0, &[(b, 512)], false);
    assert_eq!(r.notify(0).completed, 1);
    assert_eq!(r.dev.stats().queued, 0);
}

/// A driver that makes a head available again while its request is queued
/// (its descriptors are the device's until used) gets that second request
/// served synchronously; the queued one completes as usual.
#[test]
fn a_head_made_available_twice_while_queued_is_served_synchronously() {
    let mut r = queued_rig(8);
    let b = r.alloc(512);
    let (t, _) = r.request(req::IN, 0, &[(b, 512)], false);
    r.notify(0);
    assert_eq!(r.dev.stats().queued, 1);
    // Publish the same head once more, behind the driver queue's back.
    let avail = blk_support::layout(0).avail_slot(1);
    r.mem.write(avail, &t.head().to_le_bytes()).unwrap();
    r.mem
        .write(blk_support::layout(0).avail_idx(), &2u16.to_le_bytes())
        .unwrap();
    // The same descriptors are read again, by design of this driver.
    r.fetch.new_window();
    let served = r.notify(0);
    assert_eq!(served.completed, 1, "the repeat, synchronously");
    assert_eq!(r.dev.stats().queued, 1);
    r.disk.run(&[0]);
    assert_eq!(r.dev.backend_ready().unwrap().completed, 1);
}

/// §5.2.6.2 with queued flushes: only one flush is in the backend's queue
/// at a time (two at once could split one write-back error, so one would
/// report success for lost pages). FLUSH requests taken meanwhile wait and
/// are answered together by one flush started when it finishes.
#[test]
fn section_5_2_6_2_one_flush_in_the_queue_and_the_others_answered_by_the_next() {
    let mut r = queued_rig(8);
    let (t1, s1) = r.request(req::FLUSH, 0, &[], true);
    let (t2, s2) = r.request(req::FLUSH, 0, &[], true);
    let (t3, s3) = r.request(req::FLUSH, 0, &[], true);
    assert_eq!(r.notify(0).completed, 0);
    assert_eq!(r.disk.state().started.len(), 1, "one flush in the queue");
    r.disk.run(&[0]);
    let served = r.dev.backend_ready().unwrap();
    assert_eq!(served.completed, 1);
    assert_eq!(r.completions(), vec![(t1, 1)]);
    assert_eq!(r.status(s1), status::OK);
    assert_eq!(r.disk.state().started.len(), 1, "the next one, for both");
    r.disk.run(&[0]);
    assert_eq!(r.dev.backend_ready().unwrap().completed, 2);
    assert_eq!(r.completions(), vec![(t2, 1), (t3, 1)]);
    assert_eq!((r.status(s2), r.status(s3)), (status::OK, status::OK));
    assert_eq!(r.disk.state().flushes, 2);

    // A failure answers the waiting ones with IOERR too, without another
    // flush: after a failed one, none can be trusted (sticky).
    let (_, s1) = r.request(req::FLUSH, 0, &[], true);
    let (_, s2) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    r.disk.state().fail_flush = true;
    r.disk.run(&[0]);
    assert_eq!(r.dev.backend_ready().unwrap().completed, 2);
    assert_eq!((r.status(s1), r.status(s2)), (status::IOERR, status::IOERR));
    assert!(r.disk.state().started.is_empty());
    assert_eq!(r.dev.queue_position(0), Some(5));
}

/// Reset with FLUSH requests waiting and one in the queue: the queue is
/// drained and nothing is written to the rings.
#[test]
fn reset_with_flushes_waiting_drains_and_writes_nothing() {
    let mut r = queued_rig(8);
    r.request(req::FLUSH, 0, &[], true);
    let (_, s2) = r.request(req::FLUSH, 0, &[], true);
    r.notify(0);
    r.disk.state().fail_flush = true;
    r.dev.reset();
    assert_eq!(r.dev.backend().in_flight(), 0);
    assert_eq!(r.status(s2), 0xff);
    assert_eq!(used_idx(&r), 0);
}

/// §2.7.10: a large batch of queued requests that finish during submission
/// is completed in parts, each published and notified before the next is
/// taken (`again`), so the driver can refill the ring while the device
/// works on the rest.
#[test]
fn section_2_7_10_a_large_queued_batch_completes_in_notified_parts() {
    let mut r = queued_rig(64);
    r.disk.state().finish_on_submit = true;
    let b = r.alloc(512 * 21);
    let reqs: Vec<_> = (0..21)
        .map(|i| r.request(req::IN, i, &[(b + 512 * i, 512)], false))
        .collect();
    let first = r.notify(0);
    assert_eq!(
        first.completed, 16,
        "half of what is available, at least 16"
    );
    assert!(first.again, "the rest is served by the next call");
    assert!(first.interrupts(0));
    assert_eq!(
        first.interrupt_queues, 1,
        "only queue 0 has new used entries"
    );
    assert_eq!(used_idx(&r), 16, "the first part is published");
    let second = r.notify(0);
    assert_eq!(second.completed, 5);
    assert!(!second.again);
    let done = r.completions();
    assert_eq!(done.len(), 21);
    for (t, s) in reqs {
        assert!(done.contains(&(t, 513)));
        assert_eq!(r.status(s), status::OK);
    }
}

/// A transport with a notification per queue (vhost-user) is told which
/// queue's driver to notify: a request on queue 1 names queue 1 only.
#[test]
fn the_notification_names_the_queue_that_completed() {
    let disk = MemDisk::new(64).with(|s| s.depth = 8);
    let mut r = rig_with(
        disk,
        BlkConfig {
            queued_io: true,
            num_queues: 2,
            ..BlkConfig::default()
        },
        None,
    );
    r.disk.state().finish_on_submit = true;
    let b = r.alloc(512);
    let h = r.header(req::IN, 2);
    let s = r.status_buf();
    let t = r.add_on(
        1,
        &[
            queue_rig::Buf::R(h, 16),
            queue_rig::Buf::W(b, 512),
            queue_rig::Buf::W(s, 1),
        ],
    );
    let served = r.notify(1);
    assert_eq!(served.completed, 1);
    assert!(served.interrupts(1));
    assert!(!served.interrupts(0), "queue 0 completed nothing");
    assert_eq!(r.completions_on(1), vec![(t, 513)]);
}

/// §4.2.2.1: once the driver disables a queue (`QueueReady` = 0) the
/// device does not touch it: its queued requests are waited for (the
/// backend may be using their buffers) and dropped, nothing is published,
/// and another queue's request in flight still completes.
#[test]
fn section_4_2_2_1_a_disabled_queue_is_drained_and_not_written() {
    let disk = MemDisk::new(64).with(|s| s.depth = 8);
    let mut r = rig_with(
        disk,
        BlkConfig {
            queued_io: true,
            num_queues: 2,
            ..BlkConfig::default()
        },
        None,
    );
    let b = r.alloc(1024);
    let (_, s0) = r.request(req::IN, 0, &[(b, 512)], false);
    r.notify(0);
    let h = r.header(req::IN, 1);
    let s1 = r.status_buf();
    let t1 = r.add_on(
        1,
        &[
            queue_rig::Buf::R(h, 16),
            queue_rig::Buf::W(b + 512, 512),
            queue_rig::Buf::W(s1, 1),
        ],
    );
    r.notify(1);
    assert_eq!(r.disk.state().started.len(), 2);
    let served = r.dev.disable_queue(0).unwrap();
    assert_eq!(
        r.dev.backend().in_flight(),
        0,
        "the backend's queue drained"
    );
    assert_eq!(served.completed, 1, "queue 1's request completed");
    assert!(served.interrupts(1) && !served.interrupts(0));
    assert_eq!(used_idx(&r), 0, "nothing published on queue 0");
    assert_eq!(r.status(s0), 0xff, "no status written on queue 0");
    assert_eq!(r.completions_on(1), vec![(t1, 513)]);
    assert_eq!(r.status(s1), status::OK);
    assert!(r.dev.queue_notify(0).is_err(), "queue 0 is gone");
    // Disabling it again, or a queue never enabled, is harmless.
    assert_eq!(r.dev.disable_queue(0).unwrap().completed, 0);
}
