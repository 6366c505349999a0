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
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use backends::rng::{Deterministic, RngBackend};

const QEMU: &str = "qemu-system-x86_64";
/// Longest a guest may run before it is killed (SIGKILL: a livelocked QEMU
/// main loop does not answer SIGTERM) and reported as hung.
const TIMEOUT: Duration = Duration::from_secs(60);
/// QEMU's exit status for the guest's pass value 0x10: `(0x10 << 1) | 1`.
const PASS_STATUS: i32 = 33;
/// QEMU's exit status for the guest's fail value 0x11: `(0x11 << 1) | 1`.
const FAIL_STATUS: i32 = 35;
/// 1 MiB, the rng scenario's default.
const MIB: usize = 1 << 20;

const RNG: &str = env!("GUEST_RNG");
const CONSOLE: &str = env!("GUEST_CONSOLE");

/// The pattern's alphabet (scenario contract, `console` guest).
const ALPHA: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// The first `n` bytes of the console pattern stream P.
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                ALPHA[(i / 64 + i % 64) % 62]
            }
        })
        .collect()
}

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

/// Transport version of QEMU's virtio-mmio devices.
#[derive(Clone, Copy, Debug)]
enum Transport {
    /// Version 1, QEMU's default.
    Legacy,
    /// Version 2 (`-global virtio-mmio.force-legacy=false`).
    Modern,
}

impl Transport {
    fn args(self) -> &'static [&'static str] {
        match self {
            Transport::Legacy => &[],
            Transport::Modern => &["-global", "virtio-mmio.force-legacy=false"],
        }
    }
}

/// What one QEMU run left behind.
struct Run {
    /// Exit status, `None` if killed by a signal or by the timeout.
    status: Option<i32>,
    /// COM1 output, `\r\n` folded to `\n`.
    serial: String,
    /// QEMU's own complaints.
    stderr: String,
    elapsed: Duration,
    timed_out: bool,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "status {:?}{} after {:?}\n--- serial ---\n{}--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (timed out, killed)"
            } else {
                ""
            },
            self.elapsed,
            self.serial,
            self.stderr
        )
    }

    /// The last line of COM1 before the verdict.
    fn summary(&self) -> &str {
        let lines: Vec<&str> = self.serial.lines().collect();
        let at = lines.iter().rposition(|l| l.starts_with("verdict: "));
        at.and_then(|i| i.checked_sub(1))
            .and_then(|i| lines.get(i).copied())
            .unwrap_or("")
    }

    /// `<n> interrupts` at the end of the summary line.
    fn interrupts(&self) -> Option<u32> {
        let words: Vec<&str> = self.summary().split_whitespace().collect();
        let at = words.iter().rposition(|w| *w == "interrupts")?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    }
}

/// Why QEMU tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is missing".into());
    }
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`{QEMU} --version` failed: {}", out.status)),
        Err(e) => Some(format!("{QEMU} not found ({e}); .ci/setup installs it")),
    }
}

/// True if the test should go on; prints why not otherwise.
fn qemu_ready(test: &str) -> bool {
    let Some(reason) = skip_reason() else {
        return true;
    };
    if std::env::var_os("HARNESS_REQUIRE_QEMU").is_some_and(|v| v == "1") {
        panic!("{test}: {reason}, and HARNESS_REQUIRE_QEMU=1");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// A directory of its own for one test's files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("qemu-devices-{}-{test}", std::process::id()));
        // A leftover from a killed run of the same pid is stale.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error just ends the capture; what was read is kept.
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    })
}

/// A QEMU started by [`launch`], still running.
struct Launched {
    child: Child,
    stdout: thread::JoinHandle<String>,
    stderr: thread::JoinHandle<String>,
    start: Instant,
}

impl Launched {
    /// Waits for QEMU at most [`TIMEOUT`] from launch, killing it if it is
    /// still running.
    fn finish(mut self) -> Run {
        let deadline = self.start + TIMEOUT;
        let (status, timed_out) = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break (status.code(), false),
                Ok(None) if Instant::now() >= deadline => {
                    // Kill and reap our own child; errors mean it exited.
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break (None, true);
                }
                Ok(None) => thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for {QEMU}: {e}"),
            }
        };
        Run {
            status,
            serial: self.stdout.join().expect("stdout reader panicked"),
            stderr: self.stderr.join().expect("stderr reader panicked"),
            elapsed: self.start.elapsed(),
            timed_out,
        }
    }
}

