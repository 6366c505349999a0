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
//! - virtio-net: the `net` guest's raw-frame bench (`net.test=bench`) on
//!   our loopback, a hub with a host port draining or offering frames, and
//!   `-netdev stream` to a host peer, the last also under QEMU's
//!   `virtio-net-device` (modern transport); frames per second from the
//!   wall clock of a full run minus a 100-frame run, exits and the guest's
//!   kicks and interrupts per frame the same way. Then a 16 MiB TCP echo
//!   through the `serve` guest over a tap in a network namespace (MTU
//!   65520), ours and QEMU's `-netdev tap`.
//! - vhost-user blk with QEMU as the frontend: the `blk` guest's 4 KiB
//!   random reads at depth 1 and 32 through `vhost-user-blk`, served by
//!   our `virtio-harness vhost-user` and by `qemu-storage-daemon` on the
//!   same file (both through the host page cache), alternating, median of
//!   several runs ([`run_vhost`], `bench --vhost-only`).

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
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
    if let Some(why) = monitor::vm::kvm_unavailable() {
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
        let out = monitor::vm::boot(memory, &elf, "", 0, Duration::from_secs(10))
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
    vhost_rows(&mut t, rounds.min(VHOST_MAX_ROUNDS))?;
    net_rows(&mut t)?;
    Ok(t)
}

/// Only the vhost-user rows (`virtio-harness bench --vhost-only`), each
/// the median of `rounds` runs of each backend. Our
/// backend is this very binary's `vhost-user` subcommand, so this runs
/// from `virtio-harness` only.
pub fn run_vhost(rounds: usize) -> Result<String, String> {
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return Err(format!("KVM is unavailable: {why}"));
    }
    let mut t = String::new();
    vhost_rows(&mut t, rounds)?;
    Ok(t)
}

/// Only the net rows (`virtio-harness bench --net-only`).
pub fn run_net() -> Result<String, String> {
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return Err(format!("KVM is unavailable: {why}"));
    }
    let mut t = String::new();
    net_rows(&mut t)?;
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

/// A [`BENCH_DISK`]-byte raw image in `dir`, written (not sparse) and read
/// once so that it sits in the page cache; its path.
fn page_cached_image(dir: &crate::scenarios::Workdir) -> Result<String, String> {
    let img = dir.path("bench.img");
    std::fs::write(&img, vec![0x5au8; BENCH_DISK as usize]).map_err(|e| e.to_string())?;
    let _ = std::fs::read(&img);
    Ok(img.display().to_string())
}

/// The blk guest's command line for one bench job on [`BENCH_DISK`]
/// bytes, interrupts on.
fn blk_job_append(pattern: &str, size: u64, depth: u32, count: u32) -> String {
    format!(
        "blk.test=bench blk.pattern={pattern} blk.size={size} blk.depth={depth} \
         blk.count={count} blk.bytes={BENCH_DISK} blk.mode=irq"
    )
}

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
    let img = page_cached_image(&dir)?;
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| blk guest, raw file in page cache | ours IOPS (MB/s) | QEMU IOPS (MB/s) | ours / QEMU | ours: exits to us / request | KVM exits / request |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for &(pattern, size, depth, count) in BLK_JOBS {
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

/// Most runs per vhost-user row in the full [`run`] (each is a QEMU boot
/// of a few seconds); [`run_vhost`] takes any number.
pub const VHOST_MAX_ROUNDS: usize = 5;

/// The `qemu-storage-daemon` binary.
const QSD: &str = "qemu-storage-daemon";

/// Why `qemu-storage-daemon` cannot run here, if it cannot.
fn qsd_unavailable() -> Option<String> {
    match Command::new(QSD).arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`{QSD} --version` failed: {}", out.status)),
        Err(e) => Some(format!(
            "{QSD} not found ({e}); Debian's qemu-system-common has it"
        )),
    }
}

/// Helpers for a vhost-user backend process the bench started.
trait BenchDaemon {
    /// One boot of the blk guest under QEMU `microvm` with
    /// `vhost-user-blk` on this daemon (guest RAM on a shared memfd, the
    /// modern transport): the guest's bench time in µs, and QEMU's process
    /// start to exit.
    fn blk_bench(&mut self, blk: &str, append: &str) -> Result<(u64, Duration), String>;
}

