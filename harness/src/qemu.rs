//! QEMU as a reference monitor: boots a tiny guest ELF under `microvm`
//! (PVH, `acpi=off`, KVM) with the test-exit port and COM1 on a pipe, and
//! reports what happened. Tests use it to prove a guest against known-good
//! devices; the benchmark uses it as the peer our monitor is compared with.
//!
//! The guest's verdict reaches QEMU's exit status through `isa-debug-exit`:
//! a value `v` written to port 0xf4 exits with `(v << 1) | 1`.

use std::io::{self, Read};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::ports::{EXIT_FAIL, EXIT_PASS, EXIT_PORT};

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
        self.args(["-global", "virtio-mmio.force-legacy=false"])
    }

    /// Longest the guest may run before QEMU is killed.
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
        let mut cmd = Command::new(QEMU);
        cmd.args(self.command_line())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let waited = wait_bounded(&mut child, self.timeout);
        let elapsed = start.elapsed();
        let (status, timed_out) = waited?;
        Ok(QemuRun {
            status,
            serial: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
            elapsed,
            timed_out,
        })
    }
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            // A read error just ends the capture; what was read is kept.
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    })
}

/// Waits for `child` at most `timeout`, killing it if it is still running.
fn wait_bounded(child: &mut Child, timeout: Duration) -> io::Result<(Option<i32>, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait()? {
            Some(status) => return Ok((status.code(), false)),
            None if Instant::now() >= deadline => {
                // Kill and reap our own child; errors mean it already exited.
                let _ = child.kill();
                let _ = child.wait();
                return Ok((None, true));
            }
            None => thread::sleep(Duration::from_millis(1)),
        }
    }
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
}
