//! The blk rows: patterns through every cache mode, qcow2 checked by
//! `qemu-img`, read-only disks, discard and write zeroes, several queues and
//! disks, hostile chains.

use super::*;

/// The blk guests' default pattern seed (the contract's `blk.seed`).
pub const BLK_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The 8 bytes the blk pattern puts at disk byte offset `o` (a multiple
/// of 8): the little-endian `o ^ seed`.
pub fn blk_word(o: u64, seed: u64) -> [u8; 8] {
    (o ^ seed).to_le_bytes()
}

/// Checks a disk image (raw) holds the pattern of `seed` in
/// `[offset, offset + len)` and zeroes elsewhere up to `size`.
pub fn disk_holds_pattern(
    path: &Path,
    offset: u64,
    len: u64,
    seed: u64,
    size: u64,
) -> Result<(), String> {
    let got = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if got.len() as u64 != size {
        return Err(format!(
            "{} has {} bytes, want {size}",
            path.display(),
            got.len()
        ));
    }
    for (i, chunk) in got.chunks_exact(8).enumerate() {
        let o = i as u64 * 8;
        let want = if o >= offset && o < offset + len {
            blk_word(o, seed)
        } else {
            [0; 8]
        };
        if chunk != want {
            return Err(format!(
                "{}: bytes at {o:#x} are {chunk:02x?}, want {want:02x?}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A sparse raw image of `size` bytes (zeroes).
pub(super) fn sparse_image(path: &Path, size: u64) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(size)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `qemu-img` with `args`; an error with its output if it fails.
pub fn qemu_img(args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("qemu-img: {e} (.ci/setup installs qemu-utils)"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "qemu-img {}: {}: {text}",
            args.join(" "),
            out.status
        ))
    }
}

/// Disk size of the blk scenarios.
pub(super) const DISK: u64 = 16 << 20;

/// A blk pattern scenario on a raw file: `bytes` at offset 0, checked on
/// the host afterwards byte for byte.
pub(super) fn blk_pattern(
    dir: &Workdir,
    drive_opts: &str,
    dev_opts: &str,
    guest_opts: &str,
    bytes: u64,
) -> Result<Setup, String> {
    let img = dir.path("disk.img");
    sparse_image(&img, DISK)?;
    let mut s = Setup::new(
        &format!(
            "-drive if=none,id=d0,file={},format=raw{drive_opts} \
             -device virtio-blk-device,drive=d0{dev_opts}",
            img.display()
        ),
        format!("blk.test=pattern blk.bytes={bytes} {guest_opts}"),
    );
    s.check = Some(Box::new(move |_| {
        disk_holds_pattern(&img, 0, bytes, BLK_SEED, DISK)
    }));
    Ok(s)
}

/// A blk scenario with its own guest options on a fresh raw disk.
pub(super) fn blk_simple(
    dir: &Workdir,
    drive_opts: &str,
    dev_opts: &str,
    guest: &str,
) -> Result<Setup, String> {
    let img = dir.path("disk.img");
    sparse_image(&img, DISK)?;
    Ok(Setup::new(
        &format!(
            "-drive if=none,id=d0,file={},format=raw{drive_opts} \
             -device virtio-blk-device,drive=d0{dev_opts}",
            img.display()
        ),
        guest.to_string(),
    ))
}

pub(super) fn blk_scenarios() -> Vec<Scenario> {
    let blk = option_env!("GUEST_BLK");
    vec![
        Scenario {
            name: "blk_pattern_raw_irq_depth8",
            device: "virtio-blk, ioeventfd+irq, depth 8",
            backend: "raw file, writeback, 1 MiB",
            guest: blk,
            setup: |dir| blk_pattern(dir, "", "", "blk.mode=irq blk.depth=8", 1 << 20),
        },
        Scenario {
            name: "blk_pattern_raw_poll_inline_depth1",
            device: "virtio-blk, inline+poll, depth 1",
            backend: "raw file, writeback, 256 KiB",
            guest: blk,
            setup: |dir| {
                blk_pattern(
                    dir,
                    "",
                    ",ioeventfd=off",
                    "blk.mode=poll blk.depth=1",
                    256 << 10,
                )
            },
        },
        Scenario {
            name: "blk_pattern_raw_cache_none",
            device: "virtio-blk, irq, depth 8",
            backend: "raw file, cache=none (O_DIRECT)",
            guest: blk,
            setup: |dir| blk_pattern(dir, ",cache=none", "", "blk.depth=8", 256 << 10),
        },
        Scenario {
            name: "blk_pattern_raw_writethrough",
            device: "virtio-blk, irq, depth 8",
            backend: "raw file, cache=writethrough",
            guest: blk,
            setup: |dir| blk_pattern(dir, ",cache=writethrough", "", "blk.depth=8", 256 << 10),
        },
        Scenario {
            name: "blk_pattern_qcow2",
            device: "virtio-blk, irq, depth 8",
            backend: "qcow2 (qemu-img create)",
            guest: blk,
            setup: |dir| {
                let img = dir.path("disk.qcow2");
                let reference = dir.path("reference.raw");
                let img_s = img.display().to_string();
                qemu_img(&["create", "-q", "-f", "qcow2", &img_s, &DISK.to_string()])?;
                sparse_image(&reference, DISK)?;
                let bytes: u64 = 1 << 20;
                let mut s = Setup::new(
                    &format!(
                        "-drive if=none,id=d0,file={img_s},format=qcow2 \
                         -device virtio-blk-device,drive=d0"
                    ),
                    format!("blk.test=pattern blk.bytes={bytes} blk.depth=8"),
                );
                s.check = Some(Box::new(move |_| {
                    // The same writes to a raw file, then qemu-img's verdict.
                    let mut raw = vec![0u8; DISK as usize];
                    for o in (0..bytes).step_by(8) {
                        raw[o as usize..o as usize + 8].copy_from_slice(&blk_word(o, BLK_SEED));
                    }
                    std::fs::write(&reference, raw).map_err(|e| e.to_string())?;
                    qemu_img(&["check", "-q", &img_s])?;
                    let r = reference.display().to_string();
                    qemu_img(&["compare", "-f", "qcow2", "-F", "raw", &img_s, &r])?;
                    Ok(())
                }));
                Ok(s)
            },
        },
        Scenario {
            name: "blk_readonly",
            device: "virtio-blk (RO)",
            backend: "raw file, readonly=on",
            guest: blk,
            setup: |dir| blk_simple(dir, ",readonly=on", "", "blk.test=readonly"),
        },
        Scenario {
            name: "blk_out_of_range",
            device: "virtio-blk",
            backend: "raw file",
            guest: blk,
            setup: |dir| blk_simple(dir, "", "", "blk.test=range"),
        },
        Scenario {
            name: "blk_get_id",
            device: "virtio-blk, serial=harness-disk-0",
            backend: "raw file",
            guest: blk,
            setup: |dir| {
                blk_simple(
                    dir,
                    "",
                    ",serial=harness-disk-0",
                    "blk.test=id blk.serial=harness-disk-0",
                )
            },
        },
        Scenario {
            name: "blk_write_zeroes_discard",
            device: "virtio-blk, DISCARD + WRITE_ZEROES",
            backend: "raw file, discard=unmap",
            guest: blk,
            setup: |dir| blk_simple(dir, ",discard=unmap", "", "blk.test=zeroes blk.unmap=1"),
        },
        Scenario {
            name: "blk_mq_4_queues",
            device: "virtio-blk, MQ, 4 queues",
            backend: "raw file",
            guest: blk,
            setup: |dir| {
                let img = dir.path("disk.img");
                sparse_image(&img, DISK)?;
                let bytes: u64 = 1 << 20;
                let mut s = Setup::new(
                    &format!(
                        "-drive if=none,id=d0,file={},format=raw \
                         -device virtio-blk-device,drive=d0,num-queues=4",
                        img.display()
                    ),
                    format!("blk.test=mq blk.queues=4 blk.bytes={bytes}"),
                );
                s.check = Some(Box::new(move |_| {
                    disk_holds_pattern(&img, 0, bytes, BLK_SEED, DISK)
                }));
                Ok(s)
            },
        },
        Scenario {
            name: "blk_two_disks",
            device: "2 x virtio-blk",
            backend: "2 raw files",
            guest: blk,
            setup: |dir| {
                let a = dir.path("a.img");
                let b = dir.path("b.img");
                sparse_image(&a, DISK)?;
                sparse_image(&b, DISK)?;
                let bytes: u64 = 256 << 10;
                let mut s = Setup::new(
                    &format!(
                        "-drive if=none,id=d0,file={},format=raw \
                         -drive if=none,id=d1,file={},format=raw \
                         -device virtio-blk-device,drive=d0 -device virtio-blk-device,drive=d1",
                        a.display(),
                        b.display()
                    ),
                    format!("blk.test=pattern blk.disks=2 blk.bytes={bytes}"),
                );
                s.check = Some(Box::new(move |_| {
                    disk_holds_pattern(&a, 0, bytes, BLK_SEED, DISK)?;
                    disk_holds_pattern(&b, 0, bytes, BLK_SEED.wrapping_add(1), DISK)
                }));
                Ok(s)
            },
        },
    ]
}