impl BenchDaemon for Daemon {
    fn blk_bench(&mut self, blk: &str, append: &str) -> Result<(u64, Duration), String> {
        let r = Qemu::microvm(blk)
            .memory("64M")
            .modern()
            .timeout(Duration::from_secs(120))
            .args([
                "-machine".to_string(),
                "memory-backend=mem".into(),
                "-object".into(),
                "memory-backend-memfd,id=mem,size=64M,share=on".into(),
                "-chardev".into(),
                format!("socket,id=vu,path={}", self.socket().display()),
                "-device".into(),
                "vhost-user-blk,chardev=vu".into(),
            ])
            .append(append)
            .run()
            .map_err(|e| format!("qemu: {e}"))?;
        self.check_alive()?;
        if !r.passed() {
            return Err(format!(
                "blk bench over vhost-user ({}): {}\n--- {} ---\n{}",
                self.name(),
                r.describe(),
                self.name(),
                self.output()
            ));
        }
        let us = bench_us(&r.serial).ok_or_else(|| {
            format!(
                "the blk guest printed no bench line ({}):\n{}",
                self.name(),
                r.describe()
            )
        })?;
        Ok((us, r.elapsed))
    }
}

/// The median of `v` (not empty), and its range.
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// vhost-user blk with QEMU 7.2 `microvm` as the frontend (modern
/// virtio-mmio, §4.2.2; `vhost-user-blk`, guest RAM on a shared memfd):
/// the blk guest's 4 KiB random-read jobs of [`BLK_JOBS`] (depth 1 and
/// 32) against our `virtio-harness vhost-user` backend and against
/// `qemu-storage-daemon`'s `vhost-user-blk` export, on the same raw file
/// in the page cache, both through it (ours `cache=writeback`, the
/// daemon's `driver=file` node with `cache.direct=off`, `aio=threads`).
/// Both daemons start once and serve every boot (one frontend after the
/// other); the runs alternate ours / theirs, `rounds` each, and a row
/// gives the medians and ranges of the guest's own IOPS figures (its TSC
/// clock; on a busy host single runs vary up to 3x either way, and a few
/// read implausibly short) and, as a cross-check on the host's clock, the
/// median QEMU process start to exit (boot, vhost-user set-up, the job). `HARNESS_BENCH_VHOST_COUNT=<n>` replaces the jobs'
/// request counts (a quick run). Without QEMU the rows are skipped, and
/// without `qemu-storage-daemon` its column is, each saying why.
fn vhost_rows(t: &mut String, rounds: usize) -> Result<(), String> {
    let Some(blk) = option_env!("GUEST_BLK") else {
        return Ok(());
    };
    let rounds = rounds.max(1);
    let _ = writeln!(t);
    if let Some(why) = qemu::unavailable() {
        let _ = writeln!(t, "vhost-user blk rows: skipped ({why})");
        return Ok(());
    }
    let count_override =
        match std::env::var("HARNESS_BENCH_VHOST_COUNT") {
            Ok(v) => Some(v.parse::<u32>().ok().filter(|&n| n > 0).ok_or_else(|| {
                format!("HARNESS_BENCH_VHOST_COUNT={v:?} is not a request count")
            })?),
            Err(_) => None,
        };
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let dir = crate::scenarios::Workdir::new("bench-vhost").map_err(|e| e.to_string())?;
    let img = page_cached_image(&dir)?;

    let mut ours_cmd = Command::new(&exe);
    ours_cmd
        .arg("vhost-user")
        .arg("--socket")
        .arg(dir.path("ours.sock"))
        .args([
            "-drive".to_string(),
            format!("if=none,id=d0,file={img},format=raw,cache=writeback"),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
        ]);
    let mut ours = Daemon::start(
        "virtio-harness vhost-user",
        ours_cmd,
        dir.path("ours.sock"),
        dir.path("ours.log"),
    )?;
    let mut theirs = match qsd_unavailable() {
        Some(why) => Err(why),
        None => {
            let mut cmd = Command::new(QSD);
            cmd.args([
                "--blockdev".to_string(),
                format!("driver=file,node-name=f0,filename={img},cache.direct=off,aio=threads"),
                "--export".into(),
                format!(
                    "type=vhost-user-blk,id=e0,node-name=f0,writable=on,\
                     addr.type=unix,addr.path={}",
                    dir.path("qsd.sock").display()
                ),
            ]);
            Ok(Daemon::start(
                QSD,
                cmd,
                dir.path("qsd.sock"),
                dir.path("qsd.log"),
            )?)
        }
    };

    let _ = writeln!(
        t,
        "| vhost-user-blk, QEMU microvm frontend, raw file in page cache (median of {rounds}) | ours IOPS (MB/s) | qemu-storage-daemon IOPS (MB/s) | ours / qsd | IOPS range ours; qsd | QEMU run, s (median) ours; qsd |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    for &(pattern, size, depth, count) in BLK_JOBS {
        if pattern != "randread" || size != 4096 {
            continue;
        }
        let count = count_override.unwrap_or(count);
        let append = blk_job_append(pattern, size, depth, count);
        let iops = |us: u64| f64::from(count) / (us.max(1) as f64 / 1e6);
        let (mut o, mut o_wall) = (Vec::new(), Vec::new());
        let (mut q, mut q_wall) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (us, wall) = ours.blk_bench(blk, &append)?;
            o.push(iops(us));
            o_wall.push(wall);
            if let Ok(d) = theirs.as_mut() {
                let (us, wall) = d.blk_bench(blk, &append)?;
                q.push(iops(us));
                q_wall.push(wall);
            }
        }
        let rate = |iops: f64| format!("{iops:.0} ({:.1})", iops * size as f64 / 1e6);
        let (om, olo, ohi) = median_range(o);
        let q = (!q.is_empty()).then(|| median_range(q));
        let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
        let walls = format!(
            "{}; {}",
            secs(median(o_wall)),
            if q_wall.is_empty() {
                "-".into()
            } else {
                secs(median(q_wall))
            }
        );
        let _ = writeln!(
            t,
            "| {pattern} {} KiB, depth {depth}, {count} requests | {} | {} | {} | {olo:.0}–{ohi:.0}; {} | {walls} |",
            size / 1024,
            rate(om),
            q.map_or("n/a".into(), |(m, _, _)| rate(m)),
            q.map_or("-".into(), |(m, _, _)| format!(
                "{:.2}x",
                om / m.max(f64::MIN_POSITIVE)
            )),
            q.map_or("-".into(), |(_, lo, hi)| format!("{lo:.0}–{hi:.0}")),
        );
    }
    if let Err(why) = &theirs {
        let _ = writeln!(t);
        let _ = writeln!(t, "qemu-storage-daemon column: skipped ({why})");
    }
    // The process boundary's cost: our monitor with the in-process
    // virtio-blk-device against the same device served by our backend
    // (the daemon above) through our own vhost-user frontend.
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| our monitor, virtio-blk on the same file (median of {rounds}) | in process IOPS (MB/s) | over vhost-user IOPS (MB/s) | vhost-user / in process | IOPS range in process; vhost-user | boot to exit, s (median) in process; vhost-user |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: |");
    let ram = "-m 64M -object memory-backend-memfd,id=mem,size=64M,share=on \
               -machine microvm,memory-backend=mem";
    let in_process = format!(
        "{ram} -drive if=none,id=d0,file={img},format=raw,cache=writeback \
         -device virtio-blk-device,drive=d0 -kernel {blk}"
    );
    let over_vhost = format!(
        "{ram} -chardev socket,id=vu,path={} -device vhost-user-blk,chardev=vu -kernel {blk}",
        dir.path("ours.sock").display()
    );
    for &(pattern, size, depth, count) in BLK_JOBS {
        if pattern != "randread" || size != 4096 {
            continue;
        }
        let count = count_override.unwrap_or(count);
        let append = blk_job_append(pattern, size, depth, count);
        let iops = |us: u64| f64::from(count) / (us.max(1) as f64 / 1e6);
        let (mut a, mut a_wall, mut b, mut b_wall) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (us, wall) = harness_blk_bench(&in_process, &append)?;
            a.push(iops(us));
            a_wall.push(wall);
            let (us, wall) = harness_blk_bench(&over_vhost, &append)
                .map_err(|e| format!("{e}\n--- {} ---\n{}", ours.name(), ours.output()))?;
            ours.check_alive()?;
            b.push(iops(us));
            b_wall.push(wall);
        }
        let rate = |iops: f64| format!("{iops:.0} ({:.1})", iops * size as f64 / 1e6);
        let (am, alo, ahi) = median_range(a);
        let (bm, blo, bhi) = median_range(b);
        let secs = |d: Duration| format!("{:.2}", d.as_secs_f64());
        let _ = writeln!(
            t,
            "| {pattern} {} KiB, depth {depth}, {count} requests | {} | {} | {:.2}x | {alo:.0}–{ahi:.0}; {blo:.0}–{bhi:.0} | {}; {} |",
            size / 1024,
            rate(am),
            rate(bm),
            bm / am.max(f64::MIN_POSITIVE),
            secs(median(a_wall)),
            secs(median(b_wall)),
        );
    }
    drop(ours);
    drop(theirs);
    Ok(())
}

