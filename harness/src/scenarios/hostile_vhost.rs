//! The hostile vhost-user peers (issue 16): a frontend that attacks our
//! daemon, and backends that lie to our monitor's frontend, each case
//! with a [`Verdict`] in the suite's verdict table.
//!
//! - `hostile_vhost_frontend_rng`, `hostile_vhost_frontend_blk`: our daemon
//!   (`virtio-harness vhost-user`, a child process, a fresh one per case)
//!   serving rng, resp. blk on a scratch file, against raw frontend
//!   sessions from this process (`raw`): `truncate-memory` (the memfd
//!   behind the memory table cut to nothing, then to below the buffers,
//!   with a request kicked), `flood-bad-requests` (thousands of malformed
//!   or refused requests: acknowledged refusals in one session, then
//!   hundreds of sessions each closed by one bad message; no descriptor
//!   leaked), `disconnect-at-every-step` (a well-behaved session cut after
//!   each of its steps, inside a header, inside a payload, with a reply
//!   unread) and `bad-ring-addresses` (rings enabled and kicked whose
//!   addresses lie outside the memory table, across its end, misaligned,
//!   overlapping, wrapping, or moved while running, with and without
//!   `REPLY_ACK`). After each case the daemon must be alive (else CRASH),
//!   answer a new frontend and serve our monitor booting the tiny rng,
//!   resp. blk guest to its pass line (else WEDGED), and its log must say
//!   what it refused within a bounded number of lines (else the row fails).
//! - `hostile_vhost_backend`: our monitor as the frontend, booting the rng
//!   (one case the blk) tiny guest against a liar (`liar`) standing in
//!   front of an honest backend: replies of the wrong size or for the
//!   wrong request, a configuration space cut short or made of 0xff, a
//!   backend that goes silent at activation, one that dies while the
//!   frontend waits for an acknowledgement and one that dies while the
//!   guest's requests run, and calls with no used buffer behind them. The
//!   monitor must come back with an outcome (or refuse the machine at
//!   realize, naming the lie); where the backend broke the protocol the
//!   slot's report names it; the guest completes (PASS) or gets an error
//!   (REJECT); a panic, a guest fault or wrong data is a CRASH and a run
//!   that does not end a WEDGED.
//!
//! Not covered: a frontend that stalls inside a message (the daemon's
//! `MESSAGE_TIMEOUT` is 10 s per stall), and memory-table attacks beyond
//! truncation and wrapping (the backend's tests cover overlaps and
//! offsets).

use std::os::unix::net::UnixListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{CustomCtx, CustomRun, Scenario, Setup, Workdir, guest_line};
use crate::daemon::Daemon;
use crate::verdict::{self, Verdict, VerdictKind};
use monitor::machine::Machine;
use monitor::vm::{Outcome, Verdict as RunVerdict};
use vhost_user::codec::{
    self, Config, FLAG_REPLY, FLAG_VERSION, MemRegion, Message, Request, VringAddr, VringFd,
    VringState,
};

mod liar;
mod raw;

use liar::Lie;
use raw::{Client, Kind, Mem, RingFds, Step};

/// Longest one guest may run (a hang is what the WEDGED verdict catches).
const VM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long each of the rng guest's requests may take against a liar (the
/// guest's `rng.request_ms`): a request the dead backend will never
/// complete costs this much.
const GUEST_REQUEST_MS: u64 = 2000;

/// The most lines the daemon may log for one case (its own start, the
/// attack, the guest that follows): [`vhost_user::backend::LOG_BURST`]
/// lines of each of some twenty kinds, and their summaries.
const LOG_LINE_LIMIT: usize = 150;

/// The seed of the deterministic rng behind the honest backend.
const SEED: u64 = 0x5eed_0000_0000_0016;

/// Refusals sent in the acknowledged session of `flood-bad-requests`.
const ACKED_FLOOD: usize = 2000;

/// Rounds of the closing messages of `flood-bad-requests` (one session
/// each).
const CLOSING_ROUNDS: usize = 50;

/// The frontend cases, in order.
pub const FRONTEND_CASES: &[&str] = &[
    "truncate-memory",
    "flood-bad-requests",
    "disconnect-at-every-step",
    "bad-ring-addresses",
];

/// The bytes of the daemon's disk (blk).
const DISK: u64 = 16 << 20;

/// What an attack did, for the case's detail, and what the daemon's log
/// must hold after it: for each entry of `logged`, a line with one of its
/// words.
struct Attack {
    detail: String,
    logged: &'static [&'static [&'static str]],
}

impl Kind {
    fn daemon_name(self) -> &'static str {
        match self {
            Kind::Rng => "vhost-user-daemon-rng",
            Kind::Blk => "vhost-user-daemon-blk",
        }
    }

    /// The daemon's (or honest backend's) options; blk gets a scratch disk
    /// in `dir`.
    fn options(self, dir: &Workdir) -> Result<Vec<String>, String> {
        let s = match self {
            Kind::Rng => format!(
                "-object rng-deterministic,id=r0,seed={SEED} -device virtio-rng-device,rng=r0"
            ),
            Kind::Blk => {
                let img = dir.path("disk.img");
                super::sparse_image(&img, DISK)?;
                format!(
                    "-drive if=none,id=d0,file={},format=raw -device virtio-blk-device,drive=d0",
                    img.display()
                )
            }
        };
        Ok(s.split_whitespace().map(String::from).collect())
    }

    /// The frontend device of our monitor.
    fn frontend(self) -> &'static str {
        match self {
            Kind::Rng => "vhost-user-rng,chardev=vu",
            Kind::Blk => "vhost-user-blk,chardev=vu",
        }
    }

    /// The well-behaved guest's command line and the line that says it
    /// was served.
    fn guest_run(self) -> (&'static str, &'static str) {
        match self {
            Kind::Rng => ("rng.mode=irq rng.bytes=65536", "rng: 65536 bytes in "),
            Kind::Blk => (
                "blk.test=pattern blk.mode=irq blk.depth=8 blk.bytes=65536 blk.offset=4096",
                "blk: pattern: 131072 bytes, ",
            ),
        }
    }
}

