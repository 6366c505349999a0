//! QEMU as a reference monitor: boots a tiny guest ELF under `microvm`
//! (PVH, `acpi=off`, KVM) with the test-exit port and COM1 on a pipe, and
//! reports what happened. Tests use it to prove a guest against known-good
//! devices; the benchmark uses it as the peer our monitor is compared with.
//!
//! The guest's verdict reaches QEMU's exit status through `isa-debug-exit`:
//! a value `v` written to port 0xf4 exits with `(v << 1) | 1`.
//!
//! [`Qemu::run`] boots and waits; [`Qemu::spawn`] hands back the running
//! QEMU so a test can talk to its sockets first. Either way the run is
//! bounded: at the timeout QEMU gets SIGKILL (a livelocked QEMU main loop
//! was seen to ignore SIGTERM) and is reaped. Nothing here parses what the
//! guest says beyond the verdict and summary lines of the scenario contract
//! (`harness/guests/README.md`).

use std::fmt;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use monitor::ports::{EXIT_FAIL, EXIT_PASS, EXIT_PORT};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// QEMU's exit status when the guest reports a pass.
pub const PASS_STATUS: i32 = ((EXIT_PASS as i32) << 1) | 1;

/// QEMU's exit status when the guest reports a failure.
pub const FAIL_STATUS: i32 = ((EXIT_FAIL as i32) << 1) | 1;

/// Why QEMU cannot run guests here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !std::path::Path::new("/dev/kvm").exists() {
        return Some("/dev/kvm is missing".into());
    }
    match Command::new(QEMU).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`{QEMU} --version` failed: {}", out.status)),
        Err(e) => Some(format!("{QEMU} not found ({e}); .ci/setup installs it")),
    }
}

/// True if a QEMU test should go on; prints why not otherwise, and panics
/// instead when `HARNESS_REQUIRE_QEMU=1` (CI on a machine that has it).
pub fn qemu_or_skip(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var_os("HARNESS_REQUIRE_QEMU").is_some_and(|v| v == "1") {
        panic!("{test}: {reason}, and HARNESS_REQUIRE_QEMU=1");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Which virtio-mmio transport QEMU's `virtio-*-device`s present.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Version 1, the legacy interface (§4.2.4); QEMU's default.
    Legacy,
    /// Version 2, the virtio 1.x interface (§4.2.2), with
    /// `-global virtio-mmio.force-legacy=false`.
    Modern,
}

impl Transport {
    /// Both, legacy first.
    pub const ALL: [Transport; 2] = [Transport::Legacy, Transport::Modern];

    /// The QEMU arguments that select it (none for the default).
    pub fn args(self) -> &'static [&'static str] {
        match self {
            Transport::Legacy => &[],
            Transport::Modern => &["-global", "virtio-mmio.force-legacy=false"],
        }
    }

    /// The `Version` register a guest reads (§4.2.2: 0x2; legacy: 0x1).
    pub fn version(self) -> u32 {
        match self {
            Transport::Legacy => 1,
            Transport::Modern => 2,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Legacy => "legacy",
            Transport::Modern => "modern",
        })
    }
}

/// What one QEMU run left behind.
#[derive(Clone, Debug)]
pub struct QemuRun {
    /// Exit status, `None` if killed by a signal or by the timeout.
    pub status: Option<i32>,
    /// COM1 output, `\r\n` folded to `\n`.
    pub serial: String,
    /// QEMU's own messages.
    pub stderr: String,
    /// Process start to exit.
    pub elapsed: Duration,
    /// Whether it was killed at the timeout.
    pub timed_out: bool,
}

impl QemuRun {
    /// Whether the guest reported a pass.
    pub fn passed(&self) -> bool {
        self.status == Some(PASS_STATUS)
    }

    /// Whether the guest reported a failure (as opposed to hanging or QEMU
    /// dying).
    pub fn failed(&self) -> bool {
        self.status == Some(FAIL_STATUS)
    }

    /// `Ok` if the guest passed: exit status [`PASS_STATUS`] and a
    /// `verdict: pass` line on COM1; otherwise what is missing, with
    /// [`QemuRun::describe`].
    pub fn check_pass(&self) -> Result<(), String> {
        if !self.passed() {
            return Err(format!("guest did not pass\n{}", self.describe()));
        }
        if !self.serial.contains("verdict: pass") {
            return Err(format!("no pass verdict on COM1\n{}", self.describe()));
        }
        Ok(())
    }