/// One boot of the blk guest's bench job under our monitor, built from
/// `options` (whitespace-separated) and `append`: the guest's bench time
/// in µs and the run's boot to exit.
fn harness_blk_bench(options: &str, append: &str) -> Result<(u64, Duration), String> {
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
            let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
            let mut m = monitor::machine::Machine::new(&config).map_err(|e| e.to_string())?;
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

/// The `net` guest's ELF (`GUEST_NET`, or `net` in the guests' output
/// directory).
fn net_guest() -> Option<&'static str> {
    option_env!("GUEST_NET")
        .or(Some(concat!(env!("GUEST_DIR"), "/net")))
        .filter(|p| std::path::Path::new(p).is_file())
}

/// Frames of a small-count run whose figures are subtracted from a full
/// run's, so that boot, driver set-up and exit drop out of the
/// per-frame figures.
const NET_BASE: u64 = 100;

/// Frames per full bench run, by direction: a few seconds each at the
/// guest's emulated ~1 ms per frame (tx), ~2 ms (echo, rx).
fn net_count(dir: &str) -> u64 {
    match dir {
        "tx" => 3000,
        "rx" => 1000,
        _ => 1500,
    }
}

/// The ethertype of the generated frames (the guest's own).
const BENCH_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A broadcast 0x88b5 frame of `size` bytes from a host MAC.
fn bench_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size.max(60)];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]);
    f[12..14].copy_from_slice(&BENCH_ETHERTYPE);
    f
}