/// Our monitor's options: 64 MiB of shared RAM, `guest` with `append`,
/// the vhost-user chardev on `socket` and `device` on it.
fn machine_args(guest: &str, append: &str, socket: &Path, device: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "-m",
        "64M",
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-machine",
        "microvm,memory-backend=mem",
        "-kernel",
        guest,
        "-append",
        append,
        "-chardev",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("socket,id=vu,path={}", socket.display()));
    a.extend(["-device".to_string(), device.to_string()]);
    a
}

/// The last non-empty line of `s`.
fn last_line(s: &str) -> &str {
    s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("")
}

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.count())
}

/// `VmRSS` of process `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// The frontend cases

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Runs `steps` on a new connection; the connection, or which step failed
/// (a well-behaved request the daemon refused included).
fn session(
    socket: &Path,
    steps: &[Step],
    mem: &Mem,
    kind: Kind,
    fds: &RingFds,
) -> Result<Client, String> {
    session_with(socket, steps, mem, kind, fds, true)
}

/// [`session`]; with `strict` off, a refusal acknowledged is no failure
/// (the steps hold a bad request on purpose).
fn session_with(
    socket: &Path,
    steps: &[Step],
    mem: &Mem,
    kind: Kind,
    fds: &RingFds,
    strict: bool,
) -> Result<Client, String> {
    let c = io("connecting", Client::connect(socket))?;
    for (i, s) in steps.iter().enumerate() {
        let r =
            raw::run_step(&c, s, mem, kind, fds).map_err(|e| format!("step {i} ({s:?}): {e}"))?;
        let acked = matches!(s, Step::Msg { msg, ack: true, .. } if !msg.has_reply());
        if strict && acked && r != Some(0) {
            return Err(format!("step {i} ({s:?}) refused: status {r:?}"));
        }
    }
    Ok(c)
}

/// The canonical session up to the ring's enable (no request yet).
fn ring_ready(mem: &Mem, fds: &RingFds) -> Vec<Step> {
    let mut steps = raw::canonical(mem, fds);
    let kick = steps
        .iter()
        .position(|s| matches!(s, Step::Kick(_)))
        .unwrap_or(steps.len());
    steps.truncate(kick);
    steps
}

/// `truncate-memory`: a ring runs and serves a request; a second request
/// is made available, the memfd cut (to nothing, then in a new session to
/// below the buffers, the rings left whole) and the ring kicked.
fn truncate_memory(daemon: &mut Daemon, kind: Kind) -> Result<Attack, String> {
    let mut notes = Vec::new();
    for (label, cut) in [("to 0 bytes", 0), ("to 32 KiB, below the buffers", 0x8000)] {
        let mem = io("memfd", Mem::new())?;
        let fds = io("eventfd", RingFds::new())?;
        let c = session(daemon.socket(), &ring_ready(&mem, &fds), &mem, kind, &fds)?;
        io("posting", mem.post(kind, 1, raw::BUFFERS))?;
        io("kick", fds.kick.write(1))?;
        let first = mem.wait_used(1, Duration::from_secs(2));
        io("posting", mem.post(kind, 2, raw::BUFFERS))?;
        io("truncating", mem.truncate(cut))?;
        io("kick", fds.kick.write(1))?;
        std::thread::sleep(Duration::from_millis(100));
        let answer = c
            .send(
                &Message::GetVringBase(VringState { index: 0, num: 0 }),
                false,
                &[],
            )
            .and_then(|()| c.reply());
        drop(c);
        notes.push(format!(
            "cut {label}{}: {}",
            if first {
                ""
            } else {
                " (the first request was not served)"
            },
            match answer {
                Ok(_) => "the session answered after the kick".to_string(),
                Err(e) => format!("the session ended ({e})"),
            }
        ));
        if !daemon.alive() {
            break;
        }
    }
    // Whatever the daemon does about memory that went away, it says so
    // (its counters alone do not).
    Ok(Attack {
        detail: notes.join("; "),
        logged: &[&["error", "refused", "closed", "SIGBUS", "truncat", "shrunk"]],
    })
}

/// Messages refused with an acknowledgement: label, bytes, descriptors.
fn acked_refusals(mem: &Mem, not_eventfd: i32) -> Vec<(&'static str, Vec<u8>, Vec<i32>)> {
    let ack = raw::flags(true);
    let m = |msg: Message| msg.encode(true);
    let ring = |index, num| VringState { index, num };
    let big = MemRegion {
        size: 1 << 30,
        ..mem.region()
    };
    let empty = MemRegion {
        size: 0,
        ..mem.region()
    };
    vec![
        (
            "SET_OWNER with a payload",
            raw::frame(Request::SetOwner.code(), ack, &[0; 8]),
            vec![],
        ),
        (
            "features never offered",
            m(Message::SetFeatures(u64::MAX)),
            vec![],
        ),
        (
            "protocol features never offered",
            m(Message::SetProtocolFeatures(u64::MAX)),
            vec![],
        ),
        (
            "ring size not a power of two",
            m(Message::SetVringNum(ring(0, 3))),
            vec![],
        ),
        (
            "no such ring",
            m(Message::SetVringNum(ring(u32::MAX, 16))),
            vec![],
        ),
        (
            "ring addresses before its size",
            m(Message::SetVringAddr(mem.ring(0))),
            vec![],
        ),
        (
            "base beyond 16 bits",
            m(Message::SetVringBase(ring(0, 0x1_0000))),
            vec![],
        ),
        (
            "kick without descriptor",
            m(Message::SetVringKick(VringFd {
                index: 0,
                has_fd: false,
            })),
            vec![],
        ),
        (
            "call that is not an eventfd",
            m(Message::SetVringCall(VringFd {
                index: 0,
                has_fd: true,
            })),
            vec![not_eventfd],
        ),
        (
            "enable with 7",
            m(Message::SetVringEnable(ring(0, 7))),
            vec![],
        ),
        (
            "region beyond its file",
            m(Message::SetMemTable(vec![big])),
            vec![mem.fd()],
        ),
        (
            "a table of one region with two descriptors",
            m(Message::SetMemTable(vec![mem.region()])),
            vec![mem.fd(), mem.fd()],
        ),
        (
            "unsupported request (SET_LOG_BASE)",
            m(Message::Unsupported(Request::SetLogBase)),
            vec![],
        ),
        (
            "removing a region never added",
            m(Message::RemMemReg(mem.region())),
            vec![],
        ),
        (
            "adding a zero-sized region",
            m(Message::AddMemReg(empty)),
            vec![mem.fd()],
        ),
        (
            "error eventfd announced, none passed",
            m(Message::SetVringErr(VringFd {
                index: 0,
                has_fd: true,
            })),
            vec![],
        ),
        (
            "call with five descriptors",
            m(Message::SetVringCall(VringFd {
                index: 0,
                has_fd: true,
            })),
            vec![not_eventfd; 5],
        ),
        (
            "reserved bits in a kick",
            raw::frame(
                Request::SetVringKick.code(),
                ack,
                &0xffff_0000u64.to_ne_bytes(),
            ),
            vec![],
        ),
        (
            "configuration write out of range",
            m(Message::SetConfig(Config {
                offset: 0xffff_fff0,
                flags: 0,
                data: vec![0; 4],
            })),
            vec![],
        ),
    ]
}

