//! Linux as a peer: a stock distribution kernel drives our devices with its
//! own virtio drivers, which nobody here wrote.
//!
//! `.ci/setup` downloads (never builds) Debian's `linux-image-cloud-amd64`
//! and `busybox-static` and unpacks them into [`default_dir`]. A test builds
//! an initramfs ([`Initramfs`]): busybox, the virtio modules in dependency
//! order (the `.deb` has no `modules.dep`, so each module's `depends=` is
//! read from its `.modinfo` section, [`modinfo_depends`]), a small static
//! helper built from `harness/linux/vtio.c` ([`build_helper`]), the init
//! script `harness/linux/init.sh`, and the test's plan: shell lines that
//! run checks and print `vt: NAME: ok …` or `vt: NAME: FAIL …`.
//!
//! Linux cannot run under KVM on these machines (`kvm_pvm`), so
//! [`LinuxVm`] boots it under QEMU TCG, on `microvm` (virtio-mmio, found by
//! ACPI: the cloud kernel lacks `virtio_mmio.device=`) or `q35`
//! (virtio-pci), with guest RAM on a shared memfd so that our devices can
//! serve it over vhost-user. [`LinuxRun`] reads the verdict lines back.
//!
//! Not here: the devices and their checks (the tests say what to run), a
//! kernel built from source, KVM.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::qemu::{QEMU, QemuRun, RunningQemu};

/// Set to a directory, the kit is taken from there instead of
/// [`default_dir`].
pub const DIR_ENV: &str = "HARNESS_LINUX_DIR";

/// The init script (PID 1 of every initramfs built here).
pub const INIT_SH: &str = include_str!("../linux/init.sh");

/// The helper's C source.
pub const VTIO_C: &str = include_str!("../linux/vtio.c");

/// Where `.ci/setup` unpacks the kernel and busybox: `$HARNESS_LINUX_DIR`,
/// else `$XDG_CACHE_HOME/virtio-workspace/linux`, else
/// `$HOME/.cache/virtio-workspace/linux`, so that a machine downloads them
/// once for every clone and CI run.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(DIR_ENV) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    cache.join("virtio-workspace").join("linux")
}