    /// [`QemuRun::check_pass`], and the guest's last line before its
    /// verdict ([`QemuRun::summary`]) starts with `summary`.
    pub fn check_pass_with_summary(&self, summary: &str) -> Result<(), String> {
        self.check_pass()?;
        if !self.summary().starts_with(summary) {
            return Err(format!(
                "last line before the verdict is not {summary:?}…\n{}",
                self.describe()
            ));
        }
        Ok(())
    }

    /// `Ok` if the guest reported a failure naming `reason`: exit status
    /// [`FAIL_STATUS`], a `verdict: fail: ` line and `reason` on COM1;
    /// otherwise what is missing, with [`QemuRun::describe`].
    pub fn check_fail(&self, reason: &str) -> Result<(), String> {
        if !self.failed() {
            return Err(format!(
                "guest was not reported as failing\n{}",
                self.describe()
            ));
        }
        if !(self.serial.contains("verdict: fail: ") && self.serial.contains(reason)) {
            return Err(format!(
                "no fail verdict naming {reason:?} on COM1\n{}",
                self.describe()
            ));
        }
        Ok(())
    }

    /// The guest's summary: the last line of COM1 before its last
    /// `verdict: ` line, or `""` if there is none.
    pub fn summary(&self) -> &str {
        let lines: Vec<&str> = self.serial.lines().collect();
        lines
            .iter()
            .rposition(|l| l.starts_with("verdict: "))
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| lines.get(i).copied())
            .unwrap_or("")
    }

    /// The text after `prefix` on the first COM1 line starting with it.
    pub fn line_after(&self, prefix: &str) -> Option<&str> {
        self.serial
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
    }

    /// Everything about the run, for an assertion message.
    pub fn describe(&self) -> String {
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
}

/// A QEMU `microvm` command line for one guest.
#[derive(Clone, Debug)]
pub struct Qemu {
    kernel: String,
    append: String,
    memory: String,
    extra: Vec<String>,
    timeout: Duration,
}

impl Qemu {
    /// `microvm,acpi=off` with KVM, 64 MiB, one vCPU, the exit port, COM1
    /// on stdout, no default devices, booting `kernel` by PVH.
    pub fn microvm(kernel: impl Into<String>) -> Qemu {
        Qemu {
            kernel: kernel.into(),
            append: String::new(),
            memory: "64M".into(),
            extra: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }

    /// The kernel command line.
    pub fn append(mut self, cmdline: impl Into<String>) -> Qemu {
        self.append = cmdline.into();
        self
    }

    /// RAM size (`-m`).
    pub fn memory(mut self, size: impl Into<String>) -> Qemu {
        self.memory = size.into();
        self
    }

    /// More arguments (devices, objects, globals).
    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Qemu {
        self.extra
            .extend(args.into_iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// The modern virtio-mmio transport (version 2) instead of QEMU's
    /// default legacy one.
    pub fn modern(self) -> Qemu {
        self.transport(Transport::Modern)
    }

    /// The virtio-mmio transport version of every device.
    pub fn transport(self, transport: Transport) -> Qemu {
        self.args(transport.args())
    }

    /// Longest the guest may run, from [`Qemu::spawn`], before QEMU is
    /// killed (30 s unless set).
    pub fn timeout(mut self, timeout: Duration) -> Qemu {
        self.timeout = timeout;
        self
    }

    /// The full argument list.
    pub fn command_line(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-M",
            "microvm,acpi=off",
            "-accel",
            "kvm",
            "-cpu",
            "qemu64,-pni",
            "-m",
            &self.memory,
            "-smp",
            "1",
            "-no-reboot",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-device",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(format!("isa-debug-exit,iobase={EXIT_PORT:#x},iosize=4"));
        a.extend(["-kernel".to_string(), self.kernel.clone()]);
        a.extend(self.extra.iter().cloned());
        if !self.append.is_empty() {
            a.extend(["-append".to_string(), self.append.clone()]);
        }
        a
    }

    /// Runs QEMU to the guest's exit (or the timeout).
    pub fn run(&self) -> io::Result<QemuRun> {
        self.spawn()?.wait()
    }

    /// Starts QEMU and returns at once; [`RunningQemu::wait`] collects the
    /// run. COM1 and QEMU's stderr are captured from the start.
    pub fn spawn(&self) -> io::Result<RunningQemu> {
        let mut cmd = Command::new(QEMU);
        cmd.args(self.command_line());
        RunningQemu::spawn(cmd, self.timeout)
    }
}

/// A QEMU started by [`Qemu::spawn`], still running (as far as we know).
///
/// Dropped without [`RunningQemu::wait`] (a test that panicked midway), it
/// kills and reaps QEMU, so no process or zombie outlives it.
#[derive(Debug)]
pub struct RunningQemu {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    start: Instant,
    deadline: Instant,
    reaped: bool,
}

impl RunningQemu {
    /// Starts `cmd` with stdin empty and stdout/stderr captured, to be
    /// killed `timeout` from now.
    pub(crate) fn spawn(mut cmd: Command, timeout: Duration) -> io::Result<RunningQemu> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("starting {}: {e}", cmd.get_program().to_string_lossy()),
            )
        })?;
        crate::progress::adopt(child.id());
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        Ok(RunningQemu {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            start,
            deadline: start.checked_add(timeout).unwrap_or(start),
            reaped: false,
        })
    }