/// Messages after which the daemon must close the connection: label,
/// whether the handshake (with `REPLY_ACK`) comes first, bytes,
/// descriptors.
fn closing_messages(mem: &Mem) -> Vec<(&'static str, bool, Vec<u8>, Vec<i32>)> {
    let v = FLAG_VERSION;
    vec![
        (
            "unknown request before SET_OWNER",
            false,
            raw::frame(9999, v, &[]),
            vec![],
        ),
        (
            "a 1 MiB payload announced",
            false,
            [
                raw::header(Request::SetMemTable.code(), v, 1 << 20),
                vec![0; 64],
            ]
            .concat(),
            vec![],
        ),
        (
            "protocol version 2",
            false,
            raw::frame(Request::GetFeatures.code(), 0x2, &[]),
            vec![],
        ),
        (
            "a request with the reply flag",
            false,
            raw::frame(Request::GetFeatures.code(), v | FLAG_REPLY, &[]),
            vec![],
        ),
        (
            "a kick that is a memfd, first thing",
            false,
            Message::SetVringKick(VringFd {
                index: 0,
                has_fd: true,
            })
            .encode(false),
            vec![mem.fd()],
        ),
        (
            "a memory table of no region",
            false,
            raw::frame(Request::SetMemTable.code(), v, &[0; 8]),
            vec![],
        ),
        (
            "GET_FEATURES with 32 descriptors",
            false,
            Message::GetFeatures.encode(false),
            vec![mem.fd(); codec::MAX_FDS],
        ),
        (
            "GET_VRING_BASE of no ring",
            true,
            Message::GetVringBase(VringState {
                index: 9999,
                num: 0,
            })
            .encode(false),
            vec![],
        ),
        ("12 bytes of 0xff", false, vec![0xff; 12], vec![]),
        (
            "SET_FEATURES of 3 bytes",
            false,
            raw::frame(Request::SetFeatures.code(), v, &[1, 2, 3]),
            vec![],
        ),
    ]
}

/// `flood-bad-requests`: [`ACKED_FLOOD`] refusals acknowledged in one
/// session, then [`CLOSING_ROUNDS`] rounds of messages that each end their
/// session; the daemon's descriptors and memory compared before and
/// after.
fn flood(daemon: &mut Daemon, kind: Kind) -> Result<Attack, String> {
    let pid = daemon.pid();
    let (fds0, rss0) = (fd_count(pid), rss_kib(pid));
    let mem = io("memfd", Mem::new())?;
    let ring = io("eventfd", RingFds::new())?;
    let acked = acked_refusals(&mem, mem.fd());
    let mut c = session(daemon.socket(), &raw::handshake(), &mem, kind, &ring)?;
    let (mut refused, mut sent, mut reconnects) = (0usize, 0usize, 0usize);
    let mut accepted: Vec<&str> = Vec::new();
    for i in 0..ACKED_FLOOD {
        let (label, bytes, fds) = &acked[i % acked.len()];
        sent += 1;
        let status = c.send_raw(bytes, fds).and_then(|()| c.reply_u64());
        match status {
            Ok(0) => {
                if !accepted.contains(label) {
                    accepted.push(label);
                }
            }
            Ok(_) => refused += 1,
            Err(_) => {
                reconnects += 1;
                if !daemon.alive() {
                    return Err(format!("the daemon died at '{label}'"));
                }
                c = session(daemon.socket(), &raw::handshake(), &mem, kind, &ring)?;
            }
        }
    }
    drop(c);
    let closing = closing_messages(&mem);
    let (mut closed, mut open): (usize, Vec<&str>) = (0, Vec::new());
    for _ in 0..CLOSING_ROUNDS {
        for (label, handshake, bytes, fds) in &closing {
            if !daemon.alive() {
                return Err(format!("the daemon died at '{label}'"));
            }
            let steps = if *handshake {
                raw::handshake()
            } else {
                Vec::new()
            };
            let c = session(daemon.socket(), &steps, &mem, kind, &ring)?;
            sent += 1;
            // The daemon may close before reading all of it.
            let _ = c.send_raw(bytes, fds);
            if c.closed_within(Duration::from_secs(2)) {
                closed += 1;
            } else if !open.contains(label) {
                open.push(label);
            }
        }
    }
    // A new session answers once the daemon is done with the last one.
    let probe = session(daemon.socket(), &raw::handshake(), &mem, kind, &ring);
    let (fds1, rss1) = (fd_count(pid), rss_kib(pid));
    drop(probe);
    let mut detail = format!(
        "{sent} bad messages: {refused} of {ACKED_FLOOD} refused with an acknowledgement \
         ({reconnects} reconnections), {closed} of {} sessions closed by the daemon",
        CLOSING_ROUNDS * closing.len()
    );
    if !accepted.is_empty() {
        detail.push_str(&format!("; accepted: {}", accepted.join(", ")));
    }
    if !open.is_empty() {
        detail.push_str(&format!("; left open: {}", open.join(", ")));
    }
    if let (Some(a), Some(b)) = (fds0, fds1) {
        detail.push_str(&format!("; descriptors {a} -> {b}"));
        // The probe's session holds a socket and an epoll descriptor.
        if b > a + 4 {
            return Err(format!("the daemon leaks descriptors: {detail}"));
        }
    }
    if let (Some(a), Some(b)) = (rss0, rss1) {
        detail.push_str(&format!("; RSS {a} -> {b} KiB"));
        if b > a + (32 << 10) {
            return Err(format!("the daemon's memory grew: {detail}"));
        }
    }
    Ok(Attack {
        detail,
        logged: &[&["refused: "], &["refused "], &["connection closed: "]],
    })
}

