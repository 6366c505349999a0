//! The Linux guest under QEMU TCG and what it printed: the machine, the
//! command line, the `vt: NAME: ok|FAIL` lines read back.

use super::*;

/// Which QEMU machine, and so which virtio transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    /// `microvm` with ACPI: modern virtio-mmio (QueueNumMax 1024 for every
    /// device).
    Microvm,
    /// `q35`: virtio-pci (the `-pci` device names).
    Q35,
}

impl Machine {
    /// Both.
    pub const ALL: [Machine; 2] = [Machine::Microvm, Machine::Q35];

    /// QEMU's device name for `base` (`vhost-user-blk`) on this machine.
    pub fn device(self, base: &str) -> String {
        match self {
            Machine::Microvm => base.to_string(),
            Machine::Q35 => format!("{base}-pci"),
        }
    }

    /// QEMU's name for the in-QEMU virtio device `base` (`virtio-net`) on
    /// this machine's transport.
    pub fn virtio(self, base: &str) -> String {
        match self {
            Machine::Microvm => format!("{base}-device"),
            Machine::Q35 => format!("{base}-pci"),
        }
    }

    /// The short name.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        }
    }
}

/// A Linux guest under QEMU TCG with shared RAM.
#[derive(Clone, Debug)]
pub struct LinuxVm {
    /// The machine.
    pub machine: Machine,
    /// vCPUs.
    pub smp: u32,
    /// RAM in MiB (also the memfd's size).
    pub ram_mib: u32,
    /// Device arguments (chardevs, devices, netdevs).
    pub args: Vec<String>,
    /// Longest the guest may run.
    pub timeout: Duration,
}

impl LinuxVm {
    /// One vCPU, 256 MiB, no devices, three minutes.
    pub fn new(machine: Machine) -> LinuxVm {
        LinuxVm {
            machine,
            smp: 1,
            ram_mib: 256,
            args: Vec::new(),
            timeout: Duration::from_secs(180),
        }
    }

    /// QEMU's arguments to boot `kernel` with `initrd`.
    pub fn command_line(&self, kernel: &Path, initrd: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_string());
        push("-M");
        push(match self.machine {
            Machine::Microvm => "microvm,memory-backend=mem",
            Machine::Q35 => "q35,memory-backend=mem",
        });
        for s in ["-accel", "tcg", "-nodefaults", "-no-reboot", "-nographic"] {
            push(s);
        }
        for s in ["-serial", "stdio", "-smp"] {
            push(s);
        }
        push(&self.smp.to_string());
        push("-m");
        push(&format!("{}M", self.ram_mib));
        push("-object");
        push(&format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            self.ram_mib
        ));
        if self.machine == Machine::Microvm {
            // vhost-user needs the modern transport (§4.2.2).
            push("-global");
            push("virtio-mmio.force-legacy=false");
        }
        push("-kernel");
        a.push(kernel.display().to_string());
        a.push("-initrd".into());
        a.push(initrd.display().to_string());
        a.push("-append".into());
        let mut append = String::from("console=ttyS0 panic=-1 loglevel=6");
        if let Some(khz) = host_tsc_khz() {
            // Under TCG the guest's TSC is the host's. On a busy host the
            // kernel's PIT calibration fails, and `microvm` has no HPET or
            // ACPI PM timer to fall back on: boot then stops at "tsc: No
            // reference (HPET/PMTIMER) available". Give it the frequency.
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        a.push(append);
        a.extend(self.args.iter().cloned());
        a
    }

    /// Starts QEMU.
    pub fn spawn(&self, kernel: &Path, initrd: &Path) -> io::Result<RunningQemu> {
        let mut cmd = Command::new(QEMU);
        cmd.args(self.command_line(kernel, initrd));
        RunningQemu::spawn(cmd, self.timeout)
    }
}

/// The host's TSC frequency in kHz, as `/proc/cpuinfo` gives it (`cpu
/// MHz`), if it does.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    (mhz > 1.0).then_some((mhz * 1000.0) as u64)
}

/// One check's outcome as the guest printed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckLine {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What it printed after `ok`/`FAIL`.
    pub detail: String,
}

/// A finished Linux boot.
#[derive(Debug)]
pub struct LinuxRun {
    /// The QEMU run (serial output, status).
    pub run: QemuRun,
}

impl LinuxRun {
    /// Every `vt: NAME: ok|FAIL …` line, in order.
    pub fn checks(&self) -> Vec<CheckLine> {
        self.run
            .serial
            .lines()
            .filter_map(|l| l.strip_prefix("vt: "))
            .filter_map(|l| {
                let (name, rest) = l.split_once(": ")?;
                let (ok, detail) = if let Some(d) = rest.strip_prefix("ok") {
                    (true, d)
                } else {
                    (false, rest.strip_prefix("FAIL")?)
                };
                Some(CheckLine {
                    name: name.to_string(),
                    ok,
                    detail: detail.trim().to_string(),
                })
            })
            .collect()
    }

    /// The detail of passed check `name`.
    pub fn detail(&self, name: &str) -> Option<String> {
        self.checks()
            .into_iter()
            .find(|c| c.name == name && c.ok)
            .map(|c| c.detail)
    }

    /// The text after `vt: PREFIX` on the first such line.
    pub fn said(&self, prefix: &str) -> Option<&str> {
        self.run
            .serial
            .lines()
            .find_map(|l| l.strip_prefix("vt: ")?.strip_prefix(prefix))
    }

    /// `Ok` if the guest reached `vt: end`, no check failed, and every
    /// check in `expected` passed; otherwise what went wrong, with the
    /// whole run.
    pub fn check(&self, expected: &[&str]) -> Result<(), String> {
        let checks = self.checks();
        let mut problems = Vec::new();
        for c in checks.iter().filter(|c| !c.ok) {
            problems.push(format!("{} failed: {}", c.name, c.detail));
        }
        for e in expected {
            if !checks.iter().any(|c| c.name == *e && c.ok) {
                problems.push(format!("{e} did not pass"));
            }
        }
        if !self.run.serial.lines().any(|l| l == "vt: end") {
            problems.push("the guest never reached the end of its plan".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}\n{}", problems.join("\n"), self.run.describe()))
        }
    }
}

/// Boots `vm` with an initramfs of `modules`, the helper and `plan` (built
/// in `dir`), waits for it to power off, and returns the run.
pub fn boot(
    kit: &Kit,
    vm: &LinuxVm,
    dir: &Path,
    modules: &[&str],
    plan: &str,
) -> Result<LinuxRun, String> {
    let helper = build_helper(dir)?;
    let image = Initramfs {
        kit,
        modules,
        helper: &helper,
        plan,
    }
    .build()?;
    let initrd = dir.join("initrd.cpio");
    std::fs::write(&initrd, image).map_err(|e| format!("{}: {e}", initrd.display()))?;
    let run = vm
        .spawn(&kit.kernel, &initrd)
        .map_err(|e| format!("{QEMU}: {e}"))?
        .wait()
        .map_err(|e| format!("{QEMU}: {e}"))?;
    Ok(LinuxRun { run })
}
