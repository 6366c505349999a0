//! Issue 16, finding 3: a frontend that shrinks the file behind its memory
//! table after `SET_MEM_TABLE` (vhost-user.rst "Memory region
//! description": the back-end maps the file it was given) must cost only
//! its own session. Before, the device's next access to a page past the
//! new end raised SIGBUS and killed the backend. Now the session ends with
//! an error naming the region, and the next frontend on the same
//! [`Backend`] is served.
//!
//! Each case runs in a child process (the test re-executes itself), so a
//! backend killed by SIGBUS is observed as such instead of taking the test
//! runner with it. Two ways to shrink: to nothing, so the next ring access
//! (the available index, read on the kick) faults; and to 64 KiB, below
//! the data buffer but above the ring, so the data access faults: the
//! entropy device through its copy into guest memory, the block device in
//! its backend's copy into the host segments the device mapped. A last
//! test checks that a SIGBUS outside guest memory still kills the process
//! (the guard hands it on, and does not loop on it).

mod common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use backends::block::memory::MemoryDisk;
use backends::rng::Deterministic;
use common::{Front, MEM_SIZE, Mem};
use vhost_user::codec::{Message, VringFd, VringState, protocol};
use vhost_user::memory::Regions;
use vhost_user::{Backend, SessionEnd, SharedMemory};
use virtio_core::GuestMemory;
use virtio_core::memory::GuestAddress;
use virtio_core::split::DriverQueue;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::VirtioDevice;
use virtio_devices::blk::{Blk, BlkConfig, req, status};
use virtio_devices::rng::Rng;
use vmm_sys_util::eventfd::EventFd;

const CHILD: &str = "VHOST_USER_SHRUNK_MEMORY_CHILD";

/// The block request header (16 bytes) and status byte, below the size
/// the data case shrinks to.
const HEADER: u64 = 0x4000;
const STATUS: u64 = 0x4100;
/// The data buffer, above it.
const DATA: u64 = 0x8_0000;
/// Bytes the data buffer holds (one sector).
const DATA_LEN: u32 = 512;
/// The size the data case shrinks the memory to.
const ABOVE_THE_RING: u64 = 0x1_0000;

/// Which device the backend serves.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Rng,
    Blk,
}

/// How the frontend shrinks its memory once the ring runs.
#[derive(Clone, Copy, Debug)]
enum Shrink {
    /// To nothing: the ring itself is gone.
    ToNothing,
    /// To [`ABOVE_THE_RING`]: the ring stays, the data buffer is gone.
    BelowTheData,
}

/// The backend's view of the frontend's memory, for the test's driver.
fn view(mem: &Mem) -> (SharedMemory, Regions) {
    let shm = SharedMemory::new();
    let mut regions = Regions::default();
    let fd = mem.fd.as_fd().try_clone_to_owned().unwrap();
    regions.replace(&[mem.region()], &[fd], &shm).unwrap();
    (shm, regions)
}

fn layout() -> QueueLayout {
    QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(common::DESC),
        GuestAddress(common::AVAIL),
        GuestAddress(common::USED),
    )
    .unwrap()
}

/// Features (what the device offers of VERSION_1), REPLY_ACK, the memory
/// table and ring 0, enabled: when the last acknowledgement arrives the
/// device runs the ring.
fn run_ring(f: &Front, mem: &Mem, kick: &EventFd) {
    f.negotiate(protocol::REPLY_ACK);
    let table = Message::SetMemTable(vec![mem.region()]);
    assert_eq!(f.ack(&table, &[mem.fd.as_raw_fd()]), Some(0));
    let num = Message::SetVringNum(VringState { index: 0, num: 16 });
    assert_eq!(f.ack(&num, &[]), Some(0));
    assert_eq!(f.ack(&Message::SetVringAddr(mem.ring(0)), &[]), Some(0));
    let kick_msg = Message::SetVringKick(VringFd {
        index: 0,
        has_fd: true,
    });
    assert_eq!(f.ack(&kick_msg, &[kick.as_raw_fd()]), Some(0));
    let enable = Message::SetVringEnable(VringState { index: 0, num: 1 });
    assert_eq!(f.ack(&enable, &[]), Some(0));
}

