//! Issue 16, finding 15: the frontend gives one operation (an activation,
//! a reset) one deadline, whatever the number of requests it makes. Before,
//! each request had its own 5-second timeout: a backend that answered each
//! request just in time (or trickled its replies) held the vCPU whose
//! Status write started the activation for 5 s × every request of every
//! queue. Now such a backend is declared dead when the operation's time is
//! up, and the device asks for a reset (§2.1.2).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backends::hostmem::HostMemory;
use vhost_user::codec::{
    FLAG_REPLY, FLAG_VERSION, HEADER_LEN, VHOST_USER_F_PROTOCOL_FEATURES, protocol,
};
use vhost_user::{SharedRam, VhostUserDevice, VhostUserKind};
use virtio_core::memory::GuestAddress;
use virtio_core::split::layout::{QueueLayout, QueueSize};
use virtio_devices::{DeviceError, QueueConfig, VirtioDevice};

const VERSION_1: u64 = 1 << 32;
const GET_FEATURES: u32 = 1;
const GET_PROTOCOL_FEATURES: u32 = 15;

/// How the fake backend answers once the handshake is done.
#[derive(Clone, Copy)]
enum After {
    /// Each acknowledgement a byte at a time, `delay` apart: every request
    /// alone is answered well within the operation's limit.
    Trickle(Duration),
    /// Reads every request and answers none.
    Silent,
}

/// Reads one message: its request code and flags.
fn recv(s: &mut UnixStream) -> Option<(u32, u32)> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let request = u32::from_ne_bytes(h[0..4].try_into().unwrap());
    let flags = u32::from_ne_bytes(h[4..8].try_into().unwrap());
    let size = u32::from_ne_bytes(h[8..12].try_into().unwrap());
    let mut p = vec![0u8; size as usize];
    s.read_exact(&mut p).ok()?;
    Some((request, flags))
}

fn reply(request: u32, value: u64) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_ne_bytes());
    m.extend_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_ne_bytes());
    m.extend_from_slice(&8u32.to_ne_bytes());
    m.extend_from_slice(&value.to_ne_bytes());
    m
}

/// A backend offering entropy with REPLY_ACK that answers the handshake
/// at once, then as `after` says. Counts the requests it saw after the
/// handshake.
fn fake_backend(listener: UnixListener, after: After, seen: Arc<AtomicU32>) {
    let (mut s, _) = listener.accept().unwrap();
    let mut handshake_done = false;
    while let Some((request, flags)) = recv(&mut s) {
        let need_reply = flags & (1 << 3) != 0;
        match request {
            GET_FEATURES => {
                let f = VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
                s.write_all(&reply(request, f)).unwrap();
            }
            GET_PROTOCOL_FEATURES => {
                s.write_all(&reply(request, protocol::REPLY_ACK)).unwrap();
                handshake_done = true;
            }
            _ if !handshake_done || !need_reply => {}
            _ => {
                seen.fetch_add(1, Ordering::Relaxed);
                match after {
                    After::Silent => {}
                    After::Trickle(delay) => {
                        for b in reply(request, 0) {
                            std::thread::sleep(delay);
                            if s.write_all(&[b]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Connects a frontend (limit `limit`) to a fake backend and activates
/// one queue; returns the activation's result, why the device says the
/// backend is dead, and the requests the backend saw during activation.
fn activate_against(after: After, limit: Duration) -> (Result<(), DeviceError>, String, u32) {
    let dir = std::env::temp_dir().join(format!(
        "bothends-deadline-{}-{}",
        std::process::id(),
        match after {
            After::Silent => "silent",
            After::Trickle(_) => "trickle",
        }
    ));
    let _ = std::fs::remove_file(&dir);
    let listener = UnixListener::bind(&dir).unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let backend = {
        let seen = seen.clone();
        std::thread::spawn(move || fake_backend(listener, after, seen))
    };
    let mem = HostMemory::memfd("deadline", 1 << 20, true, false, false).unwrap();
    let ram = Arc::new(SharedRam::new(&mem, &[(0, 1 << 20)]).unwrap());
    let mut dev = VhostUserDevice::connect_within(&dir, VhostUserKind::Rng, ram, limit).unwrap();
    let layout = QueueLayout::new(
        QueueSize::new(16).unwrap(),
        GuestAddress(0x1000),
        GuestAddress(0x2000),
        GuestAddress(0x3000),
    )
    .unwrap();
    let features = dev.device_features();
    let r = dev.activate(
        features,
        vec![QueueConfig {
            layout: Some(layout),
        }],
    );
    let dead = dev.dead().unwrap_or_default().to_string();
    drop(dev);
    backend.join().unwrap();
    let _ = std::fs::remove_file(&dir);
    (r, dead, seen.load(Ordering::Relaxed))
}

#[test]
fn a_backend_that_answers_each_request_slowly_is_dead_when_the_operation_is_out_of_time() {
    // Each acknowledgement takes 20 bytes × 10 ms = 200 ms, well within
    // the 400 ms limit; the activation's eight acknowledged requests
    // (features, memory table, and six for the ring) take 1.6 s in all.
    let (r, dead, seen) = activate_against(
        After::Trickle(Duration::from_millis(10)),
        Duration::from_millis(400),
    );
    assert_eq!(r, Err(DeviceError::BackendGone));
    assert!(
        dead.contains("did not answer within the operation's 400 ms"),
        "{dead}"
    );
    assert!(
        seen < 8,
        "the activation went on after its time was up ({seen} requests)"
    );
}

#[test]
fn a_backend_that_never_answers_costs_one_limit_not_one_per_request() {
    let (r, dead, seen) = activate_against(After::Silent, Duration::from_millis(300));
    assert_eq!(r, Err(DeviceError::BackendGone));
    assert!(
        dead.contains("did not answer within the operation's 300 ms"),
        "{dead}"
    );
    assert_eq!(seen, 1, "the first unanswered request ends the operation");
}