/// Where a disconnecting session stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// After its steps, between messages.
    Between,
    /// Five bytes into the next message's header (its descriptors sent).
    InHeader,
    /// Halfway through the next message's payload.
    InPayload,
    /// The next request sent whole, its reply never read.
    ReplyUnread,
}

/// `disconnect-at-every-step`: the canonical session, cut after each of
/// its steps in every [`Cut`] way.
fn disconnect(daemon: &mut Daemon, kind: Kind) -> Result<Attack, String> {
    let mem = io("memfd", Mem::new())?;
    let fds = io("eventfd", RingFds::new())?;
    let steps = raw::canonical(&mem, &fds);
    let mut sessions = 0;
    for k in 0..=steps.len() {
        for cut in [
            Cut::Between,
            Cut::InHeader,
            Cut::InPayload,
            Cut::ReplyUnread,
        ] {
            let next = steps.get(k);
            let bytes = next.map(Step::bytes).unwrap_or_default();
            let partial: &[u8] = match (cut, next) {
                (Cut::Between, _) => &[],
                (Cut::InHeader, Some(_)) if !bytes.is_empty() => &bytes[..5],
                (Cut::InPayload, Some(_)) if bytes.len() > codec::HEADER_LEN => {
                    &bytes[..codec::HEADER_LEN + (bytes.len() - codec::HEADER_LEN) / 2]
                }
                (Cut::ReplyUnread, Some(s)) if s.has_reply() => &bytes,
                _ => continue,
            };
            if partial.is_empty() && cut != Cut::Between {
                continue;
            }
            // Each session starts from clean rings.
            io("clearing", mem.write(raw::AVAIL, &[0; 64]))?;
            io("clearing", mem.write(raw::USED, &[0; 256]))?;
            let c = session(daemon.socket(), &steps[..k], &mem, kind, &fds)
                .map_err(|e| format!("a well-behaved session cut after {k} steps: {e}"))?;
            if !partial.is_empty() {
                // The daemon may close first (a partial header it cannot
                // decode yet is not its fault either way).
                let _ = c.send_raw(partial, next.map(Step::fds).unwrap_or_default());
            }
            drop(c);
            sessions += 1;
            if !daemon.alive() {
                return Err(format!("the daemon died after step {k} cut {cut:?}"));
            }
        }
    }
    Ok(Attack {
        detail: format!(
            "{sessions} sessions of the {}-step canonical session, cut between steps, \
             inside a header, inside a payload, with a reply unread",
            steps.len()
        ),
        logged: &[&["disconnected inside a message"]],
    })
}

/// One bad-address case: its label, how the memory table and ring
/// addresses are made, and whether the ring runs first (then moves).
struct BadRing {
    label: &'static str,
    region: fn(MemRegion) -> MemRegion,
    addr: fn(VringAddr) -> VringAddr,
    running_first: bool,
}

/// The bad-address cases (ring of [`raw::RING_SIZE`] entries).
fn bad_rings() -> Vec<BadRing> {
    const END: u64 = raw::USER_BASE + raw::MEM_SIZE;
    let same = |r: MemRegion| r;
    macro_rules! ring {
        ($label:literal, |$a:ident| $body:expr) => {
            BadRing {
                label: $label,
                region: same,
                addr: |mut $a: VringAddr| {
                    $body;
                    $a
                },
                running_first: false,
            }
        };
    }
    let mut v = vec![
        ring!("descriptors past the end", |a| a.desc = END),
        ring!("available ring across the end", |a| a.avail = END - 16),
        ring!("used ring below the region", |a| a.used =
            raw::USER_BASE - 0x1000),
        ring!("descriptors misaligned", |a| a.desc += 1),
        ring!("available ring misaligned", |a| a.avail += 1),
        ring!("used ring misaligned", |a| a.used += 2),
        ring!("descriptors wrapping the address space", |a| a.desc =
            u64::MAX - 0x7f),
        ring!("all at address 0", |a| {
            a.desc = 0;
            a.avail = 0;
            a.used = 0
        }),
        ring!("all three areas on one page", |a| {
            a.avail = a.desc;
            a.used = a.desc
        }),
        ring!("used ring over the descriptors", |a| a.used = a.desc + 0x80),
        ring!("no such ring", |a| a.index = 4096),
        ring!("logging asked, log address bogus", |a| {
            a.flags = 1;
            a.log = u64::MAX
        }),
    ];
    v.push(BadRing {
        label: "region wrapping the address space",
        region: |r| MemRegion {
            user_addr: u64::MAX - 0xfff,
            ..r
        },
        addr: |a| VringAddr {
            desc: (u64::MAX - 0xfff).wrapping_add(raw::DESC),
            avail: (u64::MAX - 0xfff).wrapping_add(raw::AVAIL),
            used: (u64::MAX - 0xfff).wrapping_add(raw::USED),
            ..a
        },
        running_first: false,
    });
    v.push(BadRing {
        label: "running ring moved outside",
        region: same,
        addr: |a| VringAddr { desc: END, ..a },
        running_first: true,
    });
    v
}