/// The host side of one net bench run, stopped on drop.
struct NetPeer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl NetPeer {
    fn spawn(f: impl FnOnce(&std::sync::atomic::AtomicBool) -> u64 + Send + 'static) -> NetPeer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        NetPeer {
            stop,
            thread: Some(std::thread::spawn(move || f(&s))),
        }
    }

    /// Stops the peer; the frames it moved.
    fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for NetPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits up to `ms` for `fd` to become readable.
fn poll_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack for the call's duration.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Frames per burst of a receive generator.
const RX_BURST: u64 = 5;

/// Time between bursts: 250 frames per second offered, which the guest
/// keeps up with (its rx bench cannot be saturated, see the README).
const RX_PERIOD: Duration = Duration::from_millis(20);

/// A host port on a hub that drains (`generate` = 0) or sends broadcast
/// frames of `generate` bytes, `RX_BURST` every `RX_PERIOD`.
fn hub_peer(mut port: backends::net::hub::HubPort, generate: usize) -> NetPeer {
    use backends::net::NetBackend;
    use std::sync::atomic::Ordering;
    NetPeer::spawn(move |stop| {
        let mut n = 0;
        let mut buf = vec![0u8; backends::net::MAX_FRAME];
        let frame = bench_frame(generate);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if generate == 0 {
                while let Ok(Some(_)) = port.recv(&mut buf) {
                    n += 1;
                }
                if let Some(fd) = port.readiness_fd() {
                    poll_readable(fd, 5);
                }
            } else {
                for _ in 0..RX_BURST {
                    if port.send(&[&frame]).is_ok() {
                        n += 1;
                    }
                }
                next += RX_PERIOD;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
        n
    })
}

/// Accepts one connection on `l` unless stopped first.
fn accept_or_stop(
    l: &std::os::unix::net::UnixListener,
    stop: &std::sync::atomic::AtomicBool,
) -> Option<std::os::unix::net::UnixStream> {
    l.set_nonblocking(true).ok()?;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok()?;
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    }
    None
}

