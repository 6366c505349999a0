//! The backend never blocks on a frontend's eventfd (issue 17). Before,
//! a call eventfd was written blocking, so a frontend that filled its
//! counter to the maximum (0xffff_ffff_ffff_fffe, eventfd(2)) stopped the
//! serving thread at the next used buffer notification, and a kick was
//! drained with a `poll` and a `read` (two system calls per kick, and a
//! window in which a frontend that read its own kick away left the read
//! blocking). Kick, call and err eventfds are now made non-blocking when
//! they arrive: a full call counter drops the call, the session goes on.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use backends::rng::Deterministic;
use common::{Front, Mem, USER_BASE, VERSION_1};
use vhost_user::codec::{Message, VringAddr, VringFd, VringState};
use vhost_user::memory::Regions;
use vhost_user::{Backend, SessionEnd, SharedMemory};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::rng::Rng;
use vmm_sys_util::eventfd::EventFd;

/// The largest value an eventfd counter holds (eventfd(2)).
const FULL: u64 = 0xffff_ffff_ffff_fffe;

fn layout() -> QueueLayout {
    QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(0x1_0000),
        GuestAddress(0x2_0000),
        GuestAddress(0x3_0000),
    )
    .unwrap()
}

#[test]
fn a_full_blocking_call_eventfd_does_not_stop_the_backend() {
    let mem = Mem::new();
    let shm = SharedMemory::new();
    let mut regions = Regions::default();
    let fd = mem.fd.try_clone().unwrap();
    regions.replace(&[mem.region()], &[fd], &shm).unwrap();
    let mut drv = DriverQueue::<16>::new(layout(), false, None).unwrap();
    drv.init(&shm).unwrap();
    for i in 0..4u64 {
        drv.add(&shm, &[], &[(GuestAddress(0x4_0000 + i * 64), 64)])
            .unwrap();
    }
    drv.publish(&shm).unwrap();

    let backend_mem = SharedMemory::new();
    let device = Rng::new(Deterministic::new(3), backend_mem.clone());
    let mut backend = Backend::new(device, backend_mem, Vec::new());
    let (f, stream) = Front::pair();
    // Blocking eventfds (no EFD_NONBLOCK), the call one full.
    let kick = EventFd::new(0).unwrap();
    let call = EventFd::new(0).unwrap();
    call.write(FULL).unwrap();
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc: USER_BASE + 0x1_0000,
        avail: USER_BASE + 0x2_0000,
        used: USER_BASE + 0x3_0000,
        log: 0,
    };
    let (end, reply) = std::thread::scope(|s| {
        let (f, mem, kick, call) = (&f, &mem, &kick, &call);
        let front = s.spawn(move || {
            f.send(&Message::SetOwner, false, &[]);
            f.send(&Message::SetFeatures(VERSION_1), false, &[]);
            f.send(
                &Message::SetMemTable(vec![mem.region()]),
                false,
                &[mem.fd.as_raw_fd()],
            );
            f.send(
                &Message::SetVringNum(VringState { index: 0, num: 16 }),
                false,
                &[],
            );
            f.send(&Message::SetVringAddr(addr), false, &[]);
            let ring0 = VringFd {
                index: 0,
                has_fd: true,
            };
            f.send(&Message::SetVringCall(ring0), false, &[call.as_raw_fd()]);
            f.send(&Message::SetVringKick(ring0), false, &[kick.as_raw_fd()]);
            kick.write(1).unwrap();
            // The backend serves the ring, cannot add to the full call
            // counter, and still answers: GET_VRING_BASE stops the ring
            // and reports where it got.
            std::thread::sleep(Duration::from_millis(100));
            f.send(
                &Message::GetVringBase(VringState { index: 0, num: 0 }),
                false,
                &[],
            );
            let reply = f.reply();
            let _ = f.0.shutdown(std::net::Shutdown::Both);
            reply
        });
        let end = backend.serve_connection(stream);
        (end, front.join().unwrap())
    });
    assert!(matches!(end, SessionEnd::Closed), "{end}");
    let (request, payload) = reply.expect("GET_VRING_BASE answered");
    assert_eq!(
        request,
        Message::GetVringBase(VringState { index: 0, num: 0 })
            .request()
            .code()
    );
    // The ring's next available index: all four chains taken.
    assert_eq!(payload[4..8], 4u32.to_ne_bytes());
    // Every chain was used.
    assert_eq!(shm.load_u16_acquire(layout().used_idx()).unwrap(), 4);
    assert_eq!(backend.stats().rings[0].used, 4);
}
