//! The `blk` scenario guest against QEMU's own `virtio-blk-device` on
//! virtio-mmio (`microvm`, `acpi=off`, KVM) over sparse raw files this
//! test creates: a known-good device that proves the guest and
//! `guest_driver::blk` before our monitor serves the same contract (see
//! `harness/guests/README.md`, scenario `blk`).
//!
//! `pattern` runs in polling and interrupt mode, legacy and modern, at
//! depth 1 and 8, and the file is then checked byte for byte on the host;
//! `readonly`, `range` (§5.2.6.1), `id` (§5.2.6 GET_ID), `zeroes`
//! (WRITE_ZEROES, DISCARD), `mq` (§5.2.2) and two disks each have a test.
//! Skips, saying why, without `qemu-system-x86_64` or `/dev/kvm`, unless
//! `HARNESS_REQUIRE_QEMU=1` makes that a failure.

use std::fs;
use std::path::Path;
use std::time::Duration;

use harness::qemu::{Qemu, QemuRun as Run, Transport, qemu_or_skip as qemu_ready};
use harness::scenarios::{Workdir, number_before};

/// Longest a guest may run before it is killed.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Size of each test disk (sparse).
const DISK: u64 = 16 << 20;
/// The scenario's default seed (0x9e3779b97f4a7c15).
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

const BLK: &str = env!("GUEST_BLK");

fn scratch(test: &str) -> Workdir {
    Workdir::new(test).unwrap_or_else(|e| panic!("{test}: scratch directory: {e}"))
}

/// A sparse raw disk of [`DISK`] bytes.
fn disk(dir: &Workdir, name: &str) -> String {
    let path = dir.path(name);
    let f = fs::File::create(&path).expect("creating the disk file");
    f.set_len(DISK).expect("sizing the disk file");
    path.display().to_string()
}

/// `-drive` and `-device` for a disk `id` on `file`; `drive` and `device`
/// are extra options of each.
fn blk_args(id: &str, file: &str, drive: &str, device: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id={id},file={file},format=raw{drive}"),
        "-device".into(),
        format!("virtio-blk-device,drive={id}{device}"),
    ]
}

fn boot(append: &str, args: &[String], transport: Transport) -> Run {
    Qemu::microvm(BLK)
        .append(append)
        .args(args)
        .transport(transport)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("cannot run qemu: {e}"))
}

/// The guest passed and its summary line starts with `summary`.
fn assert_pass(run: &Run, summary: &str) {
    if let Err(e) = run.check_pass_with_summary(summary) {
        panic!("{e}");
    }
}

/// The first byte of `file` in `[offset, offset + bytes)` that is not the
/// pattern of `seed` (the 8 bytes at offset `o` are the little-endian
/// `o ^ seed`), and the first non-zero byte outside it.
fn check_file(file: &str, seed: u64, offset: u64, bytes: u64) -> Result<(), String> {
    let data = fs::read(Path::new(file)).map_err(|e| format!("reading {file}: {e}"))?;
    for (i, w) in data.chunks_exact(8).enumerate() {
        let o = i as u64 * 8;
        let want = if (offset..offset + bytes).contains(&o) {
            (o ^ seed).to_le_bytes()
        } else {
            [0; 8]
        };
        if w != want {
            let k = (0..8).find(|&k| w[k] != want[k]).unwrap_or(0);
            return Err(format!(
                "{file}: byte at offset {} is {:#04x}, want {:#04x}",
                o + k as u64,
                w[k],
                want[k]
            ));
        }
    }
    Ok(())
}

fn mode(poll: bool) -> &'static str {
    if poll { "poll" } else { "irq" }
}

/// Writes and reads back the pattern, then checks the file on the host.
fn pattern(test: &str, transport: Transport, poll: bool, depth: u32, bytes: u64, offset: u64) {
    let dir = scratch(test);
    let file = disk(&dir, "disk.img");
    let args = blk_args("d0", &file, "", "");
    let append = format!(
        "blk.test=pattern blk.mode={} blk.depth={depth} blk.bytes={bytes} blk.offset={offset}",
        mode(poll)
    );
    let run = boot(&append, &args, transport);
    assert_pass(&run, &format!("blk: pattern: {} bytes, ", 2 * bytes));
    let irqs = number_before(run.summary(), "interrupts");
    if poll {
        assert_eq!(irqs, Some(0), "{}", run.describe());
    } else {
        // Counted, but possibly 0: on a host that emulates the guest's
        // instructions QEMU often completes while the guest fills or
        // checks a buffer, and the driver finds the completion before it
        // would wait.
        assert!(irqs.is_some(), "{}", run.describe());
    }
    if let Err(e) = check_file(&file, SEED, offset, bytes) {
        panic!("{e}\n{}", run.describe());
    }
    eprintln!("{test}: {} in {:?}", run.summary(), run.elapsed);
}

