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

mod initramfs;
mod pattern;
#[cfg(test)]
mod tests;
mod vm;

pub use initramfs::*;
pub use pattern::*;
pub use vm::*;

/// Set to a directory, the kit is taken from there instead of
/// [`default_dir`].
pub const DIR_ENV: &str = "HARNESS_LINUX_DIR";

/// The init script (PID 1 of every initramfs built here).
pub const INIT_SH: &str = include_str!("../../linux/init.sh");

/// The helper's C source.
pub const VTIO_C: &str = include_str!("../../linux/vtio.c");

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
        Self::open_kernel(dir, "kernel")
    }

    /// The kit in `dir` with the kernel unpacked at `dir/kernel_link`
    /// (`kernel`: the cloud kernel; `kernel-generic`: the generic one).
    pub fn open_kernel(dir: &Path, kernel_link: &str) -> Result<Kit, String> {
        let kdir = dir.join(kernel_link);
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

    /// The kit in [`default_dir`] with Debian's generic kernel
    /// (`linux-image-amd64`), which has `virtio_crypto` and the crypto
    /// self-tests (the cloud kernel has no crypto drivers).
    pub fn find_generic() -> Result<Kit, String> {
        Self::open_kernel(&default_dir(), "kernel-generic")
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
    kit_or_skip(test, Kit::find)
}

/// As [`linux_or_skip`], with Debian's generic kernel
/// ([`Kit::find_generic`]).
pub fn generic_linux_or_skip(test: &str) -> Option<Kit> {
    kit_or_skip(test, Kit::find_generic)
}

fn kit_or_skip(test: &str, find: fn() -> Result<Kit, String>) -> Option<Kit> {
    let why = unavailable().or_else(|| find().err().map(|e| format!("no Linux kit: {e}")));
    match why {
        None => find().ok(),
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
