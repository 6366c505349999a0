//! The tiny guests under QEMU `microvm` (`acpi=off`, KVM): a known-good PVH
//! monitor with known-good virtio-mmio devices, proving the guest runtime
//! (PVH entry, long mode, COM1, exit port, IDT, LAPIC) before our monitor
//! boots the same ELFs. Skips, saying why, without `qemu-system-x86_64` or
//! `/dev/kvm`, unless `HARNESS_REQUIRE_QEMU=1` makes that a failure.

use harness::qemu::{Qemu, QemuRun as Run, Transport, qemu_or_skip as qemu_ready};

/// virtio device IDs the probes must report.
const RNG_ID: u32 = 4;
const CONSOLE_ID: u32 = 3;

const EMPTY: &str = env!("GUEST_EMPTY");
const FAIL: &str = env!("GUEST_FAIL");
const TIMER: &str = env!("GUEST_TIMER");

/// Boots `kernel` under microvm on `transport` with the exit port, COM1 on
/// stdout, and `extra` arguments (devices).
fn boot(kernel: &str, append: &str, extra: &[&str], transport: Transport) -> Run {
    Qemu::microvm(kernel)
        .append(append)
        .args(extra)
        .transport(transport)
        .run()
        .unwrap_or_else(|e| panic!("cannot start qemu: {e}"))
}

/// One `virtio-mmio …: magic … version … device-id … vendor-id …` line.
#[derive(Debug)]
struct Probe {
    magic: u32,
    version: u32,
    device_id: u32,
}

fn parse_number(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

fn probes(serial: &str) -> Vec<Probe> {
    serial
        .lines()
        .filter(|line| line.starts_with("virtio-mmio 0x"))
        .filter_map(|line| {
            let (_, fields) = line.split_once(": ")?;
            let words: Vec<&str> = fields.split_whitespace().collect();
            let field = |key: &str| {
                let at = words.iter().position(|w| *w == key)?;
                parse_number(words.get(at + 1)?)
            };
            Some(Probe {
                magic: field("magic")?,
                version: field("version")?,
                device_id: field("device-id")?,
            })
        })
        .collect()
}

fn assert_pass(run: &Run) {
    if let Err(e) = run.check_pass() {
        panic!("{e}");
    }
}

fn assert_fail(run: &Run, reason: &str) {
    if let Err(e) = run.check_fail(reason) {
        panic!("{e}");
    }
}

/// The empty guest sees the rng and console transports (added to the command
/// line by microvm), with the transport's version, and our own extra slot
/// (an empty address, 0x-size form) reads as no device.
fn empty_guest_probes(transport: Transport) {
    let version = transport.version();
    let args = [
        "-device",
        "virtio-rng-device",
        "-device",
        "virtio-serial-device",
    ];
    let run = boot(
        EMPTY,
        "console=none virtio_mmio.device=0x200@0xd0000000:5",
        &args,
        transport,
    );
    assert_pass(&run);
    eprintln!("microvm boot-to-exit of the empty guest: {:?}", run.elapsed);
    let probes = probes(&run.serial);
    for id in [RNG_ID, CONSOLE_ID] {
        assert!(
            probes
                .iter()
                .any(|p| p.magic == 0x7472_6976 && p.device_id == id && p.version == version),
            "no version-{version} probe of device id {id}: {probes:?}\n{}",
            run.describe()
        );
    }
    assert!(
        probes.iter().any(|p| p.magic == 0 && p.device_id == 0),
        "the empty slot at 0xd0000000 was not probed\n{}",
        run.describe()
    );
    assert!(
        run.serial.contains("cmdline: \"console=none "),
        "cmdline not printed\n{}",
        run.describe()
    );
    assert!(
        run.serial.contains(" ram\n"),
        "no RAM in the printed memory map\n{}",
        run.describe()
    );
}

#[test]
fn empty_guest_probes_legacy_transports() {
    if qemu_ready("empty_guest_probes_legacy_transports") {
        empty_guest_probes(Transport::Legacy);
    }
}

#[test]
fn empty_guest_probes_modern_transports() {
    if qemu_ready("empty_guest_probes_modern_transports") {
        empty_guest_probes(Transport::Modern);
    }
}

#[test]
fn fail_guest_exception_is_a_failure() {
    if qemu_ready("fail_guest_exception_is_a_failure") {
        let run = boot(FAIL, "", &[], Transport::Legacy);
        assert_fail(&run, "CPU exception 6 (#UD invalid opcode)");
    }
}

#[test]
fn fail_guest_panic_is_a_failure() {
    if qemu_ready("fail_guest_panic_is_a_failure") {
        let run = boot(FAIL, "fail=panic", &[], Transport::Legacy);
        assert_fail(&run, "panicked at ");
    }
}

#[test]
fn timer_guest_takes_interrupts() {
    if qemu_ready("timer_guest_takes_interrupts") {
        let run = boot(TIMER, "", &[], Transport::Legacy);
        assert_pass(&run);
        assert!(
            run.serial.contains("timer: 3 interrupts"),
            "{}",
            run.describe()
        );
    }
}

/// The `uart` guest's printer driver against QEMU's own `isa-parallel`
/// (the device our `-parallel` stands in for): the same three lines land
/// in the chardev's file, so the handshake the guest waits for is the one
/// QEMU gives (`cli.rs` runs the same guest on ours).
#[test]
fn uart_guest_prints_to_qemus_isa_parallel() {
    if !qemu_ready("uart_guest_prints_to_qemus_isa_parallel") {
        return;
    }
    let dir = harness::scenarios::Workdir::new("qemu-lpt").expect("scratch");
    let out = dir.path("lpt1.txt");
    let chardev = format!("file,id=lpt,path={}", out.display());
    let run = boot(
        env!("GUEST_UART"),
        "uart.bytes=0 uart.lpt=3",
        &["-chardev", &chardev, "-device", "isa-parallel,chardev=lpt"],
        Transport::Legacy,
    );
    assert_pass(&run);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "LPT1 line 0\nLPT1 line 1\nLPT1 line 2\n"
    );
}