/// `bad-ring-addresses`: for each [`bad_rings`] case, a session with
/// `REPLY_ACK` (the ring enabled, kicked and given its call before it gets
/// the bad addresses, then a request kicked) and one without (the daemon
/// must close it when it refuses).
fn bad_ring_addresses(daemon: &mut Daemon, kind: Kind) -> Result<Attack, String> {
    let (mut refused, mut closed, mut runs) = (0, 0, 0);
    let mut accepted = Vec::new();
    let cases = bad_rings();
    for case in &cases {
        for ack in [true, false] {
            let mem = io("memfd", Mem::new())?;
            let fds = io("eventfd", RingFds::new())?;
            let mut steps = ring_ready(&mem, &fds);
            for s in &mut steps {
                if let Step::Msg { msg, ack: a, .. } = s {
                    if let Message::SetMemTable(r) = msg {
                        r[0] = (case.region)(r[0]);
                    }
                    if !ack && matches!(msg, Message::SetProtocolFeatures(_)) {
                        *msg = Message::SetProtocolFeatures(
                            codec::protocol::MQ | codec::protocol::CONFIG,
                        );
                    }
                    if !ack {
                        *a = false;
                    }
                }
            }
            // Enabled, kicked and called before it is addressed.
            let addr_at = steps
                .iter()
                .position(|s| {
                    matches!(
                        s,
                        Step::Msg {
                            msg: Message::SetVringAddr(_),
                            ..
                        }
                    )
                })
                .unwrap_or(0);
            let addr_step = steps.remove(addr_at);
            if case.running_first {
                steps.push(addr_step);
            }
            // The wrapping region's memory table is refused on purpose.
            let c = match session_with(daemon.socket(), &steps, &mem, kind, &fds, false) {
                Ok(c) => c,
                // Without REPLY_ACK a refused memory table closes the
                // session before the ring.
                Err(_) if !ack => {
                    closed += 1;
                    continue;
                }
                Err(e) => return Err(format!("{}: {e}", case.label)),
            };
            let mut used = 0;
            if case.running_first {
                io("posting", mem.post(kind, 1, raw::BUFFERS))?;
                io("kick", fds.kick.write(1))?;
                if mem.wait_used(1, Duration::from_secs(2)) {
                    used = 1;
                }
            }
            let bad = Message::SetVringAddr((case.addr)(mem.ring(0)));
            let outcome = if ack {
                match c.ack(&bad, &[]) {
                    Ok(0) => "accepted",
                    Ok(_) => "refused",
                    Err(_) => "closed",
                }
            } else {
                let _ = c.send(&bad, false, &[]);
                if c.closed_within(Duration::from_secs(1)) {
                    "closed"
                } else {
                    "accepted"
                }
            };
            match outcome {
                "refused" => refused += 1,
                "closed" => closed += 1,
                _ => {
                    if !accepted.contains(&case.label) {
                        accepted.push(case.label);
                    }
                }
            }
            if outcome != "closed" {
                // A request on the ring as it now stands: served where the
                // ring is whole (the moved one keeps its old place).
                let _ = mem.post(kind, used + 1, raw::BUFFERS);
                let _ = fds.kick.write(1);
                if mem.wait_used(used + 1, Duration::from_millis(50)) {
                    runs += 1;
                }
                let _ = c
                    .send(
                        &Message::GetVringBase(VringState { index: 0, num: 0 }),
                        false,
                        &[],
                    )
                    .and_then(|()| c.reply());
            }
            drop(c);
            if !daemon.alive() {
                return Err(format!(
                    "the daemon died at '{}' ({})",
                    case.label,
                    if ack { "REPLY_ACK" } else { "no REPLY_ACK" }
                ));
            }
        }
    }
    let mut detail = format!(
        "{} cases x (REPLY_ACK, none): {refused} refused, {closed} closed, {} accepted; \
         {runs} rings served a request after",
        cases.len(),
        accepted.len()
    );
    if !accepted.is_empty() {
        detail.push_str(&format!(" (accepted: {})", accepted.join(", ")));
    }
    Ok(Attack {
        detail,
        logged: &[&["outside the mapped memory"], &["aligned (§2.7)"]],
    })
}

/// A new frontend's `GET_FEATURES` is answered.
fn probe(socket: &Path) -> Result<(), String> {
    let c = io("connecting", Client::connect(socket))?;
    io("GET_FEATURES", c.get_u64(&Message::GetFeatures)).map(|_| ())
}

/// Boots `guest` with our monitor as the frontend of `kind` on `socket`.
fn boot(kind: Kind, guest: &str, socket: &Path) -> Result<Outcome, String> {
    let (append, _) = kind.guest_run();
    let args = machine_args(guest, append, socket, kind.frontend());
    let config = monitor::options::parse(&args).map_err(|e| format!("options: {e}"))?;
    let mut m = Machine::new(&config).map_err(|e| e.to_string())?;
    m.run(VM_TIMEOUT).map_err(|e| e.to_string())
}

/// What one frontend case came to: its verdict, the well-behaved guest's
/// outcome, and why the row fails although the verdict may be PASS.
struct CaseEnd {
    verdict: Verdict,
    outcome: Option<Outcome>,
    problem: Option<String>,
}

