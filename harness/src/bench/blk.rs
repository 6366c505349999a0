//! The blk rows: the `blk` guest's jobs on a file in the page cache, ours
//! against QEMU's `virtio-blk-device`.

use super::*;

/// Bytes of the benchmark disk.
pub(super) const BENCH_DISK: u64 = 64 << 20;

/// One blk benchmark job: pattern, request size, depth, request count.
pub(super) const BLK_JOBS: &[(&str, u64, u32, u32)] = &[
    ("randread", 4096, 1, 512),
    ("randread", 4096, 32, 1024),
    ("randwrite", 4096, 1, 512),
    ("randwrite", 4096, 32, 1024),
    // The guest's largest request is 64 KiB: 16 of them per MiB.
    ("seqread", 64 << 10, 16, 256),
    ("seqwrite", 64 << 10, 16, 256),
];

/// A [`BENCH_DISK`]-byte raw image in `dir`, written (not sparse) and read
/// once so that it sits in the page cache; its path.
pub(super) fn page_cached_image(dir: &crate::scenarios::Workdir) -> Result<String, String> {
    let img = dir.path("bench.img");
    std::fs::write(&img, vec![0x5au8; BENCH_DISK as usize]).map_err(|e| {
        format!(
            "writing the {} MiB bench image {}: {e} (TMPDIR sets where)",
            BENCH_DISK >> 20,
            img.display()
        )
    })?;
    let _ = std::fs::read(&img);
    Ok(img.display().to_string())
}

/// The blk guest's command line for one bench job on [`BENCH_DISK`]
/// bytes, interrupts on.
pub(super) fn blk_job_append(pattern: &str, size: u64, depth: u32, count: u32) -> String {
    format!(
        "blk.test=bench blk.pattern={pattern} blk.size={size} blk.depth={depth} \
         blk.count={count} blk.bytes={BENCH_DISK} blk.mode=irq"
    )
}

/// What the blk guest measured for one job.
pub(super) struct BlkResult {
    us: u64,
    exits: Option<u64>,
    kvm_exits: Option<u64>,
}

/// The guest's `blk: bench: … in <us> us` figure.
pub(super) fn bench_us(serial: &str) -> Option<u64> {
    let line = serial
        .lines()
        .rev()
        .find(|l| l.starts_with("blk: bench: ") && l.trim_end().ends_with(" us"))?;
    crate::scenarios::number_before(line, "us")
}

/// The blk guest plot: 4 KiB IOPS against the depth, ours and QEMU's.
const BLK_GUEST_PLOT: Plot = Plot {
    id: "guest-blk-iops-depth",
    title: "blk guest, 4 KiB requests, raw file in page cache",
    x_label: "requests in flight",
    y_label: "IOPS",
    log_x: true,
};