    /// QEMU's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Connects to a Unix socket QEMU serves (e.g. `-chardev
    /// socket,server=on,wait=off`), retrying while it does not exist yet.
    /// Gives up with the last connect error when QEMU exits, and with
    /// [`io::ErrorKind::TimedOut`] at the deadline.
    pub fn connect_unix(&mut self, path: &Path) -> io::Result<UnixStream> {
        loop {
            let err = match UnixStream::connect(path) {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::new(
                    err.kind(),
                    format!(
                        "connect {}: {err}; {QEMU} exited ({status})",
                        path.display()
                    ),
                ));
            }
            if Instant::now() >= self.deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connect {}: {err}; timed out", path.display()),
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits for QEMU to exit, at most until the deadline; then kills it
    /// with SIGKILL and reaps it (`timed_out`, no status).
    pub fn wait(mut self) -> io::Result<QemuRun> {
        let (status, timed_out) = loop {
            if let Some(status) = self.child.try_wait()? {
                break (status.code(), false);
            }
            if Instant::now() >= self.deadline {
                self.kill_and_reap();
                break (None, true);
            }
            thread::sleep(Duration::from_millis(1));
        };
        self.reaped = true;
        crate::progress::release(self.child.id());
        let elapsed = self.start.elapsed();
        Ok(QemuRun {
            status,
            serial: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
            elapsed,
            timed_out,
        })
    }

    /// SIGKILL (what `Child::kill` sends) and wait; errors mean it has
    /// already exited and been reaped.
    fn kill_and_reap(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::progress::release(self.child.id());
    }
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        if !self.reaped {
            self.kill_and_reap();
        }
    }
}

/// Reads `pipe` to its end on a thread of its own, `\r\n` folded to `\n`.
fn read_all(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error just ends the capture; what was read is kept.
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    })
}

