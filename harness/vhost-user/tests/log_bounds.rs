//! Issue 16, finding 14: a frontend decides how often the backend refuses
//! a request, sees a device error or ends a session, so it must not
//! decide how many lines the backend writes. The test drives a backend in
//! a child process (the backend logs on stderr) with 100,000 refused
//! requests and 50,000 device errors in one session, then 10,000 short
//! sessions, and counts the lines: a bounded number, with the counts of
//! what was not logged line by line still reported.

mod common;

use std::os::fd::AsRawFd;
use std::process::Command;

use common::{Front, Mem, Stub};
use vhost_user::codec::{Config, Message, Request, VringFd, VringState, protocol};
use vhost_user::{Backend, SessionEnd, SharedMemory};
use virtio_devices::DeviceError;
use vmm_sys_util::eventfd::EventFd;

const CHILD: &str = "VHOST_USER_LOG_BOUNDS_CHILD";
const TEST: &str = "a_frontend_cannot_make_the_backend_log_without_bound";

const CONFIG_REFUSALS: u64 = 70_000;
const UNSUPPORTED: u64 = 30_000;
const TOGGLES: u64 = 50_000;
const SHORT_SESSIONS: u64 = 10_000;

/// Features and protocol features (REPLY_ACK, CONFIG), the memory table,
/// ring 0 addressed and kicked (not yet enabled).
fn set_up(f: &Front, mem: &Mem, kick: &EventFd) {
    f.negotiate(protocol::REPLY_ACK | protocol::CONFIG);
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
    f.send(&Message::SetVringAddr(mem.ring(0)), false, &[]);
    let kick_msg = Message::SetVringKick(VringFd {
        index: 0,
        has_fd: true,
    });
    f.send(&kick_msg, false, &[kick.as_raw_fd()]);
}

fn enable(on: bool) -> Message {
    Message::SetVringEnable(VringState {
        index: 0,
        num: u32::from(on),
    })
}

/// The child: drives an in-process backend (its log goes to this
/// process's stderr) and prints the backend's totals on stdout.
fn child() {
    let mut backend = Backend::new(
        // An entropy device whose queue always fails.
        Stub::new(|queue| Err(DeviceError::NoSuchQueue { queue })),
        SharedMemory::new(),
        Vec::new(),
    );
    let mem = Mem::new();

    // One session: 100,000 refusals of three kinds and 50,000 device
    // errors (each enabling of the ring activates the device, which fails
    // to serve it).
    let (f, stream) = Front::pair();
    std::thread::scope(|s| {
        let reader = f.0.try_clone().unwrap();
        s.spawn(move || {
            let r = Front(reader);
            r.0.set_read_timeout(None).unwrap();
            while r.reply().is_some() {}
        });
        let mem = &mem;
        s.spawn(move || {
            let kick = EventFd::new(0).unwrap();
            set_up(&f, mem, &kick);
            let too_long = Config {
                offset: 0,
                flags: 0,
                data: vec![0; 16],
            };
            for i in 0..CONFIG_REFUSALS {
                if i % 2 == 0 {
                    f.send(&Message::SetConfig(too_long.clone()), false, &[]);
                } else {
                    let get = Config {
                        offset: 250,
                        ..too_long.clone()
                    };
                    f.send(&Message::GetConfig(get), false, &[]);
                }
            }
            for _ in 0..UNSUPPORTED {
                f.send(&Message::Unsupported(Request::SetLogFd), true, &[]);
            }
            for _ in 0..TOGGLES {
                f.send(&enable(true), false, &[]);
                f.send(&enable(false), false, &[]);
            }
            let _ = f.0.shutdown(std::net::Shutdown::Write);
        });
        let end = backend.serve_connection(stream);
        assert!(matches!(end, SessionEnd::Closed), "{end}");
    });

    // Short sessions: one refused request that closes the connection, or
    // a ring that fails once, or nothing at all.
    let kick = EventFd::new(0).unwrap();
    for i in 0..SHORT_SESSIONS {
        let (f, stream) = Front::pair();
        match i % 3 {
            0 => f.send(&Message::Unsupported(Request::SetLogFd), false, &[]),
            1 => {
                set_up(&f, &mem, &kick);
                f.send(&enable(true), false, &[]);
            }
            _ => {}
        }
        drop(f);
        backend.serve_connection(stream);
    }
    let s = backend.stats();
    println!(
        "TOTALS refused={} device_errors={} sessions={}",
        s.refused, s.device_errors, s.sessions
    );
    drop(backend);
}

/// The lines of kind `kind` the backend said it did not write.
fn suppressed(log: &str, kind: &str) -> u64 {
    let marker = format!("lines of kind \"{kind}\" suppressed");
    log.lines()
        .filter(|l| l.contains(&marker))
        .filter_map(|l| {
            l.strip_prefix("vhost-user: ")?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn total(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| Some(l.split_once("TOTALS ")?.1))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the child's totals:\n{stdout}"))
}

#[test]
fn a_frontend_cannot_make_the_backend_log_without_bound() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the child failed\n{stdout}\n{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("vhost-user:"))
        .collect();
    let head: Vec<&str> = lines.iter().take(40).copied().collect();
    assert!(
        lines.len() < 50,
        "{} lines logged; the first:\n{}",
        lines.len(),
        head.join("\n")
    );

    // The counts are there: the refusals of the long session, by kind ...
    assert_eq!(
        total(&stdout, "refused"),
        CONFIG_REFUSALS + UNSUPPORTED + SHORT_SESSIONS.div_ceil(3)
    );
    for want in [
        format!(
            "refused {CONFIG_REFUSALS} requests this session: configuration access out of range"
        ),
        format!("refused {UNSUPPORTED} requests this session: unsupported request"),
    ] {
        assert!(log.contains(&want), "no '{want}' in\n{log}");
    }
    // ... and for what came too often to be logged line by line, the lines
    // written and those suppressed add up.
    let errors = total(&stdout, "device_errors");
    assert_eq!(errors, TOGGLES + SHORT_SESSIONS / 3);
    let shown = lines.iter().filter(|l| l.contains("device error:")).count() as u64;
    assert_eq!(shown + suppressed(&log, "device error"), errors, "{log}");
    let closed = lines
        .iter()
        .filter(|l| l.contains("connection closed:"))
        .count() as u64;
    assert_eq!(
        closed + suppressed(&log, "session end"),
        SHORT_SESSIONS.div_ceil(3),
        "{log}"
    );
}