/// 4 KiB random and 1 MiB sequential I/O from the blk guest on a raw file
/// in the page cache, ours against QEMU's virtio-blk-device (modern
/// transport, `cache=writeback`) on the same file, same ELF.
pub(super) fn blk_rows(t: &mut String) -> Result<(), String> {
    let Some(blk) = option_env!("GUEST_BLK") else {
        return Ok(());
    };
    let dir = crate::scenarios::Workdir::new("bench-blk").map_err(|e| e.to_string())?;
    let img = page_cached_image(&dir)?;
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| blk guest, raw file in page cache | ours IOPS (MB/s) | QEMU IOPS (MB/s) | ours / QEMU | ours: exits to us / request | KVM exits / request |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for &(pattern, size, depth, count) in BLK_JOBS {
        crate::progress::step(format!(
            "bench: blk guest {pattern} {size} B, depth {depth}"
        ))?;
        let append = blk_job_append(pattern, size, depth, count);
        // Ours twice: the job, and the same with only `depth` requests, so
        // the boot's exits (COM1, set-up) drop out of the per-request count.
        let run_ours = |count: u32| -> Result<BlkResult, String> {
            let append = blk_job_append(pattern, size, depth, count);
            let args: Vec<String> = format!(
                "-drive if=none,id=d0,file={img},format=raw,cache=writeback \
                 -device virtio-blk-device,drive=d0 -kernel {blk}"
            )
            .split_whitespace()
            .map(String::from)
            .chain(["-append".into(), append])
            .collect();
            let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
            let mut m = monitor::machine::Machine::new(&config).map_err(|e| e.to_string())?;
            let out = m.run(Duration::from_secs(120)).map_err(|e| e.to_string())?;
            if !out.verdict.is_pass() {
                return Err(format!("blk bench ({pattern}): {}", out.verdict));
            }
            Ok(BlkResult {
                us: bench_us(&out.serial).ok_or_else(|| {
                    format!(
                        "the blk guest printed no bench line ({pattern}, {size} B, depth {depth}, {count} requests):\n{}",
                        out.serial
                    )
                })?,
                exits: Some(out.exits.total()),
                kvm_exits: out.kvm.as_ref().map(|k| k.exits()),
            })
        };
        let full = run_ours(count)?;
        let base = run_ours(depth)?;
        let minus = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        let ours = BlkResult {
            us: full.us,
            exits: minus(full.exits, base.exits),
            kvm_exits: minus(full.kvm_exits, base.kvm_exits),
        };
        let qemu = if qemu::unavailable().is_none() {
            let r = Qemu::microvm(blk)
                .modern()
                .timeout(Duration::from_secs(120))
                .args([
                    "-drive".to_string(),
                    format!("if=none,id=d0,file={img},format=raw,cache=writeback"),
                    "-device".into(),
                    "virtio-blk-device,drive=d0".into(),
                ])
                .append(append)
                .run()
                .map_err(|e| e.to_string())?;
            if !r.passed() {
                return Err(format!(
                    "blk bench under QEMU ({pattern}): {}",
                    r.describe()
                ));
            }
            bench_us(&r.serial).map(|us| BlkResult {
                us,
                exits: None,
                kvm_exits: None,
            })
        } else {
            None
        };
        if size == 4096 {
            let iops = |r: &BlkResult| f64::from(count) / (r.us.max(1) as f64 / 1e6);
            BLK_GUEST_PLOT.point_in(pattern, "ours", Role::Ours, f64::from(depth), iops(&ours));
            if let Some(q) = &qemu {
                BLK_GUEST_PLOT.point_in(
                    pattern,
                    "QEMU microvm",
                    Role::Peer,
                    f64::from(depth),
                    iops(q),
                );
            }
        }
        let rate = |r: &BlkResult| {
            let secs = r.us.max(1) as f64 / 1e6;
            let iops = f64::from(count) / secs;
            format!("{iops:.0} ({:.1})", iops * size as f64 / 1e6)
        };
        let per = |n: Option<u64>| {
            n.map_or("n/a".into(), |n| {
                format!("{:.3}", n as f64 / f64::from(count))
            })
        };
        let _ = writeln!(
            t,
            "| {pattern} {} KiB, depth {depth} | {} | {} | {} | {} | {} |",
            size / 1024,
            rate(&ours),
            qemu.as_ref().map_or("n/a".into(), rate),
            qemu.as_ref().map_or("-".into(), |q| format!(
                "{:.2}x",
                q.us as f64 / ours.us.max(1) as f64
            )),
            per(ours.exits),
            per(ours.kvm_exits),
        );
    }
    Ok(())
}

/// One boot of the blk guest's bench job under our monitor, built from
/// `options` (whitespace-separated) and `append`: the guest's bench time
/// in µs and the run's boot to exit.
pub(super) fn harness_blk_bench(options: &str, append: &str) -> Result<(u64, Duration), String> {
    let args: Vec<String> = options
        .split_whitespace()
        .map(String::from)
        .chain(["-append".into(), append.into()])
        .collect();
    let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
    let mut m = monitor::machine::Machine::new(&config).map_err(|e| e.to_string())?;
    let out = m.run(Duration::from_secs(120)).map_err(|e| e.to_string())?;
    if !out.verdict.is_pass() {
        return Err(format!("blk bench under our monitor: {}", out.verdict));
    }
    let us = bench_us(&out.serial)
        .ok_or_else(|| format!("the blk guest printed no bench line:\n{}", out.serial))?;
    Ok((us, out.boot_to_exit))
}