/// The host end of `-netdev stream` (the 4-byte big-endian length
/// framing): drains everything (`generate` = 0), or writes `frames`
/// broadcast frames of `generate` bytes as fast as the socket takes them
/// (a monitor reads only while the guest has receive buffers:
/// back-pressure, no drops).
fn stream_peer(
    listener: std::os::unix::net::UnixListener,
    generate: usize,
    frames: u64,
) -> NetPeer {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    NetPeer::spawn(move |stop| {
        let Some(mut s) = accept_or_stop(&listener, stop) else {
            return 0;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(20)));
        let _ = s.set_write_timeout(Some(Duration::from_millis(20)));
        let mut n = 0u64;
        if generate == 0 {
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => n += k as u64,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            return n;
        }
        // Paced, not flooded: the guest's rx bench drains until its used
        // ring is empty, so a supply faster than it never lets it count
        // (see the README); `RX_BURST` frames every `RX_PERIOD`.
        let _ = frames;
        let frame = bench_frame(generate);
        let mut burst = Vec::new();
        for _ in 0..RX_BURST {
            burst.extend_from_slice(&(frame.len() as u32).to_be_bytes());
            burst.extend_from_slice(&frame);
        }
        let _ = s.set_write_timeout(None);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if s.write_all(&burst).is_err() {
                break;
            }
            n += RX_BURST;
            next += RX_PERIOD;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        n
    })
}

/// What one net bench run gave.
#[derive(Clone, Copy, Debug)]
struct NetRun {
    /// Boot to exit (ours) or process start to exit (QEMU).
    wall: Duration,
    exits: Option<u64>,
    kvm_exits: Option<u64>,
    kicks: u64,
    interrupts: u64,
}

/// The backend of a net bench row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetBackendKind {
    Loopback,
    Hub,
    Stream,
}

/// The guest's `net: bench …` line, parsed: kicks and interrupts.
fn net_bench_line(serial: &str) -> Option<(u64, u64)> {
    let line = serial
        .lines()
        .rev()
        .find(|l| l.starts_with("net: bench "))?;
    Some((
        crate::scenarios::number_before(line, "kicks")?,
        crate::scenarios::number_before(line, "interrupts")?,
    ))
}

/// One run of the bench guest under our monitor.
fn net_ours(
    guest: &str,
    kind: NetBackendKind,
    dir: &str,
    size: usize,
    count: u64,
    work: &crate::scenarios::Workdir,
) -> Result<NetRun, String> {
    let mut hubs = monitor::machine::Hubs::default();
    let sock = work.path(&format!("ours-{dir}-{size}-{count}.sock"));
    let _ = std::fs::remove_file(&sock);
    let generate = if dir == "rx" { size } else { 0 };
    let (netdev, peer) = match kind {
        NetBackendKind::Loopback => ("loopback,id=n0".to_string(), None),
        NetBackendKind::Hub => {
            let port = hubs
                .get(1)
                .port("host")
                .map_err(|e| format!("hub port: {e}"))?;
            (
                "hubport,id=n0,hubid=1".to_string(),
                Some(hub_peer(port, generate)),
            )
        }
        NetBackendKind::Stream => {
            let l = std::os::unix::net::UnixListener::bind(&sock)
                .map_err(|e| format!("{}: {e}", sock.display()))?;
            (
                format!(
                    "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                    sock.display()
                ),
                Some(stream_peer(l, generate, count)),
            )
        }
    };
    let args: Vec<String> = [
        "-m".to_string(),
        "64M".into(),
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-device,netdev=n0".into(),
        "-kernel".into(),
        guest.into(),
        "-append".into(),
        format!("net.test=bench net.dir={dir} net.size={size} net.count={count} net.ms=30000"),
    ]
    .into();
    let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
    let mut m =
        monitor::machine::Machine::with_hubs(&config, &mut hubs).map_err(|e| e.to_string())?;
    let out = m.run(Duration::from_secs(120)).map_err(|e| e.to_string())?;
    drop(m);
    if let Some(p) = peer {
        p.finish();
    }
    if !out.verdict.is_pass() {
        return Err(format!(
            "net bench ({kind:?} {dir} {size} B): {}\n{}",
            out.verdict, out.serial
        ));
    }
    let (kicks, interrupts) = net_bench_line(&out.serial)
        .ok_or_else(|| format!("the net guest printed no bench line:\n{}", out.serial))?;
    Ok(NetRun {
        wall: out.boot_to_exit,
        exits: Some(out.exits.total()),
        kvm_exits: out.kvm.as_ref().map(|k| k.exits()),
        kicks,
        interrupts,
    })
}

