//! A session run by its caller one round at a time
//! (`Backend::serve_stepped`), with the frontend on the same thread: what
//! the `vhost_user_session` fuzz target relies on. Nothing races, so every
//! check holds as soon as the backend is idle; the backend goes on to
//! serve the next frontend the ordinary way; the log can go elsewhere.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use backends::rng::Deterministic;
use common::{Front, Mem};
use vhost_user::codec::{
    self, Message, Reply, Request, VHOST_USER_F_PROTOCOL_FEATURES, VringFd, VringState, protocol,
};
use vhost_user::memory::Regions;
use vhost_user::{Backend, Progress, SessionEnd, SharedMemory};
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::rng::Rng;
use vmm_sys_util::eventfd::EventFd;

fn rng_backend() -> Backend<Rng<Deterministic, SharedMemory>> {
    let mem = SharedMemory::new();
    Backend::new(
        Rng::new(Deterministic::new(1), mem.clone()),
        mem,
        Vec::new(),
    )
}

/// Sends `msg` with need_reply, lets the backend run, and returns the
/// status it sent.
fn ack<D: virtio_devices::VirtioDevice>(
    f: &Front,
    s: &mut vhost_user::SteppedSession<'_, D>,
    msg: &Message,
    fds: &[i32],
) -> u64 {
    f.send(msg, true, fds);
    assert_eq!(s.run_until_idle(100), Progress::Idle);
    let (req, payload) = f.reply().expect("a status");
    assert_eq!(req, msg.request().code());
    u64::from_ne_bytes(payload.try_into().unwrap())
}

#[test]
fn a_stepped_session_serves_a_ring_with_the_frontend_on_the_same_thread() {
    let mut backend = rng_backend();
    let mem = Mem::new();
    let kick = EventFd::new(0).unwrap();
    let (f, stream) = Front::pair();
    let mut s = backend.serve_stepped(stream);
    assert_eq!(s.poll(), Progress::Idle, "nothing sent yet");

    f.negotiate(protocol::REPLY_ACK);
    // One message a round.
    for _ in 0..3 {
        assert_eq!(s.poll(), Progress::Busy);
    }
    assert_eq!(s.poll(), Progress::Idle);
    let table = Message::SetMemTable(vec![mem.region()]);
    assert_eq!(ack(&f, &mut s, &table, &[mem.fd.as_raw_fd()]), 0);
    let num = Message::SetVringNum(VringState { index: 0, num: 16 });
    assert_eq!(ack(&f, &mut s, &num, &[]), 0);
    assert_eq!(ack(&f, &mut s, &Message::SetVringAddr(mem.ring(0)), &[]), 0);
    let vfd = VringFd {
        index: 0,
        has_fd: true,
    };
    let kick_msg = Message::SetVringKick(vfd);
    assert_eq!(ack(&f, &mut s, &kick_msg, &[kick.as_raw_fd()]), 0);
    let enable = Message::SetVringEnable(VringState { index: 0, num: 1 });
    assert_eq!(ack(&f, &mut s, &enable, &[]), 0);

    // The frontend's driver, over its own mapping of the memory.
    let view = SharedMemory::new();
    let mut regions = Regions::default();
    let fd = mem.fd.as_fd().try_clone_to_owned().unwrap();
    regions.replace(&[mem.region()], &[fd], &view).unwrap();
    let layout = QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(common::DESC),
        GuestAddress(common::AVAIL),
        GuestAddress(common::USED),
    )
    .unwrap();
    let mut q = DriverQueue::<16>::new(layout, false, None).unwrap();
    q.init(&view).unwrap();
    let token = q.add(&view, &[], &[(GuestAddress(0x8000), 32)]).unwrap();
    q.publish(&view).unwrap();
    kick.write(1).unwrap();
    // The kick is served in the next rounds: no waiting, no sleeping.
    assert_eq!(s.run_until_idle(100), Progress::Idle);
    let used = q.pop_used(&view).unwrap().expect("served once idle");
    assert_eq!((used.token, used.len), (token, 32));

    f.send(
        &Message::GetVringBase(VringState { index: 0, num: 0 }),
        false,
        &[],
    );
    assert_eq!(s.run_until_idle(100), Progress::Idle);
    let (req, payload) = f.reply().unwrap();
    let mut reply = codec::reply_vring_state(VringState { index: 0, num: 1 });
    assert_eq!(
        codec::decode_reply(Request::GetVringBase, false, &reply),
        Ok(Reply::VringState(VringState { index: 0, num: 1 }))
    );
    assert_eq!((req, payload.as_slice()), (11, &reply.split_off(12)[..]));

    // A hang-up ends the session in the next round.
    drop(f);
    assert_eq!(s.run_until_idle(100), Progress::Ended);
    assert!(matches!(s.end(), Some(SessionEnd::Closed)), "{:?}", s.end());
    assert_eq!(s.backend().stats().kicks, 1);
    drop(s);

    // The same backend serves the next frontend the ordinary way.
    let (f, stream) = Front::pair();
    let end = std::thread::scope(|scope| {
        scope.spawn(move || {
            f.send(&Message::GetFeatures, false, &[]);
            let (req, p) = f.reply().unwrap();
            assert_eq!(req, Request::GetFeatures.code());
            let features = u64::from_ne_bytes(p.try_into().unwrap());
            assert_ne!(features & VHOST_USER_F_PROTOCOL_FEATURES, 0);
        });
        backend.serve_connection(stream)
    });
    assert!(matches!(end, SessionEnd::Closed), "{end}");
    assert_eq!(backend.stats().sessions, 2);
}

