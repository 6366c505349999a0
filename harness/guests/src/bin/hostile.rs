//! Scenario `hostile`: a guest that deliberately breaks the spec against
//! each device it finds (entropy §5.4, console §5.3, block §5.2, network
//! §5.1), one case at a time, through `guest_rt::raw`, and prints a
//! verdict per case. The contract (also in `harness/guests/README.md`):
//!
//! ```text
//! plan: <device> <n>                          cases about to run on it
//! case: <device> <case>                       before a case
//! hostile: <device>-<case>: rule §… / <outcome> (status …) / survived (…)
//! verdict: <device> <case> PASS|REJECT|WEDGED|CRASH <detail>
//! serving: <other> ok after <device> cases (<what>)   | serving: <other> FAIL …
//! summary: <device> <p> PASS, <r> REJECT, <w> WEDGED, <c> CRASH
//! hostile: <n> case(s) run, <m> skipped
//! ```
//!
//! `<device>` is `rng`, `console`, `blk` or `net`. The cases, all
//! table-driven: the generic ring cases of [`ring::RINGS`] against every
//! device's queue under test (rng requestq, console port-0 transmitq, blk
//! queue 0, net transmitq1), the register cases of [`regs::REGS`] against
//! every device, and the device-specific [`blk::BLK_CASES`] and
//! [`net::NET_CASES`]. The verdict rules (guest side):
//!
//! - REJECT: the device set DEVICE_NEEDS_RESET (§2.1.2), completed the
//!   malformed blk request with IOERR/UNSUPP (§5.2.6) while serving the
//!   follow-up, or refused a register/status write (status reads back
//!   without the bit, §2.2.2, §3.1.1).
//! - PASS: the device went on serving the queue: the malformed chain was
//!   returned (any used length; §2.7.8 lets a device return a buffer
//!   having written nothing) or dropped, and the well-formed follow-up
//!   chain posted behind it was used; a write to a read-only register or
//!   beyond the configuration space was ignored (§4.2.2); an out-of-order
//!   status write was tolerated (the spec binds the driver there).
//! - WEDGED: no DEVICE_NEEDS_RESET and the follow-up was not used within
//!   the bounded wait (the queue is stuck), or the device did not work
//!   after a reset and a clean initialisation. The guest then resets the
//!   device and goes on.
//! - CRASH: the device wrote guest memory outside the device-writable
//!   buffers it was given (canaries), or broke a device-side rule the
//!   guest can see ("device fault": a read-only register changed, a
//!   not-ready queue used, FEATURES_OK kept with a bit never offered).
//!   The host adds CRASH for a started case without a verdict when the
//!   guest faulted or the monitor failed, WEDGED when the run timed out.
//!
//! After each device's cases every other device present is checked to
//! still serve (rng read, console line, blk sector read, net frame looped
//! back). `hostile.case=<name>` runs selected cases (names are
//! `<device prefix><case>`: no prefix for the rng, `console-`, `blk-`,
//! `net-tx-` for the generic cases on the net device, `net-` for its
//! register cases); `hostile.device=<device>` runs one device's cases.
#![no_std]
#![no_main]

use core::fmt::{self, Write};

use guest_driver::blk::{Blk, BlkOptions};
use guest_driver::{Console, ConsoleOptions, Polls, Rng, RngOptions};
use guest_rt::raw::{self, Case, CaseResult, NetMemory, RawDevice, RawError, RawMemory};
use guest_rt::virtio::DeviceKind;
use guest_rt::{BootInfo, MemoryKind, exit, println};
use virtio_core::features::{DeviceType, TransportFeatures};
use virtio_core::status::DeviceStatus;

#[path = "hostile/blk.rs"]
mod blk;
#[path = "hostile/net.rs"]
mod net;
#[path = "hostile/regs.rs"]
mod regs;
#[path = "hostile/ring.rs"]
mod ring;

guest_rt::entry!(main);

/// `VIRTQ_DESC_F_NEXT` (§2.7.5).
const NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE` (§2.7.5).
const WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT` (§2.7.5.3).
const INDIRECT: u16 = 4;
/// Bytes of each case's ordinary buffer.
const LEN: u32 = 64;
/// Queue size of the cases.
const SIZE: u16 = 16;
/// Bytes the survival check reads.
const SURVIVAL_BYTES: usize = 64;
/// Poll budget of the survival read.
const SURVIVAL_POLLS: u64 = 50_000_000;