/// One run of the bench guest under QEMU, `-netdev stream` to a host peer.
fn net_qemu(
    guest: &str,
    dir: &str,
    size: usize,
    count: u64,
    work: &crate::scenarios::Workdir,
) -> Result<NetRun, String> {
    let sock = work.path(&format!("qemu-{dir}-{size}-{count}.sock"));
    let _ = std::fs::remove_file(&sock);
    let l = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    let peer = stream_peer(l, if dir == "rx" { size } else { 0 }, count);
    let r = Qemu::microvm(guest)
        .modern()
        .timeout(Duration::from_secs(120))
        .args(crate::scenarios::net::stream_client_args(&sock, ""))
        .append(format!(
            "net.test=bench net.dir={dir} net.size={size} net.count={count} net.ms=30000"
        ))
        .run()
        .map_err(|e| format!("qemu: {e}"))?;
    peer.finish();
    if !r.passed() {
        return Err(format!(
            "net bench under QEMU ({dir} {size} B): {}",
            r.describe()
        ));
    }
    let (kicks, interrupts) = net_bench_line(&r.serial)
        .ok_or_else(|| format!("the net guest printed no bench line:\n{}", r.serial))?;
    Ok(NetRun {
        wall: r.elapsed,
        exits: None,
        kvm_exits: None,
        kicks,
        interrupts,
    })
}

/// Per-frame figures of a full run net of a base run: frames per second,
/// and the counts per frame.
struct NetRate {
    pps: f64,
    exits: Option<f64>,
    kvm_exits: Option<f64>,
    kicks: f64,
    interrupts: f64,
}

fn net_rate(full: NetRun, base: NetRun, frames: u64) -> NetRate {
    let frames_f = frames.max(1) as f64;
    let secs = full.wall.saturating_sub(base.wall).as_secs_f64();
    let per = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?) as f64 / frames_f);
    NetRate {
        pps: if secs > 0.0 { frames_f / secs } else { 0.0 },
        exits: per(full.exits, base.exits),
        kvm_exits: per(full.kvm_exits, base.kvm_exits),
        kicks: full.kicks.saturating_sub(base.kicks) as f64 / frames_f,
        interrupts: full.interrupts.saturating_sub(base.interrupts) as f64 / frames_f,
    }
}

