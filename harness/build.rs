//! Build script of the harness: builds the tiny guests (`guests/`, its own
//! workspace, for `x86_64-unknown-none`) with a nested `cargo build`, checks
//! that each is a fixed-address ELF with a PVH note, and exports their paths.
//!
//! Exports, for the harness's code and tests: `GUEST_<NAME>` (upper case,
//! `-` as `_`) = the ELF of `guests/src/bin/<name>.rs`, and `GUEST_DIR` = the
//! directory holding them all. Guests are always built `--release`.
//! `HARNESS_SKIP_GUESTS=1` skips them.

use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Set (not empty, not `0`) to skip building the guests.
const SKIP_GUESTS: &str = "HARNESS_SKIP_GUESTS";

/// The target the guests run on.
const GUEST_TARGET: &str = "x86_64-unknown-none";

/// Environment that cargo or the user set for *this* build and that must not
/// leak into the guests' build: host rustflags (coverage, sanitizers), the
/// clippy driver, a forced target or target dir, this script's `OUT_DIR`.
const SCRUBBED_ENV: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "OUT_DIR",
];

fn main() {
    let manifest_dir = PathBuf::from(env_or_die("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env_or_die("OUT_DIR"));
    let guests = manifest_dir.join("guests");
    for input in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
        "src",
    ] {
        println!("cargo:rerun-if-changed={}", guests.join(input).display());
    }
    // The guests' path dependencies in this workspace.
    for dep in ["../guest-driver", "../virtio-core", "conform"] {
        let dir = manifest_dir.join(dep);
        for input in ["Cargo.toml", "src"] {
            println!("cargo:rerun-if-changed={}", dir.join(input).display());
        }
    }
    // The RSA vectors the crypto guest includes.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("conform/vectors").display()
    );

    // Fuzz builds (`fuzz/`, OSS-Fuzz/ClusterFuzzLite images) use only the
    // harness's library code, never a guest: they may skip the nested build
    // (and the x86_64-unknown-none target it needs). `GUEST_DIR` then names
    // a directory that does not exist and no `GUEST_<NAME>` is set, which the
    // library reads through `option_env!`.
    println!("cargo:rerun-if-env-changed={SKIP_GUESTS}");
    if env::var_os(SKIP_GUESTS).is_some_and(|v| !v.is_empty() && v != "0") {
        let missing = out_dir.join("guests-not-built");
        println!("cargo:rustc-env=GUEST_DIR={}", missing.display());
        println!("cargo:warning=tiny guests not built ({SKIP_GUESTS} is set)");
        write_embedded(&out_dir, &[]);
        return;
    }

    let target_dir = out_dir.join("guests");
    build_guests(&guests, &target_dir);

    let elf_dir = target_dir.join(GUEST_TARGET).join("release");
    println!("cargo:rustc-env=GUEST_DIR={}", elf_dir.display());
    let mut embedded = Vec::new();
    for name in guest_names(&guests.join("src").join("bin")) {
        let elf = elf_dir.join(&name);
        if let Err(e) = check_elf(&elf) {
            panic!("tiny guest {}: {e}", elf.display());
        }
        let var = name.to_ascii_uppercase().replace('-', "_");
        println!("cargo:rustc-env=GUEST_{var}={}", elf.display());
        embedded.push((name, elf));
    }
    write_embedded(&out_dir, &embedded);
}

/// Writes `embedded_guests.rs`: every guest's ELF as bytes in the
/// harness (`virtio-harness guests`, `run -kernel NAME`), so the binary
/// carries them wherever it is copied.
fn write_embedded(out_dir: &Path, guests: &[(String, PathBuf)]) {
    let mut text = String::from(
        "/// Every tiny guest's ELF, by name (empty when the guests were not built).\n\
         pub static EMBEDDED: &[(&str, &[u8])] = &[\n",
    );
    for (name, elf) in guests {
        text.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            elf.display().to_string()
        ));
    }
    text.push_str("];\n");
    let path = out_dir.join("embedded_guests.rs");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn env_or_die(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| panic!("cargo did not set {name} for the build script"))
}