const INDIRECT_DESC: u64 = TransportFeatures::RING_INDIRECT_DESC.bits();

/// A case's verdict (the contract's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V {
    Pass,
    Reject,
    Wedged,
    Crash,
}

impl V {
    fn word(self) -> &'static str {
        match self {
            V::Pass => "PASS",
            V::Reject => "REJECT",
            V::Wedged => "WEDGED",
            V::Crash => "CRASH",
        }
    }
}

/// A line of text built without an allocator (truncated when full).
struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            buf: [0; 200],
            len: 0,
        }
    }

    fn as_str(&self) -> &str {
        // Only whole characters are ever copied in.
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            let n = c.len_utf8();
            if self.len + n > self.buf.len() {
                break;
            }
            c.encode_utf8(&mut self.buf[self.len..self.len + n]);
            self.len += n;
        }
        Ok(())
    }
}

/// A verdict and why.
struct Judged {
    v: V,
    detail: Line,
}

fn judged(v: V, detail: fmt::Arguments<'_>) -> Judged {
    let mut l = Line::new();
    let _ = l.write_fmt(detail);
    Judged { v, detail: l }
}

/// The device kinds, in the order their cases run.
type Dev = DeviceKind;

const DEVS: [Dev; 4] = DeviceKind::ALL;

/// What the cases need to know of each kind.
trait DevCases {
    fn ring_prefix(self) -> &'static str;
    fn prefix(self) -> &'static str;
    fn queue(self) -> u16;
    fn device_writes(self) -> bool;
}

impl DevCases for Dev {
    /// Prefix of the generic ring cases' names.
    fn ring_prefix(self) -> &'static str {
        match self {
            Dev::Rng => "",
            Dev::Console => "console-",
            Dev::Blk => "blk-",
            Dev::Net => "net-tx-",
        }
    }

    /// Prefix of the register cases' names.
    fn prefix(self) -> &'static str {
        match self {
            Dev::Rng => "",
            Dev::Console => "console-",
            Dev::Blk => "blk-",
            Dev::Net => "net-",
        }
    }

    /// The queue under test (§5.4.2, §5.3.2 port 0 transmitq, §5.2.2,
    /// §5.1.2 transmitq1).
    fn queue(self) -> u16 {
        match self {
            Dev::Rng | Dev::Blk => 0,
            Dev::Console => 1,
            Dev::Net => raw::NET_TX,
        }
    }

    /// Whether that queue's buffers are device-writable.
    fn device_writes(self) -> bool {
        self == Dev::Rng
    }
}

