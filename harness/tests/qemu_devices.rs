//! The `rng` and `console` scenario guests against QEMU's own virtio-mmio
//! devices (`microvm`, `acpi=off`, KVM): known-good devices that prove the
//! guests, `guest_rt::virtio` and `guest-driver` before our monitor serves
//! the same contract (see `harness/guests/README.md`).
//!
//! Each scenario runs on the legacy (version 1, QEMU's default) and the
//! modern (version 2) transport, in polling and interrupt mode where the
//! mode matters. Skips, saying why, without `qemu-system-x86_64` or
//! `/dev/kvm`, unless `HARNESS_REQUIRE_QEMU=1` makes that a failure.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use backends::rng::{Deterministic, RngBackend};
use harness::qemu::{Qemu, QemuRun as Run, RunningQemu, Transport, qemu_or_skip as qemu_ready};
use harness::scenarios::{Workdir, number_before, pattern};

/// Longest a guest may run before it is killed (SIGKILL: a livelocked QEMU
/// main loop does not answer SIGTERM) and reported as hung.
const TIMEOUT: Duration = Duration::from_secs(60);
/// 1 MiB, the rng scenario's default.
const MIB: usize = 1 << 20;

const RNG: &str = env!("GUEST_RNG");
const CONSOLE: &str = env!("GUEST_CONSOLE");

/// The first `n` bytes of the SplitMix64 stream of `seed`, from our own
/// backend (the guest computes the same stream independently).
fn splitmix(seed: u64, n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    let filled = Deterministic::new(seed)
        .fill(&mut bytes)
        .expect("the deterministic source never fails");
    assert_eq!(filled, n);
    bytes
}

/// A scratch directory of its own for one test's files.
fn scratch(test: &str) -> Workdir {
    Workdir::new(test).unwrap_or_else(|e| panic!("{test}: scratch directory: {e}"))
}

/// Starts `kernel` under microvm on `transport` with the exit port, COM1
/// on stdout, the command line `append` and `extra` arguments (devices).
fn launch(kernel: &str, append: &str, extra: &[&str], transport: Transport) -> RunningQemu {
    Qemu::microvm(kernel)
        .append(append)
        .args(extra)
        .transport(transport)
        .timeout(TIMEOUT)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start qemu: {e}"))
}

/// Waits for a launched QEMU (bounded by [`TIMEOUT`]).
fn finish(qemu: RunningQemu) -> Run {
    qemu.wait()
        .unwrap_or_else(|e| panic!("waiting for qemu: {e}"))
}

fn boot(kernel: &str, append: &str, extra: &[&str], transport: Transport) -> Run {
    finish(launch(kernel, append, extra, transport))
}

/// The guest passed and its summary line starts with `summary`.
fn assert_pass(run: &Run, summary: &str) {
    if let Err(e) = run.check_pass_with_summary(summary) {
        panic!("{e}");
    }
}

fn assert_fail(run: &Run, reason: &str) {
    if let Err(e) = run.check_fail(reason) {
        panic!("{e}");
    }
}

/// In polling mode the slot's line is not routed: no interrupt is counted.
fn assert_interrupts(run: &Run, poll: bool) {
    let n = number_before(run.summary(), "interrupts");
    if poll {
        assert_eq!(n, Some(0), "interrupts in polling mode\n{}", run.describe());
    } else {
        assert!(n.is_some(), "no interrupt count\n{}", run.describe());
    }
}

fn mode(poll: bool) -> &'static str {
    if poll { "poll" } else { "irq" }
}

/// One `#[test]` per `name(transport, poll)`, each running
/// `scenario(name, Transport::transport, poll)` when QEMU is here.
macro_rules! qemu_tests {
    ($scenario:ident { $($name:ident($transport:ident, $poll:literal);)+ }) => {$(
        #[test]
        fn $name() {
            let test = stringify!($name);
            if qemu_ready(test) {
                $scenario(test, Transport::$transport, $poll);
            }
        }
    )+};
}

/// A virtio-rng on the backend `object` (whose id is `r0`).
fn rng_args(object: &str) -> [&str; 4] {
    ["-object", object, "-device", "virtio-rng-device,rng=r0"]
}

// --------------------------------------------------------------------------
// rng