macro_rules! pattern_tests {
    ($($name:ident($transport:ident, $poll:literal, $depth:literal, $bytes:expr, $offset:expr);)+) => {$(
        #[test]
        fn $name() {
            let test = stringify!($name);
            if qemu_ready(test) {
                pattern(test, Transport::$transport, $poll, $depth, $bytes, $offset);
            }
        }
    )+};
}

pattern_tests! {
    blk_pattern_legacy_poll_depth1(Legacy, true, 1, 256 << 10, 0);
    blk_pattern_legacy_irq_depth8(Legacy, false, 8, 512 << 10, 4096);
    blk_pattern_modern_poll_depth8(Modern, true, 8, 512 << 10, 0);
    blk_pattern_modern_irq_depth1(Modern, false, 1, 256 << 10, 1 << 20);
    blk_pattern_modern_irq_depth8_1mib(Modern, false, 8, 1 << 20, 512);
}

fn run_simple(test: &str, append: &str, drive: &str, device: &str, transport: Transport) -> Run {
    let dir = scratch(test);
    let file = disk(&dir, "disk.img");
    let args = blk_args("d0", &file, drive, device);
    let run = boot(append, &args, transport);
    eprintln!("{test}: {} in {:?}", run.summary(), run.elapsed);
    run
}

/// §5.2.6.1: a write to a read-only disk completes with IOERR.
#[test]
fn blk_readonly_write_is_ioerr_5_2_6_1() {
    let test = "blk_readonly_write_is_ioerr_5_2_6_1";
    if !qemu_ready(test) {
        return;
    }
    for t in Transport::ALL {
        let run = run_simple(test, "blk.test=readonly", ",readonly=on", "", t);
        assert_pass(&run, "blk: readonly: 512 bytes, 2 requests, ");
        assert!(
            run.serial.contains("write of sector 0: IOERR"),
            "{}",
            run.describe()
        );
    }
}