/// One frontend case against a fresh daemon: the attack, then the
/// daemon's liveness, a new frontend, a guest, and its log.
fn frontend_case(bin: &Path, kind: Kind, guests: &Guests, case: &'static str) -> CaseEnd {
    let verdict = |kind_: VerdictKind, detail: String| Verdict {
        device: kind.daemon_name().into(),
        case: case.into(),
        kind: kind_,
        detail,
    };
    let end = |v, outcome, problem| CaseEnd {
        verdict: v,
        outcome,
        problem,
    };
    let setup = Workdir::new(&format!("hostile-vhost-{case}"))
        .map_err(|e| format!("work directory: {e}"))
        .and_then(|dir| {
            let opts = kind.options(&dir)?;
            let d = Daemon::ours(bin, dir.path("vu.sock"), &opts, false)?;
            Ok((dir, d))
        });
    let (_dir, mut daemon) = match setup {
        Ok(x) => x,
        Err(e) => {
            let p = format!("{case}: set-up: {e}");
            return end(verdict(VerdictKind::Crash, p.clone()), None, Some(p));
        }
    };
    let start = daemon.output().lines().count();
    let attack = match case {
        "truncate-memory" => truncate_memory(&mut daemon, kind),
        "flood-bad-requests" => flood(&mut daemon, kind),
        "disconnect-at-every-step" => disconnect(&mut daemon, kind),
        _ => bad_ring_addresses(&mut daemon, kind),
    };
    let attack_log = daemon.output();
    let said = |a: &Result<Attack, String>| match a {
        Ok(a) => a.detail.clone(),
        Err(e) => e.clone(),
    };
    let dead = |daemon: &mut Daemon, when: &str, a: &Result<Attack, String>| {
        daemon.exit_status().map(|status| {
            format!(
                "the daemon died {when} ({status}): {}; its last line: '{}'",
                said(a),
                last_line(&daemon.output())
            )
        })
    };
    if let Some(d) = dead(&mut daemon, "during the attack", &attack) {
        return end(verdict(VerdictKind::Crash, d), None, None);
    }
    let attack = match attack {
        Ok(a) => a,
        Err(e) => return end(verdict(VerdictKind::Wedged, e), None, None),
    };
    if let Err(e) = probe(daemon.socket()) {
        let a = Ok(attack);
        if let Some(d) = dead(&mut daemon, "after the attack", &a) {
            return end(verdict(VerdictKind::Crash, d), None, None);
        }
        return end(
            verdict(
                VerdictKind::Wedged,
                format!("{}; then a new frontend got no answer: {e}", said(&a)),
            ),
            None,
            None,
        );
    }
    let (_, pass_line) = kind.guest_run();
    let guest = match kind {
        Kind::Rng => guests.rng,
        Kind::Blk => guests.blk,
    };
    let booted = match guest {
        Some(g) => boot(kind, g, daemon.socket()),
        None => Err("the guest is not built".into()),
    };
    let served = match &booted {
        Ok(o) if o.verdict.is_pass() && o.serial.contains(pass_line) => Ok(o.boot_to_exit),
        Ok(o) => Err(format!("the guest: {}", o.verdict)),
        Err(e) => Err(e.clone()),
    };
    let outcome = booted.ok();
    let served = match served {
        Ok(t) => t,
        Err(e) => {
            let a = Ok(attack);
            if let Some(d) = dead(&mut daemon, "serving the next guest", &a) {
                return end(verdict(VerdictKind::Crash, d), outcome, None);
            }
            return end(
                verdict(
                    VerdictKind::Wedged,
                    format!("{}; then the next guest was not served: {e}", said(&a)),
                ),
                outcome,
                None,
            );
        }
    };
    // The log: what the attack caused says what was refused; the whole
    // is bounded.
    let new: Vec<&str> = attack_log.lines().skip(start).collect();
    let total = daemon.output().lines().count();
    let mut problem = None;
    let missing: Vec<&[&str]> = attack
        .logged
        .iter()
        .copied()
        .filter(|words| !new.iter().any(|l| words.iter().any(|w| l.contains(w))))
        .collect();
    if !missing.is_empty() {
        problem = Some(format!(
            "{case}: the daemon's log has no line with {missing:?}:\n{}",
            new.join("\n")
        ));
    } else if total > LOG_LINE_LIMIT {
        problem = Some(format!(
            "{case}: the daemon logged {total} lines (more than {LOG_LINE_LIMIT})"
        ));
    }
    let example = attack
        .logged
        .first()
        .and_then(|words| new.iter().find(|l| words.iter().any(|w| l.contains(w))))
        .or(new.first())
        .map(|l| l.trim_start_matches("vhost-user: "))
        .unwrap_or("");
    let detail = format!(
        "{}; alive, next guest served in {:.0} ms; log: {} lines, e.g. '{example}'",
        attack.detail,
        served.as_secs_f64() * 1e3,
        total
    );
    end(verdict(VerdictKind::Pass, detail), outcome, problem)
}

/// The guests the rows boot.
#[derive(Clone, Copy, Debug)]
struct Guests {
    rng: Option<&'static str>,
    blk: Option<&'static str>,
}

const GUESTS: Guests = Guests {
    rng: option_env!("GUEST_RNG"),
    blk: option_env!("GUEST_BLK"),
};

/// The row of our daemon serving `kind` against the frontend cases.
fn frontend_row(kind: Kind) -> Result<Setup, String> {
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        let Some(bin) = ctx.env.harness_bin.clone() else {
            return CustomRun {
                result: Err(
                    "no virtio-harness binary to run the daemon (RunEnv::harness_bin)".into(),
                ),
                outcome: None,
                skipped: None,
            };
        };
        let mut verdicts = Vec::new();
        let mut errors = Vec::new();
        let mut last = None;
        for case in FRONTEND_CASES {
            let t0 = Instant::now();
            let e = frontend_case(&bin, kind, &GUESTS, case);
            let v = e.verdict;
            ctx.notes.push(format!(
                "{} {}: {} ({:.1} s): {}",
                v.device,
                v.case,
                v.kind,
                t0.elapsed().as_secs_f64(),
                v.detail
            ));
            if !v.kind.is_acceptable() {
                errors.push(format!("{} {}: {}", v.case, v.kind, v.detail));
            }
            errors.extend(e.problem);
            verdicts.push(v);
            last = e.outcome.or(last);
        }
        verdict::record(&verdicts);
        let refs: Vec<&Verdict> = verdicts.iter().collect();
        ctx.notes.insert(
            0,
            format!("{}: {}", kind.daemon_name(), verdict::summary(&refs)),
        );
        CustomRun {
            result: if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            },
            outcome: last,
            skipped: None,
        }
    }))
}

// ---------------------------------------------------------------------------
// The backend cases