/// 1 MiB from `rng-builtin` (QEMU's getrandom), in the scenario's request
/// sizes; §5.4.6.2 (no empty completion) is checked by the driver.
fn rng_builtin(test: &str, transport: Transport, poll: bool) {
    let args = rng_args("rng-builtin,id=r0");
    let run = boot(RNG, &format!("rng.mode={}", mode(poll)), &args, transport);
    assert_pass(&run, &format!("rng: {MIB} bytes in "));
    assert_interrupts(&run, poll);
    eprintln!("{test}: {} in {:?}", run.summary(), run.elapsed);
}

qemu_tests! {
    rng_builtin {
        rng_builtin_1mib_legacy_poll(Legacy, true);
        rng_builtin_1mib_legacy_irq(Legacy, false);
        rng_builtin_1mib_modern_poll(Modern, true);
        rng_builtin_1mib_modern_irq(Modern, false);
    }
}

/// `rng-random` on a file holding the SplitMix64 stream of a seed: QEMU
/// reads it in order, so the guest checks every byte (`rng.seed`).
fn rng_random_file(test: &str, transport: Transport, poll: bool) {
    let dir = scratch(test);
    let file = dir.path("entropy");
    let seed = 0x5eed_0000_0000_0042;
    fs::write(&file, splitmix(seed, MIB)).expect("writing the entropy file");
    let object = format!("rng-random,id=r0,filename={}", file.display());
    let args = rng_args(&object);
    let run = boot(
        RNG,
        &format!("rng.mode={} rng.seed={seed}", mode(poll)),
        &args,
        transport,
    );
    assert_pass(&run, &format!("rng: {MIB} bytes in "));
    assert!(
        run.serial.contains("bytes match the SplitMix64 stream"),
        "{}",
        run.describe()
    );
    assert_interrupts(&run, poll);
}

qemu_tests! {
    rng_random_file {
        rng_random_file_matches_seed_legacy_irq(Legacy, false);
        rng_random_file_matches_seed_modern_poll(Modern, true);
    }
}

/// A wrong seed is a failure naming the first differing offset.
#[test]
fn rng_random_file_wrong_seed_fails_at_offset_0() {
    let test = "rng_random_file_wrong_seed_fails_at_offset_0";
    if !qemu_ready(test) {
        return;
    }
    let dir = scratch(test);
    let file = dir.path("entropy");
    fs::write(&file, splitmix(1, 4096)).expect("writing the entropy file");
    let object = format!("rng-random,id=r0,filename={}", file.display());
    let args = rng_args(&object);
    let run = boot(RNG, "rng.seed=2 rng.bytes=64", &args, Transport::Legacy);
    assert_fail(&run, "rng: byte at offset 0 is ");
}

/// `rng.available`: the source has only M bytes. QEMU's `rng-random` on a
/// regular file spins on end-of-file (read returns 0 forever), so the
/// source is a FIFO that this test holds open for writing with exactly M
/// bytes in it: QEMU reads them, then sees EAGAIN and waits. Every
/// completion must be non-empty (§5.4.6.2), and one more request must stay
/// pending.
fn rng_available(test: &str, transport: Transport, poll: bool) {
    const AVAILABLE: usize = 1000;
    let dir = scratch(test);
    let fifo = dir.path("entropy.fifo");
    let c_path =
        std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("no NUL in a temp path");
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(
        rc,
        0,
        "mkfifo {}: {}",
        fifo.display(),
        std::io::Error::last_os_error()
    );
    // Read-write: opening does not wait for a reader, and QEMU never sees
    // end-of-file while we hold it.
    let mut writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("opening the FIFO");
    let seed = 77;
    writer
        .write_all(&splitmix(seed, AVAILABLE))
        .expect("filling the FIFO");
    let object = format!("rng-random,id=r0,filename={}", fifo.display());
    let args = rng_args(&object);
    let append = format!(
        "rng.mode={} rng.seed={seed} rng.available={AVAILABLE} rng.wait_ms=200",
        mode(poll)
    );
    let run = boot(RNG, &append, &args, transport);
    drop(writer);
    assert_pass(&run, &format!("rng: {AVAILABLE} bytes in "));
    assert!(
        run.serial.contains("request left pending"),
        "{}",
        run.describe()
    );
    assert_interrupts(&run, poll);
}