/// A read-write disk fails the readonly test.
#[test]
fn blk_readonly_on_a_writable_disk_fails() {
    let test = "blk_readonly_on_a_writable_disk_fails";
    if !qemu_ready(test) {
        return;
    }
    let run = run_simple(test, "blk.test=readonly", "", "", Transport::Modern);
    run.check_fail("does not offer VIRTIO_BLK_F_RO")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// §5.2.6.1: requests at and across the capacity complete with IOERR.
#[test]
fn blk_range_beyond_capacity_is_ioerr_5_2_6_1() {
    let test = "blk_range_beyond_capacity_is_ioerr_5_2_6_1";
    if !qemu_ready(test) {
        return;
    }
    for t in Transport::ALL {
        let run = run_simple(test, "blk.test=range blk.mode=poll", "", "", t);
        assert_pass(&run, "blk: range: 512 bytes, 5 requests, ");
    }
}

/// §5.2.6: GET_ID returns the serial.
#[test]
fn blk_get_id_returns_the_serial_5_2_6() {
    let test = "blk_get_id_returns_the_serial_5_2_6";
    if !qemu_ready(test) {
        return;
    }
    let run = run_simple(
        test,
        "blk.test=id blk.serial=disk-0042",
        "",
        ",serial=disk-0042",
        Transport::Modern,
    );
    assert_pass(&run, "blk: id: 20 bytes, 1 requests, ");
    assert_eq!(run.line_after("blk: id: \""), Some("disk-0042\""));
    // A serial longer than 20 bytes is cut at 20 (§5.2.6).
    let long = "abcdefghijklmnopqrstuvwxyz";
    let run = run_simple(
        test,
        &format!("blk.test=id blk.serial={long}"),
        "",
        &format!(",serial={long}"),
        Transport::Legacy,
    );
    assert_pass(&run, "blk: id: ");
    // And a wrong one fails, naming both.
    let run = run_simple(
        test,
        "blk.test=id blk.serial=other",
        "",
        ",serial=disk-0042",
        Transport::Modern,
    );
    run.check_fail("GET_ID says \"disk-0042\"")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// WRITE_ZEROES in the middle of the pattern, DISCARD elsewhere
/// (§5.2.6); the file agrees on the host.
#[test]
fn blk_write_zeroes_and_discard_5_2_6() {
    let test = "blk_write_zeroes_and_discard_5_2_6";
    if !qemu_ready(test) {
        return;
    }
    for unmap in [0, 1] {
        let dir = scratch(test);
        let file = disk(&dir, "disk.img");
        let args = blk_args("d0", &file, ",discard=unmap,detect-zeroes=unmap", "");
        let run = boot(
            &format!("blk.test=zeroes blk.unmap={unmap}"),
            &args,
            Transport::Modern,
        );
        assert_pass(&run, "blk: zeroes: ");
        let data = fs::read(&file).unwrap();
        for (i, w) in data[..64 << 10].chunks_exact(8).enumerate() {
            let o = i as u64 * 8;
            let want = if (16 << 10..48 << 10).contains(&o) {
                [0; 8]
            } else {
                (o ^ SEED).to_le_bytes()
            };
            assert_eq!(w, want, "offset {o}, unmap {unmap}");
        }
    }
}

/// §5.2.2: four request queues, each its own stripe, all in flight.
#[test]
fn blk_mq_four_queues_5_2_2() {
    let test = "blk_mq_four_queues_5_2_2";
    if !qemu_ready(test) {
        return;
    }
    let bytes = 512u64 << 10;
    let dir = scratch(test);
    let file = disk(&dir, "disk.img");
    let args = blk_args("d0", &file, "", ",num-queues=4");
    let run = boot(
        &format!("blk.test=mq blk.bytes={bytes} blk.depth=4"),
        &args,
        Transport::Modern,
    );
    assert_pass(&run, &format!("blk: mq: {} bytes, ", 2 * bytes));
    assert!(run.serial.contains("on 4 queue(s)"), "{}", run.describe());
    check_file(&file, SEED, 0, bytes).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
}

/// Two disks: disk i gets seed + i, in command-line order.
#[test]
fn blk_two_disks_each_get_their_seed() {
    let test = "blk_two_disks_each_get_their_seed";
    if !qemu_ready(test) {
        return;
    }
    let bytes = 128u64 << 10;
    let dir = scratch(test);
    let a = disk(&dir, "a.img");
    let b = disk(&dir, "b.img");
    let mut args = blk_args("d0", &a, "", "");
    args.extend(blk_args("d1", &b, "", ""));
    let run = boot(
        &format!("blk.test=pattern blk.disks=2 blk.bytes={bytes}"),
        &args,
        Transport::Modern,
    );
    assert_pass(&run, &format!("blk: pattern: {} bytes, ", 4 * bytes));
    // QEMU decides which slot each device gets: each file holds one of
    // the two seeds, and not the same one.
    let sa = [SEED, SEED + 1]
        .into_iter()
        .find(|s| check_file(&a, *s, 0, bytes).is_ok())
        .unwrap_or_else(|| panic!("a.img holds neither seed\n{}", run.describe()));
    let sb = if sa == SEED { SEED + 1 } else { SEED };
    check_file(&b, sb, 0, bytes).unwrap_or_else(|e| panic!("{e}\n{}", run.describe()));
}

/// A short bench run prints its line.
#[test]
fn blk_bench_prints_its_line() {
    let test = "blk_bench_prints_its_line";
    if !qemu_ready(test) {
        return;
    }
    let run = run_simple(
        test,
        "blk.test=bench blk.pattern=randwrite blk.count=64 blk.bytes=1048576 blk.mode=poll",
        "",
        "",
        Transport::Modern,
    );
    assert_pass(&run, "blk: bench: 262144 bytes, 64 requests, ");
    assert!(
        run.serial
            .contains("blk: bench: randwrite 64 requests of 4096 bytes at depth 8 in "),
        "{}",
        run.describe()
    );
}

/// Unknown keys and values fail naming them; `blk.test` is required.
#[test]
fn blk_bad_options_name_what_is_wrong() {
    let test = "blk_bad_options_name_what_is_wrong";
    if !qemu_ready(test) {
        return;
    }
    for (append, reason) in [
        ("blk.test=nope", "bad value \"nope\" for blk.test"),
        (
            "blk.test=id blk.colour=blue",
            "unknown option \"blk.colour=blue\"",
        ),
        ("blk.mode=poll", "missing option blk.test"),
        (
            "blk.test=pattern blk.disks=2",
            "blk.disks=2 but 1 block device(s)",
        ),
    ] {
        let run = run_simple(test, append, "", "", Transport::Modern);
        run.check_fail(reason).unwrap_or_else(|e| panic!("{e}"));
    }
}

const HOSTILE: &str = env!("GUEST_HOSTILE");

/// What QEMU 7.2's virtio-blk does with each malformed request of the
/// hostile guest (on a read-only disk, `queue-size=128` so that seg_max + 3
/// descriptors fit one indirect table): the line the guest prints after
/// the request's status, on legacy and on modern. The first four are
/// refused with `virtio_error` ("outhdr too short", "missing headers",
/// "zero sized buffers", "Incorrect order for descriptors"): QEMU marks
/// the device broken, DEVICE_NEEDS_RESET on modern, silence on legacy; a
/// reset brings it back. The others get a status and the follow-up READ
/// on the same queue is served.
const QEMU_BLK: &[(&str, &str, &str)] = &[
    (
        "blk-beyond-capacity",
        "follow-up READ ok",
        "follow-up READ ok",
    ),
    (
        "blk-write-read-only",
        "follow-up READ ok",
        "follow-up READ ok",
    ),
    (
        "blk-header-too-short",
        "legacy device stopped serving the queue",
        "device set DEVICE_NEEDS_RESET",
    ),
    (
        "blk-header-device-writable",
        "legacy device stopped serving the queue",
        "device set DEVICE_NEEDS_RESET",
    ),
    (
        "blk-status-too-short",
        "legacy device stopped serving the queue",
        "device set DEVICE_NEEDS_RESET",
    ),
    (
        "blk-status-device-readable",
        "legacy device stopped serving the queue",
        "device set DEVICE_NEEDS_RESET",
    ),
    (
        "blk-data-not-sector-multiple",
        "follow-up READ ok",
        "follow-up READ ok",
    ),
    (
        "blk-more-segments-than-seg-max",
        "follow-up READ ok",
        "follow-up READ ok",
    ),
];

/// The hostile guest's blk cases: malformed requests, each followed by a
/// well-formed READ on the same queue (the guest fails if a device that
/// did not give up leaves it unserved); the statuses the spec asks for
/// (§5.2.6.1: IOERR beyond the capacity, on a read-only disk, for a length
/// not a multiple of 512) are checked here.
fn hostile_blk(transport: Transport) {
    let legacy = transport == Transport::Legacy;
    let dir = scratch("hostile_blk");
    let file = disk(&dir, "disk.img");
    let mut args: Vec<String> = [
        "-object",
        "rng-builtin,id=r0",
        "-device",
        "virtio-rng-device,rng=r0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(blk_args("d0", &file, ",readonly=on", ",queue-size=128"));
    let mut append = String::new();
    for (case, _, _) in QEMU_BLK {
        append.push_str(" hostile.case=");
        append.push_str(case);
    }
    let run = Qemu::microvm(HOSTILE)
        .append(append.trim())
        .args(&args)
        .transport(transport)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("cannot run qemu: {e}"));
    run.check_pass().unwrap_or_else(|e| panic!("{e}"));
    for &(case, on_legacy, on_modern) in QEMU_BLK {
        let want = if legacy { on_legacy } else { on_modern };
        let prefix = format!("hostile: {case}: ");
        let lines: Vec<&str> = run
            .serial
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect();
        assert!(
            lines.iter().any(|l| l.starts_with(want)),
            "{case}: want {want:?}\n{}",
            run.describe()
        );
        assert!(
            lines.iter().any(|l| l.starts_with("survived (")),
            "{case}: no survival line\n{}",
            run.describe()
        );
        if matches!(
            case,
            "blk-beyond-capacity" | "blk-write-read-only" | "blk-data-not-sector-multiple"
        ) {
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("request status 0x01 (IOERR)")),
                "{case}: not IOERR (§5.2.6.1)\n{}",
                run.describe()
            );
        }
    }
    let count = format!("hostile: {} case(s) run, 0 skipped", QEMU_BLK.len());
    assert!(run.serial.contains(&count), "{}", run.describe());
}

#[test]
fn blk_hostile_requests_legacy() {
    if qemu_ready("blk_hostile_requests_legacy") {
        hostile_blk(Transport::Legacy);
    }
}

#[test]
fn blk_hostile_requests_modern() {
    if qemu_ready("blk_hostile_requests_modern") {
        hostile_blk(Transport::Modern);
    }
}