/// What the monitor must answer a lie with.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// The machine is refused at realize with an error holding this.
    Refused(&'static str),
    /// The slot reports the backend gone, with this in the reason; the
    /// guest gets an error.
    Fault(&'static str),
    /// The guest completes and checks every byte; no fault.
    Completes,
    /// The guest completes or gets an error (the backend kept the
    /// protocol; what it said is nonsense the guest may refuse).
    Either,
}

/// One lie told to our frontend.
struct LieCase {
    case: &'static str,
    lie: Lie,
    kind: Kind,
    want: Want,
}

/// The backend cases, in order.
const LIE_CASES: &[LieCase] = &[
    LieCase {
        case: "wrong-reply-size",
        lie: Lie::FeaturesReplyShort,
        kind: Kind::Rng,
        want: Want::Refused("GetFeatures: bad reply: 4 bytes"),
    },
    LieCase {
        case: "wrong-reply-request",
        lie: Lie::FeaturesReplyWrongRequest,
        kind: Kind::Rng,
        want: Want::Refused("GetFeatures: bad reply: reply to request 15"),
    },
    LieCase {
        case: "wrong-ack-size",
        lie: Lie::AckShort,
        kind: Kind::Rng,
        want: Want::Fault("SetMemTable: bad reply: 4 bytes"),
    },
    LieCase {
        case: "bogus-config-size",
        lie: Lie::ConfigShort,
        kind: Kind::Blk,
        want: Want::Refused("GetConfig: bad reply"),
    },
    LieCase {
        case: "bogus-config-garbage",
        lie: Lie::ConfigGarbage,
        kind: Kind::Blk,
        want: Want::Either,
    },
    LieCase {
        case: "never-replies",
        lie: Lie::NeverReplies,
        kind: Kind::Rng,
        want: Want::Fault("SetFeatures: the backend did not answer within"),
    },
    LieCase {
        case: "dies-mid-request",
        lie: Lie::DiesAtMemTable,
        kind: Kind::Rng,
        want: Want::Fault("closed the connection (SetMemTable)"),
    },
    LieCase {
        case: "dies-mid-run",
        lie: Lie::DiesMidRun,
        kind: Kind::Rng,
        want: Want::Fault("hung up"),
    },
    LieCase {
        case: "calls-without-cause",
        lie: Lie::CallsWithoutCause,
        kind: Kind::Rng,
        want: Want::Completes,
    },
];

/// The device name of the backend cases' verdicts.
const FRONTEND_DEVICE: &str = "vhost-user-frontend";

/// How one machine against a liar ended.
enum MachineEnd {
    /// The options did not parse (a bug here).
    BadOptions(String),
    /// `Machine::new` refused (the handshake failed).
    Refused(String),
    /// `Machine::run` failed.
    RunFailed(String),
    /// The guest ran.
    Ran(Box<Outcome>),
}

/// The guest's command line for `case`.
fn lie_append(case: &LieCase) -> String {
    match case.kind {
        Kind::Rng => {
            // Dying mid-run needs a run that lasts.
            let bytes = if case.lie == Lie::DiesMidRun {
                256 << 20
            } else {
                64 << 10
            };
            format!(
                "rng.mode=irq rng.seed={SEED} rng.bytes={bytes} rng.request_ms={GUEST_REQUEST_MS}"
            )
        }
        Kind::Blk => {
            "blk.test=pattern blk.mode=irq blk.depth=8 blk.bytes=65536 blk.offset=4096".into()
        }
    }
}

/// One lie against our monitor: its verdict, the outcome, and why the row
/// fails if the answer was not the one wanted.
fn lie_case(case: &LieCase, guests: &Guests) -> CaseEnd {
    let verdict = |kind: VerdictKind, detail: String| Verdict {
        device: FRONTEND_DEVICE.into(),
        case: case.case.into(),
        kind,
        detail,
    };
    let fail = |why: String| CaseEnd {
        verdict: verdict(VerdictKind::Crash, why.clone()),
        outcome: None,
        problem: Some(format!("{}: {why}", case.case)),
    };
    let guest = match case.kind {
        Kind::Rng => guests.rng,
        Kind::Blk => guests.blk,
    };
    let Some(guest) = guest else {
        return fail("the guest is not built".into());
    };
    let dir = match Workdir::new(&format!("hostile-vhost-{}", case.case)) {
        Ok(d) => d,
        Err(e) => return fail(format!("work directory: {e}")),
    };
    let honest = match case.kind.options(&dir) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    let socket: PathBuf = dir.path("liar.sock");
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => return fail(format!("{}: {e}", socket.display())),
    };
    let liar = liar::spawn(listener, case.lie, honest);
    let args = machine_args(guest, &lie_append(case), &socket, case.kind.frontend());
    let t0 = Instant::now();
    let ran = catch_unwind(AssertUnwindSafe(|| {
        let config = match monitor::options::parse(&args) {
            Ok(c) => c,
            Err(e) => return MachineEnd::BadOptions(e.to_string()),
        };
        let mut m = match Machine::new(&config) {
            Ok(m) => m,
            Err(e) => return MachineEnd::Refused(e.to_string()),
        };
        match m.run(VM_TIMEOUT) {
            Ok(o) => MachineEnd::Ran(Box::new(o)),
            Err(e) => MachineEnd::RunFailed(e.to_string()),
        }
    }));
    let took = t0.elapsed();
    // The machine is gone (its socket closed): the liar ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !liar.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let told = if liar.is_finished() {
        liar.join()
            .unwrap_or_else(|_| Err("the liar panicked".into()))
    } else {
        Err("the liar did not end after the machine".into())
    };
    let ran = match ran {
        Ok(r) => r,
        Err(p) => {
            let why = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            return CaseEnd {
                verdict: verdict(VerdictKind::Crash, format!("the monitor panicked: {why}")),
                outcome: None,
                problem: None,
            };
        }
    };
    let told = match told {
        Ok(t) => t,
        Err(e) => return fail(format!("the liar: {e}")),
    };
    judge_lie(case, ran, took, &told, verdict)
}