qemu_tests! {
    rng_available {
        rng_available_request_stays_pending_legacy_poll(Legacy, true);
        rng_available_request_stays_pending_modern_irq(Modern, false);
    }
}

/// A malformed option value is a failure naming the option.
#[test]
fn rng_bad_mode_fails_naming_it() {
    if qemu_ready("rng_bad_mode_fails_naming_it") {
        let args = ["-device", "virtio-rng-device"];
        let run = boot(RNG, "rng.mode=fast", &args, Transport::Legacy);
        assert_fail(&run, "bad value \"fast\" for rng.mode");
        let run = boot(RNG, "rng.bytes=1x", &args, Transport::Legacy);
        assert_fail(&run, "bad value \"1x\" for rng.bytes");
        let run = boot(RNG, "rng.colour=blue", &args, Transport::Legacy);
        assert_fail(&run, "unknown option \"rng.colour=blue\"");
    }
}

// --------------------------------------------------------------------------
// console

/// A `virtconsole` (port 0) on the chardev `chardev` (whose id is `c0`).
fn console_args(chardev: &str) -> [&str; 6] {
    [
        "-chardev",
        chardev,
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=c0",
    ]
}

/// MULTIPORT with a `virtconsole` on port 0 and a `virtserialport` named
/// `org.test.port1` on port 1, on chardevs `c0` and `c1`.
fn multiport_args<'a>(c0: &'a str, c1: &'a str) -> [&'a str; 10] {
    [
        "-chardev",
        c0,
        "-chardev",
        c1,
        "-device",
        "virtio-serial-device,max_ports=2",
        "-device",
        "virtconsole,chardev=c0",
        "-device",
        "virtserialport,chardev=c1,name=org.test.port1",
    ]
}

/// The file at `path` holds exactly the first `n` bytes of the pattern.
fn assert_holds_pattern(path: &Path, n: usize, run: &Run) {
    let got = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let want = pattern(n);
    assert!(
        got == want,
        "{} differs from the pattern ({} bytes, first difference at {:?})\n{}",
        path.display(),
        got.len(),
        got.iter().zip(&want).position(|(a, b)| a != b),
        run.describe()
    );
}

/// `console.test=write`: 64 KiB of the pattern to port 0, a `virtconsole`
/// on a `-chardev file`; the file must be the pattern exactly.
fn console_write(test: &str, transport: Transport, poll: bool) {
    let dir = scratch(test);
    let out = dir.path("port0");
    let chardev = format!("file,id=c0,path={}", out.display());
    let args = console_args(&chardev);
    let append = format!("console.mode={} console.test=write", mode(poll));
    let run = boot(CONSOLE, &append, &args, transport);
    assert_pass(&run, "console: write: 65536 bytes, ");
    assert_interrupts(&run, poll);
    assert_holds_pattern(&out, 65536, &run);
}

qemu_tests! {
    console_write {
        console_write_64k_legacy_poll(Legacy, true);
        console_write_64k_legacy_irq(Legacy, false);
        console_write_64k_modern_poll(Modern, true);
        console_write_64k_modern_irq(Modern, false);
    }
}

