//! Measurements, not tests (`virtio-harness bench`): our monitor against
//! QEMU `microvm` booting the same ELF in the same run, reported as medians
//! and ratios.
//!
//! - Boot-to-exit of the empty guest, process start to process exit, for
//!   both monitors (ours is this very binary's `run` subcommand), plus our
//!   in-process split: VM set-up and first `KVM_RUN` to the exit port.
//! - Entropy seen by the guest: the `rng` guest reads 1 MiB in its varied
//!   request sizes, polling or interrupt-driven; the time is the run's
//!   boot-to-exit minus the empty guest's (what the reads cost), the exits
//!   are ours (`KVM_RUN` returns) and KVM's (including ioeventfd writes it
//!   served without us), per request the guest made.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::qemu::{self, Qemu};

/// The median of `v` (which must not be empty).
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Runs every measurement `rounds` times and returns the table (markdown).
pub fn run(rounds: usize) -> Result<String, String> {
    let empty = option_env!("GUEST_EMPTY").ok_or("the empty guest was not built")?;
    if let Some(why) = crate::vm::kvm_unavailable() {
        return Err(format!("KVM is unavailable: {why}"));
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| measurement (median of {rounds}) | ours | QEMU microvm | QEMU / ours |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: |");

    // Process to process: our `run` subcommand against qemu-system-x86_64.
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut ours = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let st = Command::new(&exe)
            .args(["run", "-m", "64M", "-kernel", empty])
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        ours.push(start.elapsed());
        if !st.status.success() {
            return Err(format!(
                "our monitor did not pass the empty guest: {}",
                String::from_utf8_lossy(&st.stderr)
            ));
        }
    }
    let ours = median(ours);
    let qemu_cell = match qemu::unavailable() {
        Some(why) => (format!("n/a ({why})"), "-".to_string()),
        None => {
            let mut runs = Vec::new();
            for _ in 0..rounds {
                let r = Qemu::microvm(empty)
                    .run()
                    .map_err(|e| format!("qemu: {e}"))?;
                if !r.passed() {
                    return Err(format!(
                        "QEMU did not pass the empty guest: {}",
                        r.describe()
                    ));
                }
                runs.push(r.elapsed);
            }
            let q = median(runs);
            (
                ms(q),
                format!("{:.1}x", q.as_secs_f64() / ours.as_secs_f64()),
            )
        }
    };
    let _ = writeln!(
        t,
        "| empty guest, process start to exit (ms) | {} | {} | {} |",
        ms(ours),
        qemu_cell.0,
        qemu_cell.1
    );

    // In process: where our time goes.
    let elf = std::fs::read(empty).map_err(|e| format!("{empty}: {e}"))?;
    let mut setup = Vec::new();
    let mut guest = Vec::new();
    let mut exits = 0;
    for _ in 0..rounds {
        let memory = backends::hostmem::HostMemory::ram(64 << 20, false, false)
            .map_err(|e| e.to_string())?;
        let out = crate::vm::boot(memory, &elf, "", 0, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        setup.push(out.setup);
        guest.push(out.boot_to_exit);
        exits = out.exits.total();
    }
    let _ = writeln!(
        t,
        "| ours in process: VM set-up + load / first KVM_RUN to exit (ms), exits | {} / {}, {exits} exits | | |",
        ms(median(setup)),
        ms(median(guest.clone()))
    );
    let empty_guest = median(guest);
    rng_rows(&mut t, rounds, empty_guest)?;
    blk_rows(&mut t)?;
    Ok(t)
}

/// Bytes of the benchmark disk.
const BENCH_DISK: u64 = 64 << 20;

/// One blk benchmark job: pattern, request size, depth, request count.
const BLK_JOBS: &[(&str, u64, u32, u32)] = &[
    ("randread", 4096, 1, 512),
    ("randread", 4096, 32, 1024),
    ("randwrite", 4096, 1, 512),
    ("randwrite", 4096, 32, 1024),
    // The guest's largest request is 64 KiB: 16 of them per MiB.
    ("seqread", 64 << 10, 16, 256),
    ("seqwrite", 64 << 10, 16, 256),
];

/// What the blk guest measured for one job.
struct BlkResult {
    us: u64,
    exits: Option<u64>,
    kvm_exits: Option<u64>,
}

/// The guest's `blk: bench: … in <us> us` figure.
fn bench_us(serial: &str) -> Option<u64> {
    let line = serial
        .lines()
        .rev()
        .find(|l| l.starts_with("blk: bench: ") && l.trim_end().ends_with(" us"))?;
    crate::scenarios::number_before(line, "us")
}

/// 4 KiB random and 1 MiB sequential I/O from the blk guest on a raw file
/// in the page cache, ours against QEMU's virtio-blk-device (modern
/// transport, `cache=writeback`) on the same file, same ELF.
fn blk_rows(t: &mut String) -> Result<(), String> {
    let Some(blk) = option_env!("GUEST_BLK") else {
        return Ok(());
    };
    let dir = crate::scenarios::Workdir::new("bench-blk").map_err(|e| e.to_string())?;
    let img = dir.path("bench.img");
    // A written (not sparse) file, read once: it sits in the page cache.
    std::fs::write(&img, vec![0x5au8; BENCH_DISK as usize]).map_err(|e| e.to_string())?;
    let _ = std::fs::read(&img);
    let img = img.display().to_string();
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| blk guest, raw file in page cache | ours IOPS (MB/s) | QEMU IOPS (MB/s) | ours / QEMU | ours: exits to us / request | KVM exits / request |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for &(pattern, size, depth, count) in BLK_JOBS {
        let append = format!(
            "blk.test=bench blk.pattern={pattern} blk.size={size} blk.depth={depth} \
             blk.count={count} blk.bytes={BENCH_DISK} blk.mode=irq"
        );
        // Ours twice: the job, and the same with only `depth` requests, so
        // the boot's exits (COM1, set-up) drop out of the per-request count.
        let run_ours = |count: u32| -> Result<BlkResult, String> {
            let append = format!(
                "blk.test=bench blk.pattern={pattern} blk.size={size} blk.depth={depth} \
                 blk.count={count} blk.bytes={BENCH_DISK} blk.mode=irq"
            );
            let args: Vec<String> = format!(
                "-drive if=none,id=d0,file={img},format=raw,cache=writeback \
                 -device virtio-blk-device,drive=d0 -kernel {blk}"
            )
            .split_whitespace()
            .map(String::from)
            .chain(["-append".into(), append])
            .collect();
            let config = crate::options::parse(&args).map_err(|e| e.to_string())?;
            let mut m = crate::machine::Machine::new(&config).map_err(|e| e.to_string())?;
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

/// Bytes the rng guest reads per run.
const RNG_BYTES: u64 = 1 << 20;

/// The rng rows: ours in each notify/completion mode, and QEMU's
/// virtio-rng-device (rng-builtin) with the same guest.
fn rng_rows(t: &mut String, rounds: usize, empty_guest: Duration) -> Result<(), String> {
    // Each run takes about a second of emulated guest instructions here.
    let rounds = rounds.min(3);
    let Some(rng) = option_env!("GUEST_RNG") else {
        return Ok(());
    };
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| rng guest, 1 MiB (median of {rounds}) | MiB/s | requests | exits to us / request | KVM exits / request |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: |");
    for (label, ioeventfd, mode) in [
        ("ours, ioeventfd + interrupts", "on", "irq"),
        ("ours, ioeventfd + polling", "on", "poll"),
        ("ours, inline notify + interrupts", "off", "irq"),
        ("ours, inline notify + polling", "off", "poll"),
    ] {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..rounds {
            let args: Vec<String> = format!(
                "-object rng-deterministic,id=r0,seed=3 \
                 -device virtio-rng-device,rng=r0,ioeventfd={ioeventfd} -kernel {rng}"
            )
            .split_whitespace()
            .map(String::from)
            .chain([
                "-append".into(),
                // No rng.seed: the guest's stream check would dominate.
                format!("rng.bytes={RNG_BYTES} rng.mode={mode}"),
            ])
            .collect();
            let config = crate::options::parse(&args).map_err(|e| e.to_string())?;
            let mut m = crate::machine::Machine::new(&config).map_err(|e| e.to_string())?;
            let out = m.run(Duration::from_secs(30)).map_err(|e| e.to_string())?;
            if !out.verdict.is_pass() {
                return Err(format!("rng guest ({label}): {}", out.verdict));
            }
            times.push(out.boot_to_exit.saturating_sub(empty_guest));
            last = Some(out);
        }
        let Some(out) = last else { continue };
        let requests = crate::scenarios::guest_line(&out, "rng: ")
            .and_then(|l| crate::scenarios::number_before(l, "requests"))
            .unwrap_or(0)
            .max(1);
        let ours = out.exits.total() as f64 / requests as f64;
        let kvm = out.kvm.as_ref().map_or("n/a".to_string(), |k| {
            format!("{:.2}", k.exits() as f64 / requests as f64)
        });
        let _ = writeln!(
            t,
            "| {label} | {} | {requests} | {ours:.2} | {kvm} |",
            mib_per_s(median(times))
        );
    }
    if qemu::unavailable().is_none() {
        let empty = option_env!("GUEST_EMPTY").unwrap_or_default();
        let mut base = Vec::new();
        for _ in 0..rounds {
            base.push(
                Qemu::microvm(empty)
                    .run()
                    .map_err(|e| e.to_string())?
                    .elapsed,
            );
        }
        let base = median(base);
        for (label, mode) in [
            ("QEMU microvm, rng-builtin, interrupts", "irq"),
            ("QEMU microvm, rng-builtin, polling", "poll"),
        ] {
            let mut times = Vec::new();
            let mut requests = 0;
            for _ in 0..rounds {
                let r = Qemu::microvm(rng)
                    .modern()
                    .args([
                        "-object",
                        "rng-builtin,id=r0",
                        "-device",
                        "virtio-rng-device,rng=r0",
                    ])
                    .append(format!("rng.bytes={RNG_BYTES} rng.mode={mode}"))
                    .run()
                    .map_err(|e| e.to_string())?;
                if !r.passed() {
                    return Err(format!("rng guest under QEMU ({label}): {}", r.describe()));
                }
                requests = r
                    .serial
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("rng: "))
                    .and_then(|l| crate::scenarios::number_before(l, "requests"))
                    .unwrap_or(0);
                times.push(r.elapsed.saturating_sub(base));
            }
            let _ = writeln!(
                t,
                "| {label} | {} | {requests} | n/a | n/a |",
                mib_per_s(median(times))
            );
        }
    }
    Ok(())
}

/// `RNG_BYTES` over `d`, as text.
fn mib_per_s(d: Duration) -> String {
    if d.is_zero() {
        return "n/a".into();
    }
    format!(
        "{:.1}",
        RNG_BYTES as f64 / (1 << 20) as f64 / d.as_secs_f64()
    )
}
