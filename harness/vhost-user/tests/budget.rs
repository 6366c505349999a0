//! Issue 16, finding 2, the vhost-user side: the serving loop keeps a ready
//! list. A device that stops at its work budget (`Served::again`) is served
//! again after the next round of events, the frontend's messages first, so
//! a ring a guest keeps full neither stops the backend from answering its
//! socket nor needs a kick to be drained.

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backends::rng::Deterministic;
use common::{Front, Mem, Stub, USER_BASE, VERSION_1};
use vhost_user::codec::{Message, VringAddr, VringFd, VringState};
use vhost_user::memory::Regions;
use vhost_user::{Backend, SessionEnd, SharedMemory};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::Served;
use virtio_devices::rng::Rng;
use vmm_sys_util::eventfd::EventFd;

/// Sets the memory table and ring 0 (`num` entries at `addr`), with a
/// kick, and enables it (no protocol features: the ring runs once kicked).
fn run_ring(f: &Front, mem: &Mem, num: u32, addr: VringAddr, kick: &EventFd) {
    f.send(&Message::SetOwner, false, &[]);
    f.send(&Message::SetFeatures(VERSION_1), false, &[]);
    f.send(
        &Message::SetMemTable(vec![mem.region()]),
        false,
        &[mem.fd.as_raw_fd()],
    );
    f.send(
        &Message::SetVringNum(VringState { index: 0, num }),
        false,
        &[],
    );
    f.send(&Message::SetVringAddr(addr), false, &[]);
    f.send(
        &Message::SetVringKick(VringFd {
            index: 0,
            has_fd: true,
        }),
        false,
        &[kick.as_raw_fd()],
    );
}

/// Hangs up when dropped, also when the frontend's thread fails an
/// assertion, so the backend's session ends and the test reports it.
struct Hangup<'a>(&'a Front);

impl Drop for Hangup<'_> {
    fn drop(&mut self) {
        let _ = self.0.0.shutdown(std::net::Shutdown::Both);
    }
}

/// The backend's view of the frontend's memory, for the test's own driver.
fn view(mem: &Mem) -> (SharedMemory, Regions) {
    let shm = SharedMemory::new();
    let mut regions = Regions::default();
    let fd = mem.fd.as_fd().try_clone_to_owned().unwrap();
    regions.replace(&[mem.region()], &[fd], &shm).unwrap();
    (shm, regions)
}

#[test]
fn section_2_7_a_ring_larger_than_the_budget_filled_once_and_kicked_once_drains() {
    const N: u16 = 1024;
    let mem = Mem::new();
    let (shm, _regions) = view(&mem);
    let layout = QueueLayout::new(
        QueueSize::new(u32::from(N)).unwrap(),
        GuestAddress(0x1_0000),
        GuestAddress(0x2_0000),
        GuestAddress(0x3_0000),
    )
    .unwrap();
    let mut drv = DriverQueue::<{ N as usize }>::new(layout, false, None).unwrap();
    drv.init(&shm).unwrap();
    for i in 0..u64::from(N) {
        drv.add(&shm, &[], &[(GuestAddress(0x4_0000 + i * 16), 16)])
            .unwrap();
    }
    drv.publish(&shm).unwrap();

    let backend_mem = SharedMemory::new();
    let device = Rng::new(Deterministic::new(9), backend_mem.clone());
    let mut backend = Backend::new(device, backend_mem, Vec::new());
    let (f, stream) = Front::pair();
    let kick = EventFd::new(0).unwrap();
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc: USER_BASE + 0x1_0000,
        avail: USER_BASE + 0x2_0000,
        used: USER_BASE + 0x3_0000,
        log: 0,
    };
    // A handle per thread (`SharedMemory` is `Send`, not `Sync`).
    let view = shm.clone();
    let end = std::thread::scope(|s| {
        let (f, mem, kick) = (&f, &mem, &kick);
        s.spawn(move || {
            let _hangup = Hangup(f);
            run_ring(f, mem, u32::from(N), addr, kick);
            // One kick for the whole ring.
            kick.write(1).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while view.load_u16_acquire(layout.used_idx()).unwrap() != N {
                assert!(Instant::now() < deadline, "the ring did not drain");
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        backend.serve_connection(stream)
    });
    assert!(matches!(end, SessionEnd::Closed), "{end}");
    assert_eq!(backend.stats().kicks, 1, "one kick, {N} chains");
    assert_eq!(backend.stats().rings[0].used, u64::from(N));
}

#[test]
fn get_vring_base_is_answered_while_a_device_keeps_asking_for_more() {
    let calls = Arc::new(AtomicU64::new(0));
    // A device whose guest never stops posting: every call serves one
    // chain and asks for another.
    let counted = calls.clone();
    let device = Stub::new(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
        Ok(Served {
            completed: 1,
            again: true,
            ..Served::default()
        })
    });
    let mut backend = Backend::new(device, SharedMemory::new(), Vec::new());
    let mem = Mem::new();
    let (f, stream) = Front::pair();
    let kick = EventFd::new(0).unwrap();
    let end = std::thread::scope(|s| {
        s.spawn(|| {
            let _hangup = Hangup(&f);
            run_ring(&f, &mem, 16, mem.ring(0), &kick);
            kick.write(1).unwrap();
            // Served again and again without another kick.
            let deadline = Instant::now() + Duration::from_secs(10);
            while calls.load(Ordering::Relaxed) < 100 {
                assert!(Instant::now() < deadline, "not served again");
                std::thread::yield_now();
            }
            // The socket is still answered.
            f.send(
                &Message::GetVringBase(VringState { index: 0, num: 0 }),
                false,
                &[],
            );
            let (req, _) = f.reply().expect("GET_VRING_BASE answered");
            assert_eq!(req, 11);
            // The ring is stopped: no more service.
            let stopped = calls.load(Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(calls.load(Ordering::Relaxed), stopped);
        });
        backend.serve_connection(stream)
    });
    assert!(matches!(end, SessionEnd::Closed), "{end}");
    assert_eq!(backend.stats().kicks, 1);
}