/// One case of a device, whatever its kind.
#[derive(Clone, Copy)]
enum Kind {
    Ring(&'static ring::Ring),
    Reg(&'static regs::RegCase),
    Blk(&'static blk::BlkCase),
    Net(&'static net::NetCase),
}

impl Kind {
    /// Prefix and name, which together are the `hostile.case=` name.
    fn name(self, d: Dev) -> (&'static str, &'static str) {
        match self {
            Kind::Ring(r) => (d.ring_prefix(), r.name),
            Kind::Reg(r) => (d.prefix(), r.name),
            Kind::Blk(c) => ("", c.name),
            Kind::Net(c) => ("", c.name),
        }
    }

    fn rule(self) -> &'static str {
        match self {
            Kind::Ring(r) => r.rule,
            Kind::Reg(r) => r.rule,
            Kind::Blk(c) => c.rule,
            Kind::Net(c) => c.rule,
        }
    }
}

/// Every case of `d`, in order: generic ring cases, register cases, then
/// the device's own.
fn cases(d: Dev) -> impl Iterator<Item = Kind> {
    let own_blk = if d == Dev::Blk { blk::BLK_CASES } else { &[] };
    let own_net = if d == Dev::Net { net::NET_CASES } else { &[] };
    ring::RINGS
        .iter()
        .map(Kind::Ring)
        .chain(regs::REGS.iter().map(Kind::Reg))
        .chain(own_blk.iter().map(Kind::Blk))
        .chain(own_net.iter().map(Kind::Net))
}

/// The short case name of the verdict line: the full name without the
/// `<device>-` prefix.
fn short(d: Dev, prefix: &'static str, name: &'static str) -> (&'static str, &'static str) {
    let dev = d.name();
    let p = prefix.strip_prefix(dev).and_then(|p| p.strip_prefix('-'));
    match p {
        Some(rest) => (rest, name),
        None => match name.strip_prefix(dev).and_then(|n| n.strip_prefix('-')) {
            Some(n) => ("", n),
            None => (prefix, name),
        },
    }
}

/// The devices found, and the memory the cases use.
struct Rig {
    devs: [Option<RawDevice>; 4],
    mem: RawMemory,
    nmem: Option<NetMemory>,
    ram_end: u64,
}

impl Rig {
    fn dev(&self, d: Dev) -> Option<&RawDevice> {
        self.devs[d as usize].as_ref()
    }
}

/// Proves `d` still works: a clean initialisation by `guest-driver` (the
/// net device by hand, with a frame looped back), then for the rng a read
/// of [`SURVIVAL_BYTES`], for the console a line written on port 0, for
/// the blk a read of sector 0; dropping the driver resets it again.
// The error is a line of text on the stack (no allocator here); it is
// printed right away.
#[allow(clippy::result_large_err)]
fn alive(rig: &Rig, d: Dev) -> Result<&'static str, Line> {
    let Some(dev) = rig.dev(d) else {
        return Err(line(format_args!("no {} device", d.name())));
    };
    let mem = &rig.mem;
    let err = |e: &dyn fmt::Display| line(format_args!("{e}"));
    // SAFETY: `dev` is not used until the driver is dropped below.
    let regs = unsafe { dev.driver_regs() };
    match d {
        Dev::Console => {
            let options = ConsoleOptions {
                multiport: false,
                ..ConsoleOptions::default()
            };
            let mut console: Console<_, _, 1> =
                Console::new(&mem.pool, regs, options).map_err(|e| err(&e))?;
            console
                .write(b"hostile: console alive\n", &mut Polls::new(SURVIVAL_POLLS))
                .map_err(|e| err(&e))?;
            Ok("wrote a line after re-initialisation")
        }
        Dev::Blk => {
            let options = BlkOptions {
                depth: 1,
                slot_size: 512,
                ..BlkOptions::default()
            };
            let mut blk = Blk::new(&mem.pool, regs, options).map_err(|e| err(&e))?;
            let mut buf = [0u8; 512];
            blk.read(0, &mut buf, &mut Polls::new(SURVIVAL_POLLS))
                .map_err(|e| err(&e))?;
            Ok("read sector 0 after re-initialisation")
        }
        Dev::Rng => {
            let mut rng = Rng::new(&mem.pool, regs, RngOptions::default()).map_err(|e| err(&e))?;
            let mut buf = [0u8; SURVIVAL_BYTES];
            rng.read_exact(&mut buf, &mut Polls::new(SURVIVAL_POLLS))
                .map_err(|e| err(&e))?;
            Ok("64 bytes after re-initialisation")
        }
        Dev::Net => {
            let Some(nmem) = rig.nmem.as_ref() else {
                return Err(line(format_args!("net memory already taken")));
            };
            match net::net_run(dev, nmem, None, 0xff, rig.ram_end) {
                Ok(net::NetRun {
                    follow_up: Some(true),
                    ..
                }) => Ok("a frame looped back after re-initialisation"),
                Ok(_) => Err(line(format_args!(
                    "no frame came back after re-initialisation"
                ))),
                Err(e) => Err(err(&e)),
            }
        }
    }
}

fn line(a: fmt::Arguments<'_>) -> Line {
    let mut l = Line::new();
    let _ = l.write_fmt(a);
    l
}

/// A raw-kit error as a verdict: a stray write is CRASH, anything else
/// (the device would not even be set up) WEDGED.
fn from_error(e: RawError) -> Judged {
    match e {
        RawError::StrayWrite { .. } => judged(V::Crash, format_args!("device fault: {e}")),
        _ => judged(V::Wedged, format_args!("set-up failed: {e}")),
    }
}

/// Judges a ring case (generic or blk) on rng, console or blk from what
/// the runner watched.
fn judge_watched(d: Dev, name: &str, w: &raw::Watched, mem: &RawMemory, legacy: bool) -> Judged {
    let CaseResult::Ran { outcome, status } = w.result else {
        return judged(V::Pass, format_args!("skipped"));
    };
    println!("hostile: {name}: {outcome} (status {:#04x})", status.bits());
    let returned = match outcome {
        raw::Outcome::Used(e) => line(format_args!("chain returned (used len={})", e.len())),
        _ => line(format_args!("chain dropped")),
    };
    let (first, follow) = if d == Dev::Blk {
        let (a, b) = (blk::status_byte(mem, 0), blk::status_byte(mem, 1));
        if let Some(b) = a {
            println!(
                "hostile: {name}: request status {b:#04x} ({}), {} used element(s)",
                blk::status_name(b),
                w.used.count
            );
        }
        (a, b)
    } else {
        (None, None)
    };
    let needs_reset = status.contains(DeviceStatus::DEVICE_NEEDS_RESET);
    if d == Dev::Blk {
        blk_fate(name, w.followed == Some(true), follow, needs_reset, legacy);
    }
    if needs_reset {
        return judged(
            V::Reject,
            format_args!("DEVICE_NEEDS_RESET (§2.1.2), status {:#04x}", status.bits()),
        );
    }
    match w.followed {
        Some(true) if d == Dev::Blk && !blk::is_ok(follow) => judged(
            V::Wedged,
            format_args!(
                "follow-up READ completed with status {} (§5.2.6)",
                follow.map_or("-", blk::status_name)
            ),
        ),
        Some(true) if blk::is_error(first) => judged(
            V::Reject,
            format_args!(
                "status {} (§5.2.6); follow-up READ ok",
                first.map_or("-", blk::status_name)
            ),
        ),
        Some(true) => judged(
            V::Pass,
            format_args!("{}; follow-up served", returned.as_str()),
        ),
        Some(false) => judged(
            V::Wedged,
            format_args!(
                "{}; follow-up not used and no DEVICE_NEEDS_RESET",
                returned.as_str()
            ),
        ),
        None => match outcome {
            raw::Outcome::Used(_) => judged(V::Pass, format_args!("{}", returned.as_str())),
            _ => judged(
                V::Wedged,
                format_args!("nothing used and no DEVICE_NEEDS_RESET"),
            ),
        },
    }
}

/// Prints the blk follow-up's fate (the line the QEMU tests read): served
/// OK, not served because of DEVICE_NEEDS_RESET, or not served by a legacy
/// device (version 1 has no DEVICE_NEEDS_RESET, §4.2.4).
fn blk_fate(name: &str, followed: bool, follow: Option<u8>, needs_reset: bool, legacy: bool) {
    let st = follow.map_or("-", blk::status_name);
    match (followed, follow) {
        (true, b) if blk::is_ok(b) => println!("hostile: {name}: follow-up READ ok"),
        _ if needs_reset => println!(
            "hostile: {name}: device set DEVICE_NEEDS_RESET; follow-up not served (status {st})"
        ),
        (true, _) => {
            println!("hostile: {name}: the follow-up READ completed with status {st} (§5.2.6)")
        }
        (false, _) if legacy => println!(
            "hostile: {name}: legacy device stopped serving the queue (no DEVICE_NEEDS_RESET on version 1); follow-up not served (status {st})"
        ),
        (false, _) => println!(
            "hostile: {name}: the follow-up READ was not used and the device did not set DEVICE_NEEDS_RESET"
        ),
    }
}

/// Judges a net case from its run.
fn judge_net(name: &str, r: &net::NetRun) -> Judged {
    println!(
        "hostile: {name}: {} (status {:#04x})",
        r.outcome,
        r.status.bits()
    );
    if let Some(e) = r.late {
        println!(
            "hostile: {name}: malformed chain returned when a frame came: used len={} id={}",
            e.len(),
            e.id()
        );
    }
    let what = match r.outcome {
        raw::Outcome::Used(e) => line(format_args!("chain returned (used len={})", e.len())),
        _ => line(format_args!("chain dropped")),
    };
    match r.follow_up {
        _ if r.status.contains(DeviceStatus::DEVICE_NEEDS_RESET) => judged(
            V::Reject,
            format_args!(
                "DEVICE_NEEDS_RESET (§2.1.2), status {:#04x}",
                r.status.bits()
            ),
        ),
        Some(true) => {
            println!("hostile: {name}: follow-up frame came back (traffic continues)");
            judged(
                V::Pass,
                format_args!("{}; follow-up frame came back", what.as_str()),
            )
        }
        _ => judged(
            V::Wedged,
            format_args!(
                "{}; follow-up frame did not come back and no DEVICE_NEEDS_RESET",
                what.as_str()
            ),
        ),
    }
}

/// Runs one case of `d` (not skipped) and judges it, before the survival
/// check. `Err`: skipped (features not offered).
fn run_one(rig: &Rig, d: Dev, k: Kind, name: &str, tag: u8) -> Result<Judged, u64> {
    let Some(dev) = rig.dev(d) else {
        return Err(0);
    };
    let mem = &rig.mem;
    let ring_case = |build, requires| Case {
        name: "",
        rule: "",
        device: d.ty(),
        queue: d.queue(),
        size: SIZE,
        device_writes: d.device_writes(),
        wanted: 0,
        requires,
        build,
    };
    let watch = |case: &Case, follow| {
        blk::clear_status();
        match raw::run_case_watched(dev, mem, case, rig.ram_end, follow) {
            Ok(w) => match w.result {
                CaseResult::Skipped { missing } => Err(missing),
                _ => Ok(judge_watched(d, name, &w, mem, !dev.is_modern())),
            },
            Err(e) => Ok(from_error(e)),
        }
    };
    let follow: Option<raw::FollowUp> = match d {
        Dev::Rng => Some(ring::rng_follow_up),
        Dev::Console => Some(ring::console_follow_up),
        Dev::Blk => Some(blk::follow_up),
        Dev::Net => None,
    };
    let run_net = |c: &net::NetCase| {
        let Some(nmem) = rig.nmem.as_ref() else {
            return Ok(judged(V::Wedged, format_args!("net memory already taken")));
        };
        let missing = c.requires & !dev.device_features();
        if missing != 0 {
            return Err(missing);
        }
        match net::net_run(dev, nmem, Some(c), tag, rig.ram_end) {
            Ok(r) => Ok(judge_net(name, &r)),
            Err(e) => Ok(from_error(e)),
        }
    };
    match k {
        Kind::Ring(r) if d == Dev::Net => run_net(&net::tx_case(r)),
        Kind::Ring(r) => watch(
            &ring_case(r.build, r.requires),
            if r.follow { follow } else { None },
        ),
        Kind::Blk(c) => watch(&ring_case(c.build, c.requires), follow),
        Kind::Net(c) => run_net(c),
        Kind::Reg(r) => Ok(match (r.run)(dev, mem, d.queue(), d.device_writes()) {
            Ok(j) => j,
            Err(e) => {
                let _ = dev.reset();
                from_error(e)
            }
        }),
    }
}

/// The first RAM range end of the PVH memory map with no RAM right after
/// it but RAM further up (a hole below the end of RAM), if any.
fn hole(boot: &BootInfo) -> Option<u64> {
    let ram = || {
        boot.memory_map()
            .iter()
            .filter(|r| r.kind == MemoryKind::Ram)
    };
    ram()
        .map(|r| r.base.saturating_add(r.size))
        .filter(|&end| {
            !ram().any(|r| r.base <= end && end < r.base.saturating_add(r.size))
                && ram().any(|r| r.base > end)
        })
        .min()
}

/// One past the last byte of RAM, from the PVH memory map.
fn ram_end(boot: &BootInfo) -> u64 {
    boot.memory_map()
        .iter()
        .filter(|r| r.kind == MemoryKind::Ram)
        .map(|r| r.base.saturating_add(r.size))
        .max()
        .unwrap_or(0)
}

fn main(boot: &'static BootInfo) {
    let Some(mem) = RawMemory::take() else {
        exit::fail(format_args!("hostile: raw memory already taken"));
    };
    let ram_end = ram_end(boot);
    println!("hostile: RAM ends at {ram_end:#x}");
    match hole(boot) {
        Some(h) => {
            println!("hostile: hole in the memory map at {h:#x}: buffer-across-hole straddles it");
            ring::HOLE_AT.store(h, core::sync::atomic::Ordering::Relaxed);
        }
        None => println!(
            "hostile: no hole below the end of RAM: buffer-across-hole straddles the end of RAM"
        ),
    }
    let selected = |prefix: &str, name: &str| {
        let mut wanted = boot.cmdline_values("hostile.case").peekable();
        wanted.peek().is_none() || wanted.any(|w| w.strip_prefix(prefix) == Some(name))
    };
    let dev_selected = |d: Dev| {
        let mut wanted = boot.cmdline_values("hostile.device").peekable();
        wanted.peek().is_none() || wanted.any(|w| w == d.name())
    };
    for w in boot.cmdline_values("hostile.case") {
        let known = DEVS.iter().any(|&d| {
            cases(d).any(|k| {
                let (p, n) = k.name(d);
                w.strip_prefix(p) == Some(n)
            })
        });
        if !known {
            println!("hostile: known cases:");
            for d in DEVS {
                for k in cases(d) {
                    let (p, n) = k.name(d);
                    println!("  {p}{n}");
                }
            }
            exit::fail(format_args!("hostile: unknown case {w:?}"));
        }
    }
    let devs = DEVS.map(|d| RawDevice::find(boot.cmdline(), d.ty()).ok());
    if devs.iter().all(Option::is_none) {
        exit::fail(format_args!(
            "hostile: {}",
            RawError::NoDevice(DeviceType::Rng)
        ));
    }
    let nmem = if devs[Dev::Net as usize].is_some() {
        NetMemory::take()
    } else {
        None
    };
    let rig = Rig {
        devs,
        mem,
        nmem,
        ram_end,
    };
    for d in DEVS {
        let Some(dev) = rig.dev(d) else { continue };
        println!(
            "hostile: device {} (id {}) at {:#x} (virtio-mmio version {}), features offered {:#x}",
            d.name(),
            dev.device_id(),
            dev.slot().base,
            dev.version() as u32,
            dev.device_features()
        );
        if let Err(e) = alive(&rig, d) {
            exit::fail(format_args!(
                "hostile: device {} does not work to begin with: {}",
                d.name(),
                e.as_str()
            ));
        }
    }
    let (mut ran, mut skipped) = (0u32, 0u32);
    for d in DEVS {
        let run_here = |k: &Kind| {
            let (p, n) = k.name(d);
            selected(p, n)
        };
        if !dev_selected(d) {
            continue;
        }
        if rig.dev(d).is_none() {
            for k in cases(d).filter(run_here) {
                let (p, n) = k.name(d);
                println!("hostile: {p}{n}: skipped (no {:?} device)", d.ty());
                skipped += 1;
            }
            continue;
        }
        let plan = cases(d).filter(run_here).count();
        println!("plan: {} {plan}", d.name());
        let mut counts = [0u32; 4];
        for (i, k) in cases(d).filter(run_here).enumerate() {
            let (p, n) = k.name(d);
            let (sp, sn) = short(d, p, n);
            let mut full = Line::new();
            let _ = write!(full, "{p}{n}");
            let name = full.as_str();
            println!("case: {} {sp}{sn}", d.name());
            println!("hostile: {name}: rule {}", k.rule());
            let tag = (i % 250 + 1) as u8;
            let mut j = match run_one(&rig, d, k, name, tag) {
                Ok(j) => j,
                Err(missing) => {
                    println!("hostile: {name}: skipped (features {missing:#x} not offered)");
                    println!(
                        "skip: {} {sp}{sn} features {missing:#x} not offered",
                        d.name()
                    );
                    skipped += 1;
                    continue;
                }
            };
            match alive(&rig, d) {
                Ok(what) => println!("hostile: {name}: survived ({what})"),
                Err(e) => {
                    if j.v != V::Crash {
                        j = judged(
                            V::Wedged,
                            format_args!(
                                "device dead after a reset: {} (case: {})",
                                e.as_str(),
                                j.detail.as_str()
                            ),
                        );
                    }
                    let _ = rig.dev(d).map(RawDevice::reset);
                }
            }
            println!(
                "verdict: {} {sp}{sn} {} {}",
                d.name(),
                j.v.word(),
                j.detail.as_str()
            );
            counts[j.v as usize] += 1;
            ran += 1;
        }
        for other in DEVS {
            if other == d || rig.dev(other).is_none() {
                continue;
            }
            match alive(&rig, other) {
                Ok(what) => println!(
                    "serving: {} ok after {} cases ({what})",
                    other.name(),
                    d.name()
                ),
                Err(e) => println!(
                    "serving: {} FAIL after {} cases: {}",
                    other.name(),
                    d.name(),
                    e.as_str()
                ),
            }
        }
        println!(
            "summary: {} {} PASS, {} REJECT, {} WEDGED, {} CRASH",
            d.name(),
            counts[0],
            counts[1],
            counts[2],
            counts[3]
        );
    }
    println!("hostile: {ran} case(s) run, {skipped} skipped");
}