/// A stock kernel, its modules and busybox, as `.ci/setup` unpacked them:
/// `DIR/kernel/` holds the `linux-image-*` package's tree (`boot/vmlinuz-*`,
/// `lib/modules/RELEASE/`), `DIR/busybox/bin/busybox` the static busybox.
#[derive(Clone, Debug)]
pub struct Kit {
    /// The kernel image (a bzImage).
    pub kernel: PathBuf,
    /// Its release, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// The static busybox.
    pub busybox: PathBuf,
    /// Every module, by name (`-` read as `_`, as the kernel does).
    modules: BTreeMap<String, PathBuf>,
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl Kit {
    /// The kit in `dir`, or what is missing.
    pub fn open(dir: &Path) -> Result<Kit, String> {
        let kdir = dir.join("kernel");
        let boot = kdir.join("boot");
        let kernel = std::fs::read_dir(&boot)
            .map_err(|e| {
                format!(
                    "{}: {e} (.ci/setup unpacks the kernel there)",
                    boot.display()
                )
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
            .ok_or_else(|| format!("no vmlinuz-* in {}", boot.display()))?;
        let release = kernel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .unwrap_or_default()
            .to_string();
        let mdir = kdir.join("lib/modules").join(&release).join("kernel");
        let mut modules = BTreeMap::new();
        let mut stack = vec![mdir.clone()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for e in entries.filter_map(Result::ok) {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some(name) = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    modules.insert(normalize(name), p.clone());
                }
            }
        }
        if modules.is_empty() {
            return Err(format!("no modules under {}", mdir.display()));
        }
        let busybox = dir.join("busybox/bin/busybox");
        if !busybox.is_file() {
            return Err(format!(
                "{} is missing (.ci/setup unpacks busybox-static there)",
                busybox.display()
            ));
        }
        Ok(Kit {
            kernel,
            release,
            busybox,
            modules,
        })
    }

    /// The kit in [`default_dir`].
    pub fn find() -> Result<Kit, String> {
        Self::open(&default_dir())
    }

    /// The module file for `name`.
    pub fn module(&self, name: &str) -> Option<&Path> {
        self.modules.get(&normalize(name)).map(PathBuf::as_path)
    }

    /// `wanted` and everything they depend on, each after its
    /// dependencies (the order `insmod` needs), by their `.modinfo`.
    pub fn modules_in_order(&self, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
        fn visit(
            kit: &Kit,
            name: &str,
            path: &mut Vec<String>,
            done: &mut HashSet<String>,
            out: &mut Vec<(String, PathBuf)>,
        ) -> Result<(), String> {
            let name = normalize(name);
            if done.contains(&name) {
                return Ok(());
            }
            if path.contains(&name) {
                return Err(format!("module dependency loop: {path:?} -> {name}"));
            }
            let file = kit
                .module(&name)
                .ok_or_else(|| format!("module {name} is not in the kernel package"))?
                .to_path_buf();
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            path.push(name.clone());
            for dep in modinfo_depends(&bytes).map_err(|e| format!("{}: {e}", file.display()))? {
                visit(kit, &dep, path, done, out)?;
            }
            path.pop();
            done.insert(name.clone());
            out.push((name, file));
            Ok(())
        }
        let mut out = Vec::new();
        let mut done = HashSet::new();
        for w in wanted {
            visit(self, w, &mut Vec::new(), &mut done, &mut out)?;
        }
        Ok(out)
    }
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The modules a kernel module needs: the `depends=` entry of its
/// `.modinfo` section (what `depmod` reads), from an ELF64 little-endian
/// `.ko` file. Every offset is checked; a malformed file is an error.
pub fn modinfo_depends(ko: &[u8]) -> Result<Vec<String>, String> {
    let bad = |what: &str| format!("not a usable ELF64 module: {what}");
    if ko.get(..4) != Some(b"\x7fELF".as_slice()) || ko.get(4) != Some(&2) || ko.get(5) != Some(&1)
    {
        return Err(bad("no ELF64 little-endian header"));
    }
    let shoff = le_u64(ko, 0x28).ok_or_else(|| bad("header"))?;
    let shentsize = usize::from(le_u16(ko, 0x3a).ok_or_else(|| bad("header"))?);
    let shnum = usize::from(le_u16(ko, 0x3c).ok_or_else(|| bad("header"))?);
    let shstrndx = usize::from(le_u16(ko, 0x3e).ok_or_else(|| bad("header"))?);
    if shentsize < 0x40 {
        return Err(bad("section header size"));
    }
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let at = usize::try_from(shoff)
            .ok()?
            .checked_add(i.checked_mul(shentsize)?)?;
        let name = le_u32(ko, at)?;
        let off = usize::try_from(le_u64(ko, at + 0x18)?).ok()?;
        let size = usize::try_from(le_u64(ko, at + 0x20)?).ok()?;
        off.checked_add(size).filter(|end| *end <= ko.len())?;
        Some((name, off, size))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(|| bad("section names"))?;
    let names = &ko[stroff..stroff + strsize];
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or_else(|| bad("section header"))?;
        let name = names
            .get(name as usize..)
            .and_then(|n| n.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        for entry in ko[off..off + size].split(|b| *b == 0) {
            if let Some(deps) = entry.strip_prefix(b"depends=") {
                let deps = std::str::from_utf8(deps).map_err(|_| bad("depends= not UTF-8"))?;
                return Ok(deps
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect());
            }
        }
        return Ok(Vec::new());
    }
    Err(bad("no .modinfo section"))
}

/// Why Linux cannot boot here, or `None`: QEMU (TCG needs no KVM) and the
/// kit.
pub fn unavailable() -> Option<String> {
    if let Err(e) = Command::new(QEMU).arg("--version").output() {
        return Some(format!("{QEMU} not found ({e}); .ci/setup installs it"));
    }
    if let Err(e) = Kit::find() {
        return Some(format!("no Linux kit: {e}"));
    }
    if Command::new("cc").arg("--version").output().is_err() {
        return Some("no C compiler (`cc`) for the static helper".into());
    }
    None
}

/// The kit if test `test` can boot Linux; otherwise prints why and returns
/// `None`, or panics where the environment requires these tests
/// (`HARNESS_REQUIRE_QEMU=1`, what `.ci/test` sets where `/dev/kvm`
/// exists, or `HARNESS_REQUIRE_LINUX=1`).
pub fn linux_or_skip(test: &str) -> Option<Kit> {
    match unavailable() {
        None => Kit::find().ok(),
        Some(why) => {
            let set = |k: &str| std::env::var(k).as_deref() == Ok("1");
            if set("HARNESS_REQUIRE_QEMU") || set("HARNESS_REQUIRE_LINUX") {
                panic!("{test}: {why}, and HARNESS_REQUIRE_QEMU or HARNESS_REQUIRE_LINUX is 1");
            }
            eprintln!("SKIP {test}: {why}");
            None
        }
    }
}

/// Builds the helper statically into `dir` (`dir/vtio`), from
/// [`VTIO_C`].
pub fn build_helper(dir: &Path) -> Result<PathBuf, String> {
    let src = dir.join("vtio.c");
    let out = dir.join("vtio");
    std::fs::write(&src, VTIO_C).map_err(|e| format!("{}: {e}", src.display()))?;
    let o = Command::new("cc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| format!("cc: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "cc -static vtio.c failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(out)
}

/// A `newc` cpio archive (the initramfs format the kernel unpacks), built
/// in memory. Entries are written as given; a parent directory must come
/// before what it holds.
#[derive(Debug, Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(namesize).unwrap_or(u32::MAX),
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            let _ = write!(HexTo(&mut self.buf), "{f:08x}");
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> &mut Cpio {
        self.entry(name, 0o040_755, (0, 0), &[]);
        self
    }

    /// A regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Cpio {
        self.entry(name, 0o100_000 | (perm & 0o7777), (0, 0), data);
        self
    }

    /// A character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Cpio {
        self.entry(name, 0o020_600, (major, minor), &[]);
        self
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// `fmt::Write` into a byte buffer (cpio's hex fields).
struct HexTo<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for HexTo<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// What goes into one boot's initramfs.
#[derive(Debug)]
pub struct Initramfs<'a> {
    /// The kit (busybox and modules).
    pub kit: &'a Kit,
    /// Modules to load, dependencies added and ordered here.
    pub modules: &'a [&'a str],
    /// The static helper ([`build_helper`]), put at `/vt/vtio`.
    pub helper: &'a Path,
    /// Shell lines the init script sources after loading the modules.
    pub plan: &'a str,
}

impl Initramfs<'_> {
    /// The archive.
    pub fn build(&self) -> Result<Vec<u8>, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mods = self.kit.modules_in_order(self.modules)?;
        let mut c = Cpio::new();
        for d in [
            "bin",
            "dev",
            "proc",
            "sys",
            "tmp",
            "run",
            "vt",
            "lib",
            "lib/modules",
        ] {
            c.dir(d);
        }
        c.char_dev("dev/console", 5, 1);
        c.char_dev("dev/null", 1, 3);
        c.file("init", 0o755, INIT_SH.as_bytes());
        c.file("bin/busybox", 0o755, &read(&self.kit.busybox)?);
        c.file("vt/vtio", 0o755, &read(self.helper)?);
        c.file("vt/plan.sh", 0o644, self.plan.as_bytes());
        let mut list = String::new();
        for (name, path) in &mods {
            c.file(&format!("lib/modules/{name}.ko"), 0o644, &read(path)?);
            let _ = writeln!(list, "{name}");
        }
        c.file("vt/modules", 0o644, list.as_bytes());
        Ok(c.finish())
    }
}

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

