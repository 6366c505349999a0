//! Without REPLY_ACK, nothing the frontend sends while it sets the rings
//! up is answered, so a driver's first kick could reach the backend before
//! the backend took the rings in; rust-vmm's `vhost-user-backend` drops
//! such a kick (rust-vmm/vhost issue 247) and the queue never starts
//! (`vhost-device-rng` 0.1.0 stalled in about half of the virtio-user
//! runs, issue 17). The frontend now ends an activation with a request
//! that has a reply: when `activate` returns, the backend has handled
//! every ring request before it.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backends::hostmem::HostMemory;
use vhost_user::codec::{self, HEADER_LEN, Request, VHOST_USER_F_PROTOCOL_FEATURES};
use vhost_user::{SharedRam, VhostUserDevice, VhostUserKind};
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::{QueueConfig, VirtioDevice};

const VERSION_1: u64 = 1 << 32;
const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_VRING_ENABLE: u32 = 18;

fn recv(s: &mut UnixStream) -> Option<u32> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let request = u32::from_ne_bytes(h[0..4].try_into().unwrap());
    let size = u32::from_ne_bytes(h[8..12].try_into().unwrap());
    let mut p = vec![0u8; size as usize];
    s.read_exact(&mut p).ok()?;
    Some(request)
}

/// A slow backend with protocol features but no REPLY_ACK: it takes
/// 50 ms over each request and notes when it has enabled the ring.
fn slow_backend(listener: UnixListener, enabled: Arc<AtomicBool>) {
    let (mut s, _) = listener.accept().unwrap();
    while let Some(request) = recv(&mut s) {
        std::thread::sleep(Duration::from_millis(50));
        match request {
            GET_FEATURES => {
                let f = VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
                s.write_all(&codec::reply_u64(Request::GetFeatures, f))
                    .unwrap();
            }
            GET_PROTOCOL_FEATURES => s
                .write_all(&codec::reply_u64(Request::GetProtocolFeatures, 0))
                .unwrap(),
            SET_VRING_ENABLE => enabled.store(true, Ordering::SeqCst),
            _ => {}
        }
    }
}

#[test]
fn activation_without_reply_ack_returns_once_the_backend_enabled_the_rings() {
    let path = std::env::temp_dir().join(format!("bothends-barrier-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let enabled = Arc::new(AtomicBool::new(false));
    let backend = {
        let enabled = enabled.clone();
        std::thread::spawn(move || slow_backend(listener, enabled))
    };
    let mem = HostMemory::memfd("barrier", 1 << 20, true, false, false).unwrap();
    let ram = Arc::new(SharedRam::new(&mem, &[(0, 1 << 20)]).unwrap());
    let mut dev = VhostUserDevice::connect(&path, VhostUserKind::Rng, ram).unwrap();
    assert_eq!(dev.protocol_features(), 0, "no REPLY_ACK");
    let layout = QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(0x1000),
        GuestAddress(0x2000),
        GuestAddress(0x3000),
    )
    .unwrap();
    let features = dev.device_features();
    dev.activate(
        features,
        vec![QueueConfig {
            layout: Some(layout),
        }],
    )
    .unwrap();
    // The driver may kick now: the backend has its ring.
    assert!(
        enabled.load(Ordering::SeqCst),
        "activate returned before the backend handled SET_VRING_ENABLE"
    );
    drop(dev);
    backend.join().unwrap();
    let _ = std::fs::remove_file(&path);
}