/// Starts `kernel` under microvm with the exit port, COM1 on stdout, the
/// command line `append` and `extra` arguments (devices, globals).
fn launch(kernel: &str, append: &str, extra: &[&str]) -> Launched {
    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "microvm,acpi=off", "-accel", "kvm"])
        .args(["-cpu", "qemu64,-pni", "-m", "64M", "-smp", "1"])
        .args(["-no-reboot", "-nographic", "-nodefaults"])
        .args(["-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
        .args(["-kernel", kernel])
        .args(extra)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {QEMU}: {e}"));
    let stdout = read_all(child.stdout.take().expect("stdout was piped"));
    let stderr = read_all(child.stderr.take().expect("stderr was piped"));
    Launched {
        child,
        stdout,
        stderr,
        start,
    }
}

fn boot(kernel: &str, append: &str, extra: &[&str]) -> Run {
    launch(kernel, append, extra).finish()
}

fn assert_pass(run: &Run, summary: &str) {
    assert_eq!(
        run.status,
        Some(PASS_STATUS),
        "guest did not pass\n{}",
        run.describe()
    );
    assert!(
        run.serial.contains("verdict: pass"),
        "no pass verdict on COM1\n{}",
        run.describe()
    );
    assert!(
        run.summary().starts_with(summary),
        "last line before the verdict is not {summary:?}…\n{}",
        run.describe()
    );
}

fn assert_fail(run: &Run, reason: &str) {
    assert_eq!(
        run.status,
        Some(FAIL_STATUS),
        "guest was not reported as failing\n{}",
        run.describe()
    );
    assert!(
        run.serial.contains("verdict: fail: ") && run.serial.contains(reason),
        "no fail verdict naming {reason:?} on COM1\n{}",
        run.describe()
    );
}

/// In polling mode the slot's line is not routed: no interrupt is counted.
fn assert_interrupts(run: &Run, poll: bool) {
    let n = run.interrupts();
    if poll {
        assert_eq!(n, Some(0), "interrupts in polling mode\n{}", run.describe());
    } else {
        assert!(n.is_some(), "no interrupt count\n{}", run.describe());
    }
}

fn mode(poll: bool) -> &'static str {
    if poll { "poll" } else { "irq" }
}

// --------------------------------------------------------------------------
// rng

/// 1 MiB from `rng-builtin` (QEMU's getrandom), in the scenario's request
/// sizes; §5.4.6.2 (no empty completion) is checked by the driver.
fn rng_builtin(transport: Transport, poll: bool) {
    let mut args = vec![
        "-object",
        "rng-builtin,id=r0",
        "-device",
        "virtio-rng-device,rng=r0",
    ];
    args.extend_from_slice(transport.args());
    let run = boot(RNG, &format!("rng.mode={}", mode(poll)), &args);
    assert_pass(&run, &format!("rng: {MIB} bytes in "));
    assert_interrupts(&run, poll);
    eprintln!(
        "{transport:?} {}: {} in {:?}",
        mode(poll),
        run.summary(),
        run.elapsed
    );
}

#[test]
fn rng_builtin_1mib_legacy_poll() {
    if qemu_ready("rng_builtin_1mib_legacy_poll") {
        rng_builtin(Transport::Legacy, true);
    }
}

#[test]
fn rng_builtin_1mib_legacy_irq() {
    if qemu_ready("rng_builtin_1mib_legacy_irq") {
        rng_builtin(Transport::Legacy, false);
    }
}

#[test]
fn rng_builtin_1mib_modern_poll() {
    if qemu_ready("rng_builtin_1mib_modern_poll") {
        rng_builtin(Transport::Modern, true);
    }
}

#[test]
fn rng_builtin_1mib_modern_irq() {
    if qemu_ready("rng_builtin_1mib_modern_irq") {
        rng_builtin(Transport::Modern, false);
    }
}

/// `rng-random` on a file holding the SplitMix64 stream of a seed: QEMU
/// reads it in order, so the guest checks every byte (`rng.seed`).
fn rng_random_file(test: &str, transport: Transport, poll: bool) {
    let dir = Scratch::new(test);
    let file = dir.path("entropy");
    let seed = 0x5eed_0000_0000_0042;
    fs::write(&file, splitmix(seed, MIB)).expect("writing the entropy file");
    let object = format!("rng-random,id=r0,filename={}", file.display());
    let mut args = vec!["-object", &object, "-device", "virtio-rng-device,rng=r0"];
    args.extend_from_slice(transport.args());
    let run = boot(
        RNG,
        &format!("rng.mode={} rng.seed={seed}", mode(poll)),
        &args,
    );
    assert_pass(&run, &format!("rng: {MIB} bytes in "));
    assert!(
        run.serial.contains("bytes match the SplitMix64 stream"),
        "{}",
        run.describe()
    );
    assert_interrupts(&run, poll);
}