/// Runs `cargo build --release` in `guests/`, where its `.cargo/config.toml`
/// applies, with a target dir of its own (the outer build holds a lock on
/// ours). Cargo's jobserver (`CARGO_MAKEFLAGS`) is inherited, so the nested
/// build shares the outer build's job limit.
fn build_guests(guests: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(guests)
        .args(["build", "--release", "--bins", "--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        // Nested cargo output goes to stderr: cargo shows it if we fail, and
        // nothing it prints can be taken for a `cargo:` directive.
        .stdout(Stdio::from(io::stderr()));
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    if !status.success() {
        panic!(
            "building the tiny guests failed ({status}); see the output above. \
             Is the target installed (`rustup target add {GUEST_TARGET}`, done by .ci/setup)? \
             To reproduce: cd harness/guests && cargo build --release"
        );
    }
}

/// The guest programs: one per `src/bin/<name>.rs`, sorted.
fn guest_names(bin_dir: &Path) -> Vec<String> {
    let entries =
        fs::read_dir(bin_dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", bin_dir.display()));
    let mut names: Vec<String> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "rs" {
                return None;
            }
            Some(path.file_stem()?.to_str()?.to_owned())
        })
        .collect();
    names.sort();
    names
}

/// Checks what a PVH loader relies on: a 64-bit x86 `ET_EXEC` (no
/// relocations to apply), loaded at or above 1 MiB, with a PT_NOTE holding
/// the Xen note type 18 (PHYS32_ENTRY) and its 8-byte entry address.
fn check_elf(path: &Path) -> Result<(), String> {
    let data = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let u16_at = |off: usize| -> Result<u16, String> {
        data.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at {off:#x}"))
    };
    let u32_at = |off: usize| -> Result<u32, String> {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| format!("truncated at {off:#x}"))
    };
    let u64_at = |off: usize| -> Result<u64, String> {
        Ok(u64::from(u32_at(off)?) | (u64::from(u32_at(off + 4)?) << 32))
    };
    if data.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return Err("not a 64-bit ELF".into());
    }
    if u16_at(16)? != 2 {
        return Err(
            "not ET_EXEC: was it linked as a PIE (relocation-model=static missing)?".into(),
        );
    }
    if u16_at(18)? != 62 {
        return Err("not x86-64".into());
    }
    let phoff = usize::try_from(u64_at(32)?).map_err(|e| e.to_string())?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let mut pvh_entry = None;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        let p_type = u32_at(ph)?;
        let offset = usize::try_from(u64_at(ph + 8)?).map_err(|e| e.to_string())?;
        let paddr = u64_at(ph + 24)?;
        let filesz = usize::try_from(u64_at(ph + 32)?).map_err(|e| e.to_string())?;
        match p_type {
            1 if paddr < 0x10_0000 => {
                return Err(format!("PT_LOAD at {paddr:#x}, below 1 MiB"));
            }
            4 => {
                // Notes: namesz, descsz, type, name (padded to 4), desc (padded to 4).
                let mut note = offset;
                while note + 12 <= offset + filesz {
                    let namesz = u32_at(note)? as usize;
                    let descsz = u32_at(note + 4)? as usize;
                    let kind = u32_at(note + 8)?;
                    let name = note + 12;
                    let desc = name + namesz.next_multiple_of(4);
                    if data.get(name..name + namesz) == Some(b"Xen\0".as_slice())
                        && kind == 18
                        && descsz == 8
                    {
                        pvh_entry = Some(u64_at(desc)?);
                    }
                    note = desc + descsz.next_multiple_of(4);
                }
            }
            _ => {}
        }
    }
    match pvh_entry {
        Some(entry) if (0x10_0000..1 << 32).contains(&entry) => Ok(()),
        Some(entry) => Err(format!(
            "PVH entry {entry:#x} is not between 1 MiB and 4 GiB"
        )),
        None => Err("no PVH note (Xen, type 18, 8 bytes) in a PT_NOTE".into()),
    }
}