/// The verdict of one lie and whether it was the answer wanted.
fn judge_lie(
    case: &LieCase,
    ran: MachineEnd,
    took: Duration,
    told: &liar::Told,
    verdict: impl Fn(VerdictKind, String) -> Verdict,
) -> CaseEnd {
    let lie = format!(
        "{} requests, {}{}",
        told.requests,
        if told.told {
            "lie told"
        } else {
            "lie NOT told"
        },
        if told.calls > 0 {
            format!(", {} calls without cause", told.calls)
        } else {
            String::new()
        }
    );
    let mut problem = (!told.told).then(|| format!("{}: the lie was never told", case.case));
    let want = |ok: bool, what: &str, problem: &mut Option<String>| {
        if !ok && problem.is_none() {
            *problem = Some(format!("{}: want {what}", case.case));
        }
    };
    let (kind, detail, outcome) = match ran {
        MachineEnd::BadOptions(e) => {
            return CaseEnd {
                verdict: verdict(VerdictKind::Crash, format!("options: {e}")),
                outcome: None,
                problem: Some(format!("{}: options: {e}", case.case)),
            };
        }
        MachineEnd::RunFailed(e) => (VerdictKind::Crash, format!("the run failed: {e}"), None),
        MachineEnd::Refused(e) => {
            let ok = matches!(case.want, Want::Refused(f) if e.contains(f));
            want(
                ok,
                &format!("{:?}, got the machine refused: {e}", case.want),
                &mut problem,
            );
            (VerdictKind::Reject, format!("machine refused: {e}"), None)
        }
        MachineEnd::Ran(o) => {
            let slot = o.devices.first();
            let fault = slot.and_then(|s| s.fault.clone()).unwrap_or_default();
            let interrupts = slot.map_or(0, |s| s.counters.interrupts);
            let last = o
                .serial
                .lines()
                .rev()
                .find(|l| l.starts_with("rng: ") || l.starts_with("blk: "))
                .unwrap_or("")
                .to_string();
            // What the blk guest read from the configuration space.
            let disk = o
                .serial
                .lines()
                .find(|l| l.starts_with("blk: disk "))
                .map(|l| format!(" ({})", l.trim_start_matches("blk: ")))
                .unwrap_or_default();
            let (kind, what) = match &o.verdict {
                RunVerdict::Pass => (VerdictKind::Pass, format!("guest completed: {last}{disk}")),
                RunVerdict::Fail(m) if m.contains("exception") || m.contains("SplitMix64") => {
                    (VerdictKind::Crash, format!("guest: {m}"))
                }
                RunVerdict::Fail(m) => (VerdictKind::Reject, format!("guest: {m}")),
                RunVerdict::Timeout(_) | RunVerdict::Halted(_) => {
                    (VerdictKind::Wedged, format!("guest: {}", o.verdict))
                }
                v => (VerdictKind::Crash, format!("guest: {v}")),
            };
            let kind = if took > VM_TIMEOUT + Duration::from_secs(10) {
                VerdictKind::Wedged
            } else {
                kind
            };
            match case.want {
                Want::Refused(_) => {
                    want(false, &format!("{:?}, got a run", case.want), &mut problem)
                }
                Want::Fault(f) => want(
                    fault.contains("vhost-user backend gone") && fault.contains(f),
                    &format!("the slot to report the backend gone with '{f}', got '{fault}'"),
                    &mut problem,
                ),
                Want::Completes => want(
                    kind == VerdictKind::Pass
                        && fault.is_empty()
                        && guest_line(&o, "rng: ").is_some()
                        && o.serial.contains("bytes match the SplitMix64 stream"),
                    "the guest to complete and every byte to match, with no fault",
                    &mut problem,
                ),
                Want::Either => {}
            }
            let detail = if fault.is_empty() {
                format!("{what}; {interrupts} interrupts")
            } else {
                format!("{what}; slot: {fault}")
            };
            (kind, detail, Some(*o))
        }
    };
    CaseEnd {
        verdict: verdict(
            kind,
            format!("{detail} ({lie}, {:.1} s)", took.as_secs_f64()),
        ),
        outcome,
        problem,
    }
}

/// The row of our monitor against the liars.
fn backend_row() -> Result<Setup, String> {
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        let mut verdicts = Vec::new();
        let mut errors = Vec::new();
        let mut last = None;
        for case in LIE_CASES {
            let e = lie_case(case, &GUESTS);
            let v = e.verdict;
            ctx.notes
                .push(format!("{} {}: {}: {}", v.device, v.case, v.kind, v.detail));
            if !v.kind.is_acceptable() {
                errors.push(format!("{} {}: {}", v.case, v.kind, v.detail));
            }
            errors.extend(e.problem);
            verdicts.push(v);
            last = e.outcome.or(last);
        }
        verdict::record(&verdicts);
        let refs: Vec<&Verdict> = verdicts.iter().collect();
        ctx.notes
            .insert(0, format!("{FRONTEND_DEVICE}: {}", verdict::summary(&refs)));
        CustomRun {
            result: if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            },
            outcome: last,
            skipped: None,
        }
    }))
}

/// The rows of this module, in suite order.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "hostile_vhost_frontend_rng",
            device: "vhost-user daemon, raw frontend",
            backend: "ours (rng-deterministic)",
            guest: option_env!("GUEST_RNG"),
            setup: |_| frontend_row(Kind::Rng),
        },
        Scenario {
            name: "hostile_vhost_frontend_blk",
            device: "vhost-user daemon, raw frontend",
            backend: "ours (raw file)",
            guest: option_env!("GUEST_BLK"),
            setup: |_| frontend_row(Kind::Blk),
        },
        Scenario {
            name: "hostile_vhost_backend",
            device: "vhost-user-rng/-blk (our monitor)",
            backend: "lying backends, 9 cases",
            guest: option_env!("GUEST_RNG"),
            setup: |_| backend_row(),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_a_distinct_name() {
        let mut names: Vec<&str> = FRONTEND_CASES.to_vec();
        names.extend(LIE_CASES.iter().map(|c| c.case));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }

    #[test]
    fn the_canonical_session_decodes_step_by_step() {
        let mem = Mem::new().unwrap();
        let fds = RingFds::new().unwrap();
        for s in raw::canonical(&mem, &fds) {
            let bytes = s.bytes();
            if bytes.is_empty() {
                continue;
            }
            let got = codec::decode_all(&bytes, s.fds().len());
            assert!(matches!(got.as_slice(), [Ok(_)]), "{s:?}: {got:?}");
        }
    }

    #[test]
    fn the_acknowledged_refusals_can_be_acknowledged() {
        // A refusal gets a REPLY_ACK failure only if its header is sound,
        // names a request and asks for a reply; a GET_* request would owe
        // its own answer instead.
        let mem = Mem::new().unwrap();
        let list = acked_refusals(&mem, mem.fd());
        assert!(list.len() >= 15);
        for (label, bytes, _) in &list {
            let h = codec::decode_header(bytes).unwrap_or_else(|e| panic!("{label}: {e}"));
            let r = Request::from_code(h.request).unwrap_or_else(|| panic!("{label}"));
            assert!(h.need_reply(), "{label}");
            assert!(!format!("{r:?}").starts_with("Get"), "{label}");
        }
    }

    #[test]
    fn the_closing_messages_cannot_be_acknowledged() {
        // Each breaks the framing or names no request, or owes a reply it
        // cannot have: the daemon can only close the connection.
        let mem = Mem::new().unwrap();
        for (label, _, bytes, _) in closing_messages(&mem) {
            let framing = codec::decode_header(&bytes);
            let closes = match framing {
                Err(_) => true,
                Ok(h) => {
                    !h.need_reply()
                        || Request::from_code(h.request)
                            .is_none_or(|r| format!("{r:?}").starts_with("Get"))
                }
            };
            assert!(closes, "{label}");
        }
    }
}