/// `console.test=echo`: QEMU listens on a Unix socket (`server=on,wait=off`),
/// this test connects, writes N bytes and reads the same N back.
fn console_echo(test: &str, transport: Transport, poll: bool) {
    const N: usize = 5000;
    let dir = scratch(test);
    let sock = dir.path("console.sock");
    let chardev = format!("socket,id=c0,path={},server=on,wait=off", sock.display());
    let args = console_args(&chardev);
    let append = format!(
        "console.mode={} console.test=echo console.bytes={N}",
        mode(poll)
    );
    let mut qemu = launch(CONSOLE, &append, &args, transport);
    // QEMU creates the socket before the guest runs; wait for it, bounded.
    let mut stream = match qemu.connect_unix(&sock) {
        Ok(s) => s,
        Err(e) => {
            let run = finish(qemu);
            panic!(
                "cannot connect to {}: {e}\n{}",
                sock.display(),
                run.describe()
            );
        }
    };
    let sent: Vec<u8> = (0..N).map(|i| (i * 7 + i / 256) as u8).collect();
    stream
        .write_all(&sent)
        .expect("writing to the console socket");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("setting a read timeout");
    let mut got = Vec::with_capacity(N);
    let mut buf = [0u8; 4096];
    while got.len() < N {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let run = finish(qemu);
    assert_pass(&run, &format!("console: echo: {N} bytes, "));
    assert_interrupts(&run, poll);
    assert!(
        got == sent,
        "echoed {} of {N} bytes, first difference at {:?}\n{}",
        got.len(),
        got.iter().zip(&sent).position(|(a, b)| a != b),
        run.describe()
    );
}

qemu_tests! {
    console_echo {
        console_echo_legacy_irq(Legacy, false);
        console_echo_modern_irq(Modern, false);
        console_echo_modern_poll(Modern, true);
    }
}

/// `console.test=multiport`: MULTIPORT, the control queue (§5.3.6.2) until
/// ports 0 (a `virtconsole`) and 1 (a named `virtserialport`) are added and
/// open, port 1's name checked, then 4 KiB of the pattern to each, each
/// port on its own file.
fn console_multiport(test: &str, transport: Transport, poll: bool) {
    let dir = scratch(test);
    let (out0, out1) = (dir.path("port0"), dir.path("port1"));
    let c0 = format!("file,id=c0,path={}", out0.display());
    let c1 = format!("file,id=c1,path={}", out1.display());
    let args = multiport_args(&c0, &c1);
    let append = format!(
        "console.mode={} console.test=multiport console.name1=org.test.port1",
        mode(poll)
    );
    let run = boot(CONSOLE, &append, &args, transport);
    assert_pass(&run, "console: multiport: 4096 bytes, ");
    assert_interrupts(&run, poll);
    for out in [&out0, &out1] {
        assert_holds_pattern(out, 4096, &run);
    }
}

qemu_tests! {
    console_multiport {
        console_multiport_legacy_irq(Legacy, false);
        console_multiport_modern_poll(Modern, true);
    }
}

/// A wrong port name and a missing `console.test` are failures naming
/// what is wrong.
#[test]
fn console_bad_options_fail_naming_them() {
    let test = "console_bad_options_fail_naming_them";
    if !qemu_ready(test) {
        return;
    }
    let dir = scratch(test);
    let c0 = format!("file,id=c0,path={}", dir.path("port0").display());
    let c1 = format!("file,id=c1,path={}", dir.path("port1").display());
    let args = multiport_args(&c0, &c1);
    let run = boot(
        CONSOLE,
        "console.test=multiport console.name1=other",
        &args,
        Transport::Legacy,
    );
    assert_fail(&run, "port 1 is named \"org.test.port1\"");
    let run = boot(CONSOLE, "console.mode=poll", &args, Transport::Legacy);
    assert_fail(&run, "missing option console.test");
}

const CRYPTO: &str = env!("GUEST_CRYPTO");

/// The crypto guest's known answers against QEMU's `virtio-crypto-device`
/// over `cryptodev-backend-builtin` (`queues=1`), on both transports, for
/// what QEMU 7.2's builtin backend implements: AES-128-CBC (SP 800-38A)
/// and RSA with PKCS#1 v1.5 signatures (OpenSSL's vectors). What else it
/// advertises is probed and reported: the guest prints it, the test
/// records it (SHA-1 advertised but NOTSUPP, the MAC service with no
/// algorithm, raw RSA refused), a finding about QEMU, not a failure.
#[test]
fn crypto_known_answers_against_qemu_builtin_cryptodev() {
    if !qemu_ready("crypto_known_answers_against_qemu_builtin_cryptodev") {
        return;
    }
    for transport in [Transport::Legacy, Transport::Modern] {
        let run = boot(
            CRYPTO,
            "crypto.mode=irq crypto.require=qemu",
            &[
                "-object",
                "cryptodev-backend-builtin,id=c0,queues=1",
                "-device",
                "virtio-crypto-device,cryptodev=c0",
            ],
            transport,
        );
        assert_pass(&run, "crypto: 2 vectors passed");
        for line in run
            .serial
            .lines()
            .filter(|l| l.contains("advertised") || l.contains("refused"))
        {
            println!("{transport:?}: {line}");
        }
    }
}