#[test]
fn rng_random_file_matches_seed_legacy_irq() {
    let test = "rng_random_file_matches_seed_legacy_irq";
    if qemu_ready(test) {
        rng_random_file(test, Transport::Legacy, false);
    }
}

#[test]
fn rng_random_file_matches_seed_modern_poll() {
    let test = "rng_random_file_matches_seed_modern_poll";
    if qemu_ready(test) {
        rng_random_file(test, Transport::Modern, true);
    }
}

/// A wrong seed is a failure naming the first differing offset.
#[test]
fn rng_random_file_wrong_seed_fails_at_offset_0() {
    let test = "rng_random_file_wrong_seed_fails_at_offset_0";
    if !qemu_ready(test) {
        return;
    }
    let dir = Scratch::new(test);
    let file = dir.path("entropy");
    fs::write(&file, splitmix(1, 4096)).expect("writing the entropy file");
    let object = format!("rng-random,id=r0,filename={}", file.display());
    let args = ["-object", &object, "-device", "virtio-rng-device,rng=r0"];
    let run = boot(RNG, "rng.seed=2 rng.bytes=64", &args);
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
    let dir = Scratch::new(test);
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
    let mut args = vec!["-object", &object, "-device", "virtio-rng-device,rng=r0"];
    args.extend_from_slice(transport.args());
    let append = format!(
        "rng.mode={} rng.seed={seed} rng.available={AVAILABLE} rng.wait_ms=200",
        mode(poll)
    );
    let run = boot(RNG, &append, &args);
    drop(writer);
    assert_pass(&run, &format!("rng: {AVAILABLE} bytes in "));
    assert!(
        run.serial.contains("request left pending"),
        "{}",
        run.describe()
    );
    assert_interrupts(&run, poll);
}

#[test]
fn rng_available_request_stays_pending_legacy_poll() {
    let test = "rng_available_request_stays_pending_legacy_poll";
    if qemu_ready(test) {
        rng_available(test, Transport::Legacy, true);
    }
}

#[test]
fn rng_available_request_stays_pending_modern_irq() {
    let test = "rng_available_request_stays_pending_modern_irq";
    if qemu_ready(test) {
        rng_available(test, Transport::Modern, false);
    }
}

/// A malformed option value is a failure naming the option.
#[test]
fn rng_bad_mode_fails_naming_it() {
    if qemu_ready("rng_bad_mode_fails_naming_it") {
        let args = ["-device", "virtio-rng-device"];
        let run = boot(RNG, "rng.mode=fast", &args);
        assert_fail(&run, "bad value \"fast\" for rng.mode");
        let run = boot(RNG, "rng.bytes=1x", &args);
        assert_fail(&run, "bad value \"1x\" for rng.bytes");
        let run = boot(RNG, "rng.colour=blue", &args);
        assert_fail(&run, "unknown option \"rng.colour=blue\"");
    }
}

// --------------------------------------------------------------------------
// console

/// `console.test=write`: 64 KiB of the pattern to port 0, a `virtconsole`
/// on a `-chardev file`; the file must be the pattern exactly.
fn console_write(test: &str, transport: Transport, poll: bool) {
    let dir = Scratch::new(test);
    let out = dir.path("port0");
    let chardev = format!("file,id=c0,path={}", out.display());
    let mut args = vec![
        "-chardev",
        &chardev,
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=c0",
    ];
    args.extend_from_slice(transport.args());
    let append = format!("console.mode={} console.test=write", mode(poll));
    let run = boot(CONSOLE, &append, &args);
    assert_pass(&run, "console: write: 65536 bytes, ");
    assert_interrupts(&run, poll);
    let got = fs::read(&out).expect("reading the chardev file");
    let want = pattern(65536);
    assert!(
        got == want,
        "the file differs from the pattern ({} bytes, first difference at {:?})\n{}",
        got.len(),
        got.iter().zip(&want).position(|(a, b)| a != b),
        run.describe()
    );
}

#[test]
fn console_write_64k_legacy_poll() {
    let test = "console_write_64k_legacy_poll";
    if qemu_ready(test) {
        console_write(test, Transport::Legacy, true);
    }
}

#[test]
fn console_write_64k_legacy_irq() {
    let test = "console_write_64k_legacy_irq";
    if qemu_ready(test) {
        console_write(test, Transport::Legacy, false);
    }
}