#[test]
fn dropping_a_stepped_session_ends_it_and_the_next_frontend_starts_afresh() {
    let mut backend = rng_backend();
    let mem = Mem::new();
    let (f, stream) = Front::pair();
    let mut s = backend.serve_stepped(stream);
    f.send(
        &Message::SetProtocolFeatures(protocol::REPLY_ACK),
        false,
        &[],
    );
    let table = Message::SetMemTable(vec![mem.region()]);
    s.run_until_idle(100);
    assert_eq!(ack(&f, &mut s, &table, &[mem.fd.as_raw_fd()]), 0);
    let num = Message::SetVringNum(VringState { index: 0, num: 16 });
    assert_eq!(ack(&f, &mut s, &num, &[]), 0);
    // Dropped without a hang-up: ended as if the frontend had gone.
    drop(s);
    assert!(f.reply().is_none(), "the connection is closed");

    let (f, stream) = Front::pair();
    let mut s = backend.serve_stepped(stream);
    f.send(
        &Message::SetProtocolFeatures(protocol::REPLY_ACK),
        false,
        &[],
    );
    s.run_until_idle(100);
    // No size, no memory: the last session's ring is gone.
    let addr = Message::SetVringAddr(mem.ring(0));
    assert_eq!(ack(&f, &mut s, &addr, &[]), 1);
    assert!(matches!(s.finish(), SessionEnd::Closed));
    assert_eq!(backend.stats().sessions, 2);
}

#[test]
fn the_log_sink_gets_the_lines_instead_of_stderr() {
    let mut backend = rng_backend();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    backend.set_log_sink(Box::new(move |l| sink.lock().unwrap().push(l.to_string())));
    let (f, stream) = Front::pair();
    let mut s = backend.serve_stepped(stream);
    // Refused without REPLY_ACK: the session ends.
    f.send(
        &Message::SetVringNum(VringState { index: 0, num: 3 }),
        false,
        &[],
    );
    assert_eq!(s.run_until_idle(100), Progress::Ended);
    assert!(matches!(s.end(), Some(SessionEnd::Error(e)) if e.contains("size 3")));
    drop(s);
    let lines = lines.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("vhost-user: refused:") && l.contains("size 3")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("connection closed")),
        "{lines:?}"
    );
}
