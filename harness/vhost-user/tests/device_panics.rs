//! Issue 16, finding 9, the vhost-user side: a device that panics in any
//! call the backend makes while serving a frontend (configuration reads
//! and writes, activation, reset, queue service, its counters at the end
//! of the session) ends that session only. The backend goes on with the
//! next frontend, which finds a clean session (no ring, no memory of the
//! last one) and a device reset since the panic.

mod common;

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use common::{Front, Mem};
use vhost_user::codec::{Config, Message, VringFd, VringState, protocol};
use vhost_user::{Backend, SessionEnd, SharedMemory};
use virtio_core::features::DeviceType;
use virtio_devices::{DeviceError, QueueConfig, Served, VirtioDevice};
use vmm_sys_util::eventfd::EventFd;

const VERSION_1: u64 = 1 << 32;

/// Which call panics (once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PanicIn {
    ReadConfig,
    WriteConfig,
    Activate,
    Reset,
    QueueNotify,
    Counters,
}

/// An entropy device with one queue and 8 bytes of configuration that
/// panics the first time its call `panic_in` is made; `calls` records
/// every call (and the panic).
struct PanickyDevice {
    panic_in: PanicIn,
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl PanickyDevice {
    fn call(&self, name: &'static str, here: PanicIn) {
        let mut calls = self.calls.lock().unwrap();
        let first = !calls.contains(&"panic");
        calls.push(name);
        if self.panic_in == here && first {
            calls.push("panic");
            drop(calls);
            panic!("deliberate test panic in {here:?}");
        }
    }
}

impl VirtioDevice for PanickyDevice {
    fn device_type(&self) -> DeviceType {
        DeviceType::Rng
    }
    fn device_features(&self) -> u64 {
        VERSION_1
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        self.call("read_config", PanicIn::ReadConfig);
        data.fill(0);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        self.call("write_config", PanicIn::WriteConfig);
    }
    fn config_len(&self) -> usize {
        8
    }
    fn activate(&mut self, _features: u64, _queues: Vec<QueueConfig>) -> Result<(), DeviceError> {
        self.call("activate", PanicIn::Activate);
        Ok(())
    }
    fn queue_notify(&mut self, _queue: u16) -> Result<Served, DeviceError> {
        self.call("queue_notify", PanicIn::QueueNotify);
        Ok(Served::default())
    }
    fn reset(&mut self) {
        self.call("reset", PanicIn::Reset);
    }
    fn counters(&self) -> Vec<(&'static str, u64)> {
        self.call("counters", PanicIn::Counters);
        Vec::new()
    }
}

/// SET_OWNER, features, REPLY_ACK and CONFIG.
fn negotiate(f: &Front) {
    f.negotiate(protocol::REPLY_ACK | protocol::CONFIG);
}

/// Ring 0 set up and enabled: the device is activated and serves it.
/// Returns the last acknowledgement (`None`: the backend closed).
fn run_ring(f: &Front, mem: &Mem, kick: &EventFd) -> Option<u64> {
    assert_eq!(
        f.ack(
            &Message::SetMemTable(vec![mem.region()]),
            &[mem.fd.as_raw_fd()]
        ),
        Some(0)
    );
    assert_eq!(
        f.ack(&Message::SetVringNum(VringState { index: 0, num: 16 }), &[]),
        Some(0)
    );
    assert_eq!(f.ack(&Message::SetVringAddr(mem.ring(0)), &[]), Some(0));
    let kick_msg = Message::SetVringKick(VringFd {
        index: 0,
        has_fd: true,
    });
    assert_eq!(f.ack(&kick_msg, &[kick.as_raw_fd()]), Some(0));
    f.ack(
        &Message::SetVringEnable(VringState { index: 0, num: 1 }),
        &[],
    )
}

/// The frontend of the first session: makes the device panic in `case`.
fn first_session(f: Front, case: PanicIn) {
    let mem = Mem::new();
    let kick = EventFd::new(0).unwrap();
    negotiate(&f);
    let closed = match case {
        PanicIn::ReadConfig => {
            let get = Message::GetConfig(Config {
                offset: 0,
                flags: 0,
                data: vec![0; 4],
            });
            f.try_send(&get, false, &[]);
            f.reply().is_none()
        }
        PanicIn::WriteConfig => {
            let set = Message::SetConfig(Config {
                offset: 0,
                flags: 0,
                data: vec![1; 4],
            });
            f.ack(&set, &[]).is_none()
        }
        PanicIn::Activate | PanicIn::QueueNotify => run_ring(&f, &mem, &kick).is_none(),
        PanicIn::Reset => {
            assert_eq!(run_ring(&f, &mem, &kick), Some(0));
            f.ack(&Message::ResetDevice, &[]).is_none()
        }
        PanicIn::Counters => {
            // Runs a ring and hangs up: the panic comes as the session ends.
            assert_eq!(run_ring(&f, &mem, &kick), Some(0));
            true
        }
    };
    assert!(
        closed,
        "{case:?}: the session went on after the device panicked"
    );
}

/// The frontend of the next session: finds no ring of the last one (a ring
/// address before its size is refused) and hangs up.
fn next_session(f: Front) -> Option<u64> {
    negotiate(&f);
    f.ack(&Message::SetVringAddr(Mem::new().ring(0)), &[])
}

#[test]
fn a_device_panic_in_any_call_ends_the_session_not_the_backend() {
    for case in [
        PanicIn::ReadConfig,
        PanicIn::WriteConfig,
        PanicIn::Activate,
        PanicIn::Reset,
        PanicIn::QueueNotify,
        PanicIn::Counters,
    ] {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let device = PanickyDevice {
            panic_in: case,
            calls: calls.clone(),
        };
        let mut backend = Backend::new(device, SharedMemory::new(), Vec::new());

        let (f, stream) = Front::pair();
        let end = std::thread::scope(|s| {
            let frontend = s.spawn(move || first_session(f, case));
            let end = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                backend.serve_connection(stream)
            }));
            frontend.join().unwrap();
            end
        });
        let Ok(end) = end else {
            panic!("{case:?}: the device's panic came out of the backend");
        };
        let want = format!("deliberate test panic in {case:?}");
        assert!(
            matches!(&end, SessionEnd::Error(e) if e.contains(&want)),
            "{case:?}: {end}"
        );
        let seen = calls.lock().unwrap().clone();
        let panicked_at = seen.iter().position(|c| *c == "panic").unwrap();
        assert!(
            seen[panicked_at..].contains(&"reset"),
            "{case:?}: the device was not reset after its panic: {seen:?}"
        );

        let (f, stream) = Front::pair();
        let refused = std::thread::scope(|s| {
            let frontend = s.spawn(move || next_session(f));
            let end = backend.serve_connection(stream);
            assert!(matches!(end, SessionEnd::Closed), "{case:?}: {end}");
            frontend.join().unwrap()
        });
        assert_eq!(
            refused,
            Some(1),
            "{case:?}: the next session found the last one's ring"
        );
        assert_eq!(backend.stats().sessions, 2);
    }
}