/// Posts one request: for the entropy device a 512-byte buffer at
/// [`DATA`], for the block device a read of sector 0 into it.
fn post(kind: Kind, drv: &mut DriverQueue<16>, shm: &SharedMemory) {
    match kind {
        Kind::Rng => drv.add(shm, &[], &[(GuestAddress(DATA), DATA_LEN)]),
        Kind::Blk => {
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&req::IN.to_le_bytes());
            shm.write(GuestAddress(HEADER), &header).unwrap();
            shm.write(GuestAddress(STATUS), &[0xff]).unwrap();
            drv.add(
                shm,
                &[(GuestAddress(HEADER), 16)],
                &[(GuestAddress(DATA), DATA_LEN), (GuestAddress(STATUS), 1)],
            )
        }
    }
    .unwrap();
    drv.publish(shm).unwrap();
}

/// Sets the file's size.
fn truncate(mem: &Mem, len: u64) {
    // SAFETY: a valid descriptor we own, a plain size.
    let rc = unsafe { libc::ftruncate(mem.fd.as_raw_fd(), len as libc::off_t) };
    assert_eq!(rc, 0, "ftruncate: {}", std::io::Error::last_os_error());
}

/// One session. With `shrink`, the frontend shrinks its memory once the
/// ring runs, then posts (if the ring is still there) and kicks, and
/// waits for the backend to close the connection. Without, it posts,
/// kicks and checks the request completes, then hangs up.
fn session<D: VirtioDevice>(
    backend: &mut Backend<D>,
    kind: Kind,
    shrink: Option<Shrink>,
) -> SessionEnd {
    let mem = Mem::new();
    let (shm, _regions) = view(&mem);
    let mut drv = DriverQueue::<16>::new(layout(), false, None).unwrap();
    drv.init(&shm).unwrap();
    let kick = EventFd::new(0).unwrap();
    let (f, stream) = Front::pair();
    std::thread::scope(|s| {
        // The driver's handle moves to its thread (`SharedMemory` is
        // `Send`, not `Sync`).
        let (f, mem, kick, drv) = (&f, &mem, &kick, &mut drv);
        s.spawn(move || {
            run_ring(f, mem, kick);
            match shrink {
                Some(Shrink::ToNothing) => truncate(mem, 0),
                Some(Shrink::BelowTheData) => {
                    truncate(mem, ABOVE_THE_RING);
                    post(kind, drv, &shm);
                }
                None => post(kind, drv, &shm),
            }
            kick.write(1).unwrap();
            if shrink.is_some() {
                // The backend hangs up on this session.
                assert!(f.reply().is_none(), "the backend answered");
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let used = loop {
                if let Some(u) = drv.pop_used(&shm).unwrap() {
                    break u;
                }
                assert!(Instant::now() < deadline, "the request did not complete");
                std::thread::sleep(Duration::from_millis(1));
            };
            match kind {
                Kind::Rng => assert_eq!(used.len, DATA_LEN),
                Kind::Blk => {
                    assert_eq!(used.len, DATA_LEN + 1);
                    let mut st = [0u8];
                    shm.read(GuestAddress(STATUS), &mut st).unwrap();
                    assert_eq!(st[0], status::OK);
                }
            }
            let _ = f.0.shutdown(std::net::Shutdown::Both);
        });
        backend.serve_connection(stream)
    })
}

/// The child: a frontend shrinks its memory, then another is served.
fn child<D: VirtioDevice>(mut backend: Backend<D>, kind: Kind, shrink: Shrink) {
    let end = session(&mut backend, kind, Some(shrink));
    let SessionEnd::Error(e) = &end else {
        panic!("{kind:?}, {shrink:?}: the session ended without an error: {end}");
    };
    for want in ["memory region at guest address 0x0", "lost its backing"] {
        assert!(
            e.contains(want),
            "{kind:?}, {shrink:?}: no '{want}' in: {e}"
        );
    }
    let end = session(&mut backend, kind, None);
    assert!(
        matches!(end, SessionEnd::Closed),
        "{kind:?}, {shrink:?}: the next frontend: {end}"
    );
    assert_eq!(backend.stats().sessions, 2);
    println!("CHILD OK");
}

fn rng_backend() -> Backend<impl VirtioDevice> {
    let mem = SharedMemory::new();
    let device = Rng::new(Deterministic::new(3), mem.clone());
    Backend::new(device, mem, Vec::new())
}

fn blk_backend() -> Backend<impl VirtioDevice> {
    let mem = SharedMemory::new();
    let disk = MemoryDisk::new(64);
    let device = Blk::new(disk, mem.clone(), BlkConfig::default()).unwrap();
    Backend::new(device, mem, Vec::new())
}

fn shrink_named(name: &str) -> Shrink {
    match name {
        "to-nothing" => Shrink::ToNothing,
        "below-the-data" => Shrink::BelowTheData,
        other => panic!("no shrink case {other}"),
    }
}

/// Runs `test` in a child process once per way to shrink; each must exit
/// successfully (not be killed by SIGBUS).
fn in_children(test: &str) {
    let mut failed = Vec::new();
    for case in ["to-nothing", "below-the-data"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD, case)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !stdout.contains("CHILD OK") {
            let how = match (out.status.code(), out.status.signal()) {
                (_, Some(libc::SIGBUS)) => "was killed by SIGBUS".to_string(),
                (_, Some(sig)) => format!("was killed by signal {sig}"),
                (code, None) => format!("exited with {code:?}"),
            };
            failed.push(format!(
                "{case}: the child {how}\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn an_entropy_frontend_that_shrinks_its_memory_ends_only_its_session() {
    if let Ok(case) = std::env::var(CHILD) {
        child(rng_backend(), Kind::Rng, shrink_named(&case));
        return;
    }
    in_children("an_entropy_frontend_that_shrinks_its_memory_ends_only_its_session");
}

#[test]
fn a_block_frontend_that_shrinks_its_memory_ends_only_its_session() {
    if let Ok(case) = std::env::var(CHILD) {
        child(blk_backend(), Kind::Blk, shrink_named(&case));
        return;
    }
    in_children("a_block_frontend_that_shrinks_its_memory_ends_only_its_session");
}

/// The child of the test below: a SIGBUS for a page no guard watches.
fn unguarded_fault_child() {
    let watched = Mem::new();
    let (_shm, _regions) = view(&watched);
    let other = Mem::new();
    let len = MEM_SIZE as usize;
    // SAFETY: a fresh shared mapping of the whole file, which no guard
    // watches; only raw accesses below reach it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            other.fd.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    truncate(&other, 0);
    // No core file for the expected death.
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: sets this process's core size limit from a live struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) };
    println!("touching");
    // SAFETY: inside the mapping; the page is past the end of the file, so
    // this raises SIGBUS, which must kill the process.
    unsafe { std::ptr::write_volatile(p.cast::<u8>(), 1) };
    println!("CHILD SURVIVED");
}

/// The guard catches faults in guest memory only: any other SIGBUS still
/// has its default effect (here through Rust's own handler, which the
/// guard chains to), and does not loop.
#[test]
fn a_sigbus_outside_guest_memory_still_kills_the_process() {
    const TEST: &str = "a_sigbus_outside_guest_memory_still_kills_the_process";
    if std::env::var_os(CHILD).is_some() {
        unguarded_fault_child();
        return;
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "unguarded")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child hangs: a fault outside guest memory loops");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(out.contains("touching"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGBUS), "{status:?}\n{out}");
}

// The test's own sizes: the buffers fit the memory, and the shrink to
// `ABOVE_THE_RING` keeps the ring, the header and the status but not the
// data buffer.
const _: () = assert!(
    DATA + DATA_LEN as u64 <= MEM_SIZE
        && STATUS < ABOVE_THE_RING
        && DATA >= ABOVE_THE_RING
        && common::USED + 6 + 8 * 16 <= ABOVE_THE_RING
);