/// The net rows: the `net` guest's raw-frame bench on our loopback, hub
/// and stream backends, QEMU's virtio-net-device on the stream backend in
/// the same run, and a TCP echo over a tap in a network namespace.
fn net_rows(t: &mut String) -> Result<(), String> {
    let Some(guest) = net_guest() else {
        return Ok(());
    };
    let work = crate::scenarios::Workdir::new("bench-net").map_err(|e| e.to_string())?;
    let qemu_ok = qemu::unavailable().is_none();
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| net guest bench (irq; one run per row, net of a {NET_BASE}-frame run) | ours pps (MB/s) | QEMU pps (MB/s) | ours / QEMU | ours: exits to us / frame | KVM exits / frame | kicks / frame | interrupts / frame |"
    );
    let _ = writeln!(
        t,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let rows: &[(NetBackendKind, &str, usize, &str)] = &[
        (NetBackendKind::Loopback, "tx", 64, "loopback"),
        (NetBackendKind::Loopback, "tx", 1500, "loopback"),
        (NetBackendKind::Loopback, "echo", 64, "loopback"),
        (NetBackendKind::Loopback, "echo", 1500, "loopback"),
        (NetBackendKind::Hub, "tx", 64, "hub, host port draining"),
        (NetBackendKind::Hub, "tx", 1500, "hub, host port draining"),
        (
            NetBackendKind::Hub,
            "rx",
            64,
            "hub, host port offering 250/s",
        ),
        (
            NetBackendKind::Hub,
            "rx",
            1500,
            "hub, host port offering 250/s",
        ),
        (NetBackendKind::Stream, "tx", 64, "stream, host draining"),
        (NetBackendKind::Stream, "tx", 1500, "stream, host draining"),
        (
            NetBackendKind::Stream,
            "rx",
            64,
            "stream, host offering 250/s",
        ),
        (
            NetBackendKind::Stream,
            "rx",
            1500,
            "stream, host offering 250/s",
        ),
    ];
    // `HARNESS_BENCH_NET=<text>`: only the rows whose name contains it.
    let only = std::env::var("HARNESS_BENCH_NET").unwrap_or_default();
    for &(kind, dir, size, label) in rows {
        if !format!("{dir} {size} B, {label}").contains(&only) {
            continue;
        }
        let count = net_count(dir);
        let full = net_ours(guest, kind, dir, size, count, &work)?;
        let base = net_ours(guest, kind, dir, size, NET_BASE, &work)?;
        let ours = net_rate(full, base, count - NET_BASE);
        let theirs = if qemu_ok && kind == NetBackendKind::Stream {
            let full = net_qemu(guest, dir, size, count, &work)?;
            let base = net_qemu(guest, dir, size, NET_BASE, &work)?;
            Some(net_rate(full, base, count - NET_BASE))
        } else {
            None
        };
        let rate = |r: &NetRate| format!("{:.0} ({:.2})", r.pps, r.pps * size as f64 / 1e6);
        let per = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            t,
            "| {dir} {size} B, {label} | {} | {} | {} | {} | {} | {:.3} | {:.3} |",
            rate(&ours),
            theirs.as_ref().map_or("-".into(), rate),
            theirs.as_ref().map_or("-".into(), |q| format!(
                "{:.2}x",
                ours.pps / q.pps.max(f64::MIN_POSITIVE)
            )),
            per(ours.exits),
            per(ours.kvm_exits),
            ours.kicks,
            ours.interrupts,
        );
    }
    if only.is_empty() || "tap".contains(&only) {
        tap_row(t, guest, qemu_ok)?;
    }
    Ok(())
}

/// Bytes of the tap row's TCP echo (each way).
const TAP_BYTES: usize = 16 << 20;

/// The device MTU of the tap row (the largest whose frame fits 64 KiB).
const TAP_DEVICE_MTU: u32 = 65518;

/// The host side of the tap row, inside `ns`: waits for the guest to
/// answer a ping, then times a TCP echo of [`TAP_BYTES`].
fn tap_echo(ns: &crate::netns::Netns) -> Result<Duration, String> {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    ns.wait_for_ping("10.0.2.15", Duration::from_secs(60))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 7));
    let start = Instant::now();
    ns.tcp_echo(addr, TAP_BYTES, Duration::from_secs(60))
        .join()
        .unwrap_or_else(|_| Err("the TCP client panicked".into()))?;
    Ok(start.elapsed())
}

/// Whether interface `ifname` exists in this namespace.
fn link_exists(ifname: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(ifname).exists()
}