/// Byte `o` of the pattern the helper and the host share: the 8 bytes at
/// `o & !7` are the little-endian `(o & !7) ^ seed`.
pub fn pattern_byte(o: u64, seed: u64) -> u8 {
    (((o & !7) ^ seed) >> (8 * (o & 7))) as u8
}

/// `buf` filled with the pattern from offset `off`.
pub fn fill_pattern(buf: &mut [u8], off: u64, seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(off + i as u64, seed);
    }
}

/// The first offset of `buf` (at `off`) that is not the pattern.
pub fn pattern_mismatch(buf: &[u8], off: u64, seed: u64) -> Option<u64> {
    buf.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern_byte(off + *i as u64, seed))
        .map(|(i, _)| off + i as u64)
}

/// The host end of the helper's `tcp` command: accepts connections on a
/// listener (bound inside a network namespace, for instance), and for each
/// reads `send N SEED` (then checks N pattern bytes and answers `ok N`) or
/// `recv N SEED` (then sends N pattern bytes). Every connection's outcome
/// is recorded.
#[derive(Debug)]
pub struct PatternServer {
    results: Arc<Mutex<Vec<Result<String, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PatternServer {
    /// Serves `listener` on a thread until dropped.
    pub fn start(listener: TcpListener) -> io::Result<PatternServer> {
        listener.set_nonblocking(true)?;
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (results.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || {
                            let out = serve_pattern(conn);
                            if let Ok(mut v) = r.lock() {
                                v.push(out);
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(PatternServer {
            results,
            stop,
            thread: Some(thread),
        })
    }

    /// The outcomes so far.
    pub fn results(&self) -> Vec<Result<String, String>> {
        self.results.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for PatternServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of [`PatternServer`].
fn serve_pattern(conn: TcpStream) -> Result<String, String> {
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("header: {e}"))?;
    let mut words = line.split_whitespace();
    let (dir, n, seed) = match (words.next(), words.next(), words.next()) {
        (Some(d), Some(n), Some(s)) => (
            d.to_string(),
            n.parse::<u64>()
                .map_err(|_| format!("bad header {line:?}"))?,
            s.parse::<u64>()
                .map_err(|_| format!("bad header {line:?}"))?,
        ),
        _ => return Err(format!("bad header {line:?}")),
    };
    let mut conn = conn;
    let mut buf = vec![0u8; 64 << 10];
    match dir.as_str() {
        "send" => {
            let mut done = 0u64;
            loop {
                let r = reader.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if r == 0 {
                    break;
                }
                if let Some(bad) = pattern_mismatch(&buf[..r], done, seed) {
                    let _ = conn.write_all(format!("bad byte {bad}\n").as_bytes());
                    return Err(format!("guest sent a wrong byte at {bad}"));
                }
                done += r as u64;
            }
            if done != n {
                let _ = conn.write_all(format!("bad length {done}\n").as_bytes());
                return Err(format!("guest sent {done} of {n} bytes"));
            }
            conn.write_all(format!("ok {done}\n").as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            Ok(format!("received {done} bytes"))
        }
        "recv" => {
            let mut done = 0u64;
            while done < n {
                let k = usize::try_from((n - done).min(buf.len() as u64)).unwrap_or(buf.len());
                fill_pattern(&mut buf[..k], done, seed);
                conn.write_all(&buf[..k])
                    .map_err(|e| format!("write: {e}"))?;
                done += k as u64;
            }
            let _ = conn.shutdown(std::net::Shutdown::Write);
            Ok(format!("sent {done} bytes"))
        }
        other => Err(format!("unknown direction {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_the_offset_xor_the_seed() {
        let mut b = [0u8; 16];
        fill_pattern(&mut b, 8, 0x0102_0304_0506_0708);
        assert_eq!(
            u64::from_le_bytes(b[..8].try_into().unwrap()),
            8 ^ 0x0102_0304_0506_0708
        );
        assert_eq!(
            u64::from_le_bytes(b[8..].try_into().unwrap()),
            16 ^ 0x0102_0304_0506_0708
        );
        assert_eq!(pattern_mismatch(&b, 8, 0x0102_0304_0506_0708), None);
        b[3] ^= 1;
        assert_eq!(pattern_mismatch(&b, 8, 0x0102_0304_0506_0708), Some(11));
    }

    #[test]
    fn a_cpio_archive_has_aligned_newc_entries_and_a_trailer() {
        let mut c = Cpio::new();
        c.dir("bin")
            .file("bin/x", 0o755, b"abc")
            .char_dev("dev/console", 5, 1);
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!\0"));
        // The file's header: mode 0100755, size 3.
        let at = text.find("bin/x").unwrap();
        let hdr = &text[at - 110..at];
        assert_eq!(&hdr[14..22], "000081ed");
        assert_eq!(&hdr[54..62], "00000003");
    }

    /// A minimal ELF64 with a `.modinfo` section.
    fn elf_with_modinfo(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.modinfo\0.shstrtab\0";
        let mut f = vec![0u8; 0x40];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let modinfo_off = f.len();
        f.extend_from_slice(modinfo);
        let names_off = f.len();
        f.extend_from_slice(names);
        while !f.len().is_multiple_of(8) {
            f.push(0);
        }
        let shoff = f.len();
        // Null section, .modinfo, .shstrtab.
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, modinfo_off, modinfo.len()),
            (10, names_off, names.len()),
        ] {
            let mut sh = [0u8; 0x40];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            sh[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            f.extend_from_slice(&sh);
        }
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn modinfo_depends_reads_the_modinfo_section() {
        let ko = elf_with_modinfo(b"license=GPL\0depends=virtio,virtio_ring\0name=x\0");
        assert_eq!(
            modinfo_depends(&ko).unwrap(),
            vec!["virtio".to_string(), "virtio_ring".to_string()]
        );
        let none = elf_with_modinfo(b"license=GPL\0depends=\0");
        assert!(modinfo_depends(&none).unwrap().is_empty());
    }

    #[test]
    fn a_malformed_module_is_an_error_not_a_panic() {
        assert!(modinfo_depends(b"").is_err());
        assert!(modinfo_depends(b"\x7fELF\x02\x01").is_err());
        let mut ko = elf_with_modinfo(b"depends=a\0");
        // Section headers pointing past the end.
        ko[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo_depends(&ko).is_err());
        let mut ko = elf_with_modinfo(b"depends=a\0");
        let shoff = u64::from_le_bytes(ko[0x28..0x30].try_into().unwrap()) as usize;
        // .modinfo's size past the end of the file.
        ko[shoff + 0x40 + 0x20..shoff + 0x40 + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo_depends(&ko).is_err());
        for cut in 0..ko.len() {
            let _ = modinfo_depends(&ko[..cut]);
        }
    }
}