/// QEMU's own `-chardev testdev` on COM2 with the `uart` guest's `5q`:
/// QEMU exits with (5 << 1) | 1 = 11, the status our `run` gives for the
/// same guest on ours (`cli.rs`).
#[test]
fn qemus_testdev_quits_with_the_status_ours_gives() {
    if !qemu_ready("qemus_testdev_quits_with_the_status_ours_gives") {
        return;
    }
    let run = boot(
        env!("GUEST_UART"),
        "uart.bytes=0 uart.quit=5 uart.ms=20000",
        &[
            "-chardev",
            "testdev,id=t",
            "-device",
            "isa-serial,chardev=t,index=1",
        ],
        Transport::Legacy,
    );
    assert_eq!(run.status, Some(11), "{}", run.describe());
}

/// QEMU's own `-chardev wctablet` on COM2, fed through its QMP
/// `input-send-event`: the `uart` guest reads the same model string and
/// the same reports (x 2518, y 943, pen down and up) as from ours
/// (`monitor.rs`).
#[test]
fn qemus_wctablet_reports_what_ours_reports() {
    use std::io::{BufRead, BufReader, Write};
    if !qemu_ready("qemus_wctablet_reports_what_ours_reports") {
        return;
    }
    let dir = harness::scenarios::Workdir::new("qemu-wctablet").expect("scratch");
    let sock = dir.path("qmp.sock");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let running = Qemu::microvm(env!("GUEST_UART"))
        .append("uart.bytes=0 uart.tablet=4 uart.ms=20000")
        .args([
            "-chardev",
            "wctablet,id=t",
            "-device",
            "isa-serial,chardev=t,index=1",
            "-qmp",
            &qmp,
        ])
        .transport(Transport::Legacy)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start qemu: {e}"));
    let feeder = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let s = loop {
            match std::os::unix::net::UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => panic!("qmp: {e}"),
            }
        };
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let pos = r#"{"type":"abs","data":{"axis":"x","value":16384}},{"type":"abs","data":{"axis":"y","value":8192}}"#;
        let mut msgs = vec![r#"{"execute":"qmp_capabilities"}"#.to_string()];
        for _ in 0..50 {
            for down in ["true", "false"] {
                msgs.push(format!(
                    r#"{{"execute":"input-send-event","arguments":{{"events":[{pos},{{"type":"btn","data":{{"button":"left","down":{down}}}}}]}}}}"#
                ));
            }
        }
        for m in msgs {
            line.clear();
            if w.write_all(format!("{m}\n").as_bytes()).is_err() || r.read_line(&mut line).is_err()
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    });
    let run = running.wait().expect("qemu runs");
    let _ = feeder.join();
    assert_pass(&run);
    for want in [
        "uart: tablet model ~#CT-0045R,V1.3-5,",
        "uart: tablet x 2518 y 943 pen down",
        "uart: tablet x 2518 y 943 pen up",
    ] {
        assert!(run.serial.contains(want), "no {want:?}\n{}", run.describe());
    }
}