/// TCP echo host↔guest over a tap (MTU 65520) in a network namespace:
/// the `serve` guest under our monitor and under QEMU
/// (`-netdev tap,ifname=…`; the tap moved into the namespace once QEMU
/// opened it).
fn tap_row(t: &mut String, guest: &str, qemu_ok: bool) -> Result<(), String> {
    if let Some(why) = crate::netns::unavailable() {
        let _ = writeln!(t);
        let _ = writeln!(t, "TCP over tap: n/a ({why})");
        return Ok(());
    }
    let ifname = format!("vhb{}", std::process::id() % 1_000_000);
    let netdev = format!("tap,id=n0,ifname={ifname},script=no,downscript=no");
    let device = format!("virtio-net-device,netdev=n0,host_mtu={TAP_DEVICE_MTU}");
    let append = format!("net.test=serve net.bytes={TAP_BYTES} net.ms=30000");
    // Ours.
    let ours = {
        let ns = crate::netns::Netns::new("bench")?;
        let args: Vec<String> = [
            "-m", "64M", "-netdev", &netdev, "-device", &device, "-kernel", guest, "-append",
            &append,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
        let mut m = monitor::machine::Machine::new(&config).map_err(|e| e.to_string())?;
        ns.adopt(&ifname, "10.0.2.2/24", 65520)?;
        let (out, host) = std::thread::scope(|scope| {
            let host = scope.spawn(|| tap_echo(&ns));
            let out = m.run(Duration::from_secs(120));
            (
                out,
                host.join()
                    .unwrap_or_else(|_| Err("the host side panicked".into())),
            )
        });
        let out = out.map_err(|e| e.to_string())?;
        if !out.verdict.is_pass() {
            return Err(format!("tap bench: {}\n{}", out.verdict, out.serial));
        }
        host?
    };
    let theirs = if qemu_ok {
        let ns = crate::netns::Netns::new("bench-q")?;
        let running = Qemu::microvm(guest)
            .modern()
            .timeout(Duration::from_secs(120))
            .args(["-netdev", &netdev, "-device", &device])
            .append(append.clone())
            .spawn()
            .map_err(|e| format!("qemu: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !link_exists(&ifname) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        ns.adopt(&ifname, "10.0.2.2/24", 65520)?;
        let host = tap_echo(&ns);
        let r = running.wait().map_err(|e| format!("qemu: {e}"))?;
        if !r.passed() {
            return Err(format!("tap bench under QEMU: {}", r.describe()));
        }
        Some(host?)
    } else {
        None
    };
    let mbps = |d: Duration| TAP_BYTES as f64 / 1e6 / d.as_secs_f64().max(1e-9);
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| TCP echo host↔guest, 16 MiB each way, tap in a netns (MTU 65520) | ours MB/s (s) | QEMU MB/s (s) | ours / QEMU |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: |");
    let _ = writeln!(
        t,
        "| serve guest, irq, checksum offload | {:.2} ({:.1}) | {} | {} |",
        mbps(ours),
        ours.as_secs_f64(),
        theirs.map_or("n/a".into(), |q| format!(
            "{:.2} ({:.1})",
            mbps(q),
            q.as_secs_f64()
        )),
        theirs.map_or("-".into(), |q| format!("{:.2}x", mbps(ours) / mbps(q))),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_range_sorts() {
        assert_eq!(median_range(vec![3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_range(vec![5.0]), (5.0, 5.0, 5.0));
    }

    #[test]
    fn the_net_bench_line_gives_kicks_and_interrupts() {
        let serial = "net: ring waits 0\n\
                      net: bench tx 3000 frames 192000 bytes 2100000 us 93 kicks 2 interrupts\n\
                      verdict: pass\n";
        assert_eq!(net_bench_line(serial), Some((93, 2)));
        assert_eq!(net_bench_line("net: ring waits 0\n"), None);
    }

    #[test]
    fn net_rates_are_net_of_the_base_run() {
        let run = |ms: u64, exits: u64, kicks: u64| NetRun {
            wall: Duration::from_millis(ms),
            exits: Some(exits),
            kvm_exits: None,
            kicks,
            interrupts: 0,
        };
        let r = net_rate(run(2300, 500, 103), run(300, 200, 3), 2000);
        assert!((r.pps - 1000.0).abs() < 1e-6);
        assert_eq!(r.exits, Some(0.15));
        assert_eq!(r.kvm_exits, None);
        assert!((r.kicks - 0.05).abs() < 1e-9);
        let f = bench_frame(64);
        assert_eq!(
            (f.len(), &f[..6], &f[12..14]),
            (64, &[0xff; 6][..], &BENCH_ETHERTYPE[..])
        );
        assert_eq!(bench_frame(10).len(), 60);
    }
}