/// What a reader thread captured (nothing if it is missing or panicked).
fn join(reader: Option<JoinHandle<String>>) -> String {
    reader.and_then(|r| r.join().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_has_the_exit_port_and_the_guest() {
        let q = Qemu::microvm("/g.elf")
            .append("a=1")
            .modern()
            .args(["-device", "virtio-rng-device"]);
        let line = q.command_line().join(" ");
        assert!(line.contains("-M microvm,acpi=off"));
        assert!(line.contains("isa-debug-exit,iobase=0xf4,iosize=4"));
        assert!(line.contains("-kernel /g.elf"));
        assert!(line.contains("-global virtio-mmio.force-legacy=false"));
        assert!(line.ends_with("-device virtio-rng-device -append a=1"));
        assert_eq!(PASS_STATUS, 33);
        assert_eq!(FAIL_STATUS, 35);
    }

    #[test]
    fn transports_select_the_mmio_version() {
        assert!(Transport::Legacy.args().is_empty());
        assert_eq!(Transport::Legacy.version(), 1);
        assert_eq!(Transport::Modern.version(), 2);
        assert_eq!(Transport::ALL.map(|t| t.to_string()), ["legacy", "modern"]);
        let modern = Qemu::microvm("/g.elf").transport(Transport::Modern);
        assert_eq!(
            modern.command_line(),
            Qemu::microvm("/g.elf").modern().command_line()
        );
        let legacy = Qemu::microvm("/g.elf").transport(Transport::Legacy);
        assert_eq!(
            legacy.command_line(),
            Qemu::microvm("/g.elf").command_line()
        );
    }

    fn run_with(status: Option<i32>, serial: &str) -> QemuRun {
        QemuRun {
            status,
            serial: serial.into(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            timed_out: status.is_none(),
        }
    }

    #[test]
    fn the_summary_is_the_line_before_the_last_verdict() {
        let run = run_with(
            Some(PASS_STATUS),
            "boot\nrng: 64 bytes in 2 requests, 3 interrupts\nverdict: pass\n",
        );
        assert_eq!(run.summary(), "rng: 64 bytes in 2 requests, 3 interrupts");
        assert_eq!(run_with(None, "verdict: pass\n").summary(), "");
        assert_eq!(run_with(None, "no verdict\n").summary(), "");
        assert_eq!(
            run.line_after("rng: "),
            Some("64 bytes in 2 requests, 3 interrupts")
        );
        assert_eq!(run.line_after("console: "), None);
    }

    #[test]
    fn pass_and_fail_need_the_status_and_the_verdict_line() {
        assert_eq!(
            run_with(Some(PASS_STATUS), "verdict: pass\n").check_pass(),
            Ok(())
        );
        let no_line = run_with(Some(PASS_STATUS), "").check_pass();
        assert!(no_line.is_err_and(|e| e.starts_with("no pass verdict on COM1")));
        let hung = run_with(None, "verdict: pass\n").check_pass();
        assert!(hung.is_err_and(|e| e.starts_with("guest did not pass")));

        let failed = run_with(Some(FAIL_STATUS), "verdict: fail: bad value \"x\"\n");
        assert_eq!(failed.check_fail("bad value"), Ok(()));
        assert!(
            failed
                .check_fail("other")
                .is_err_and(|e| e.contains("naming \"other\""))
        );
        let passed = run_with(Some(PASS_STATUS), "verdict: pass\n").check_fail("x");
        assert!(passed.is_err_and(|e| e.starts_with("guest was not reported as failing")));
    }

    /// A process that is still alive (not a zombie) answers signal 0.
    fn alive(pid: u32) -> bool {
        let pid = libc::pid_t::try_from(pid).expect("pids fit pid_t");
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn a_process_that_exits_is_collected_with_its_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf 'a\\r\\nb\\n'; echo oops >&2; exit 33"]);
        let run = RunningQemu::spawn(cmd, Duration::from_secs(30))
            .and_then(RunningQemu::wait)
            .expect("sh runs");
        assert_eq!(run.status, Some(33));
        assert!(run.passed() && !run.timed_out);
        assert_eq!(run.serial, "a\nb\n");
        assert_eq!(run.stderr, "oops\n");
    }

    /// `sleep 60`, to be killed `timeout` from now.
    fn sleeper(timeout: Duration) -> RunningQemu {
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        RunningQemu::spawn(cmd, timeout).expect("sleep runs")
    }

    #[test]
    fn at_the_deadline_the_process_is_killed_and_reaped() {
        let running = sleeper(Duration::from_millis(50));
        let pid = running.id();
        let run = running.wait().expect("waiting");
        assert!(run.timed_out, "{}", run.describe());
        assert_eq!(run.status, None);
        assert!(!alive(pid), "sleep {pid} survived");
    }

    #[test]
    fn dropping_a_running_process_kills_and_reaps_it() {
        let running = sleeper(Duration::from_secs(60));
        let pid = running.id();
        assert!(alive(pid));
        drop(running);
        assert!(!alive(pid), "sleep {pid} survived");
    }

    #[test]
    fn connecting_gives_up_when_the_process_exits() {
        let cmd = Command::new("true");
        let mut running = RunningQemu::spawn(cmd, Duration::from_secs(30)).expect("true runs");
        let path = std::env::temp_dir().join(format!("no-such-{}.sock", std::process::id()));
        let err = running.connect_unix(&path).expect_err("nothing listens");
        assert!(err.to_string().contains("exited"), "{err}");
        assert_eq!(running.wait().expect("waiting").status, Some(0));
    }
}