#[test]
fn console_write_64k_modern_poll() {
    let test = "console_write_64k_modern_poll";
    if qemu_ready(test) {
        console_write(test, Transport::Modern, true);
    }
}

#[test]
fn console_write_64k_modern_irq() {
    let test = "console_write_64k_modern_irq";
    if qemu_ready(test) {
        console_write(test, Transport::Modern, false);
    }
}

/// `console.test=echo`: QEMU listens on a Unix socket (`server=on,wait=off`),
/// this test connects, writes N bytes and reads the same N back.
fn console_echo(test: &str, transport: Transport, poll: bool) {
    const N: usize = 5000;
    let dir = Scratch::new(test);
    let sock = dir.path("console.sock");
    let chardev = format!("socket,id=c0,path={},server=on,wait=off", sock.display());
    let mut args = vec![
        "-chardev",
        &chardev,
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=c0",
    ];
    args.extend_from_slice(transport.args());
    let append = format!(
        "console.mode={} console.test=echo console.bytes={N}",
        mode(poll)
    );
    let qemu = launch(CONSOLE, &append, &args);
    // QEMU creates the socket before the guest runs; wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match UnixStream::connect(&sock) {
            Ok(s) => break Some(s),
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let Some(mut stream) = stream else {
        let run = qemu.finish();
        panic!("cannot connect to {}\n{}", sock.display(), run.describe());
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
    let run = qemu.finish();
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

#[test]
fn console_echo_legacy_irq() {
    let test = "console_echo_legacy_irq";
    if qemu_ready(test) {
        console_echo(test, Transport::Legacy, false);
    }
}

#[test]
fn console_echo_modern_irq() {
    let test = "console_echo_modern_irq";
    if qemu_ready(test) {
        console_echo(test, Transport::Modern, false);
    }
}

#[test]
fn console_echo_modern_poll() {
    let test = "console_echo_modern_poll";
    if qemu_ready(test) {
        console_echo(test, Transport::Modern, true);
    }
}

/// `console.test=multiport`: MULTIPORT, the control queue (§5.3.6.2) until
/// ports 0 (a `virtconsole`) and 1 (a named `virtserialport`) are added and
/// open, port 1's name checked, then 4 KiB of the pattern to each, each
/// port on its own file.
fn console_multiport(test: &str, transport: Transport, poll: bool) {
    let dir = Scratch::new(test);
    let (out0, out1) = (dir.path("port0"), dir.path("port1"));
    let c0 = format!("file,id=c0,path={}", out0.display());
    let c1 = format!("file,id=c1,path={}", out1.display());
    let mut args = vec![
        "-chardev",
        &c0,
        "-chardev",
        &c1,
        "-device",
        "virtio-serial-device,max_ports=2",
        "-device",
        "virtconsole,chardev=c0",
        "-device",
        "virtserialport,chardev=c1,name=org.test.port1",
    ];
    args.extend_from_slice(transport.args());
    let append = format!(
        "console.mode={} console.test=multiport console.name1=org.test.port1",
        mode(poll)
    );
    let run = boot(CONSOLE, &append, &args);
    assert_pass(&run, "console: multiport: 4096 bytes, ");
    assert_interrupts(&run, poll);
    let want = pattern(4096);
    for out in [&out0, &out1] {
        let got = fs::read(out).expect("reading a chardev file");
        assert!(
            got == want,
            "{} differs from the pattern ({} bytes)\n{}",
            out.display(),
            got.len(),
            run.describe()
        );
    }
}

#[test]
fn console_multiport_legacy_irq() {
    let test = "console_multiport_legacy_irq";
    if qemu_ready(test) {
        console_multiport(test, Transport::Legacy, false);
    }
}

#[test]
fn console_multiport_modern_poll() {
    let test = "console_multiport_modern_poll";
    if qemu_ready(test) {
        console_multiport(test, Transport::Modern, true);
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
    let dir = Scratch::new(test);
    let c0 = format!("file,id=c0,path={}", dir.path("port0").display());
    let c1 = format!("file,id=c1,path={}", dir.path("port1").display());
    let args = [
        "-chardev",
        &c0,
        "-chardev",
        &c1,
        "-device",
        "virtio-serial-device,max_ports=2",
        "-device",
        "virtconsole,chardev=c0",
        "-device",
        "virtserialport,chardev=c1,name=org.test.port1",
    ];
    let run = boot(CONSOLE, "console.test=multiport console.name1=other", &args);
    assert_fail(&run, "port 1 is named \"org.test.port1\"");
    let run = boot(CONSOLE, "console.mode=poll", &args);
    assert_fail(&run, "missing option console.test");
}
