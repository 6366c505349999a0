//! The virtio-user rows (`bench --user`): our drivers in this process drive
//! each vhost-user backend directly, with no emulated guest in the way, so
//! the backend's own cost shows: IOPS, latency percentiles and the
//! backend's CPU time per request.
//!
//! blk: one 256 MiB raw file of random bytes, served by ours (`cache=
//! writeback` or `cache=none`), `qemu-storage-daemon` with `aio=threads`
//! and with `aio=io_uring` (`cache.direct=off` or `on`), each with two
//! request queues offered; every job on one and on two queues, the
//! backends alternating job by job, the median of `rounds` runs. As the
//! peer's ceiling, `qemu-img bench` runs QEMU's block layer alone (no
//! vhost-user, no virtio) on the same file. rng: ours (`rng-random` on
//! `/dev/urandom`) against rust-vmm's `vhost-device-rng` (its default
//! source, `/dev/urandom`).

use std::path::Path;

use crate::user::{UserKind, UserRow, UserRun, run_once};

use super::*;

/// The CPU our driver runs on during the rows, and the CPU every backend
/// is confined to (`taskset`), on a machine with two or more: the same
/// placement for every backend, with the driver and the backend on cores
/// of their own, as a vCPU and a backend thread would be. Unpinned, the
/// scheduler sometimes put both on one core (where a wake-up costs no
/// inter-processor interrupt) and sometimes not, and one backend's
/// polling core moved the others: the same run of ours measured 0.8 and
/// 2.3 M frames/s.
pub(super) const DRIVER_CPU: usize = 0;
/// See [`DRIVER_CPU`].
pub(super) const BACKEND_CPU: usize = 1;

/// Whether the rows pin (two or more CPUs and `taskset` present).
pub(super) fn pinning() -> bool {
    static PINNING: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PINNING.get_or_init(|| {
        std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
            && Command::new("taskset")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

/// `program` under `taskset -c BACKEND_CPU` when pinning.
pub(super) fn backend_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if pinning() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(BACKEND_CPU.to_string()).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The calling thread's CPU affinity, to put back with [`restore`].
pub(super) fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and
    // sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Puts back an affinity [`affinity`] read.
pub(super) fn restore(set: &libc::cpu_set_t) {
    // SAFETY: sched_setaffinity reads exactly `size_of::<cpu_set_t>()`
    // bytes of a valid set.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set);
    }
}

/// Pins the calling thread to `cpu`; whether that worked.
pub(super) fn pin_self(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it for a CPU below CPU_SETSIZE (checked above);
    // sched_setaffinity reads exactly `size_of::<cpu_set_t>()` bytes of
    // it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Bytes of the bench file.
const USER_DISK: u64 = 256 << 20;

/// One backend process and how to reach it.
struct Backend {
    name: &'static str,
    daemon: Daemon,
}

/// The blk jobs: workload, block size, depth, data requests.
const USER_BLK_JOBS: &[(&str, u32, u16, u64)] = &[
    ("randread", 4096, 1, 20_000),
    ("randread", 4096, 32, 100_000),
    ("randread", 4096, 128, 100_000),
    ("randwrite", 4096, 32, 50_000),
    ("seqread", 128 << 10, 4, 10_000),
];

fn random_image(path: &Path) -> Result<(), String> {
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut buf = vec![0u8; USER_DISK as usize];
    for chunk in buf.chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(path, &buf).map_err(|e| format!("{}: {e}", path.display()))
}

fn blk_backends(
    dir: &crate::scenarios::Workdir,
    img: &str,
    direct: bool,
) -> Result<Vec<Backend>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut out = Vec::new();
    let tag = if direct { "direct" } else { "cached" };
    // Ours with its defaults (busy polling after events), and without
    // polling, which shows what the polling buys and costs.
    for (name, poll, file) in [
        ("ours", None, "ours"),
        ("ours, no polling", Some("0"), "ours-nopoll"),
    ] {
        let sock = dir.path(&format!("{file}-{tag}.sock"));
        let mut cmd = backend_command(&exe);
        cmd.arg("vhost-user").arg("--socket").arg(&sock);
        if let Some(us) = poll {
            cmd.args(["--poll-max-us", us]);
        }
        cmd.args([
            "-drive".to_string(),
            format!(
                "if=none,id=d0,file={img},format=raw,cache={}",
                if direct { "none" } else { "writeback" }
            ),
            "-device".into(),
            "virtio-blk-device,drive=d0,num-queues=2".into(),
        ]);
        out.push(Backend {
            name,
            daemon: Daemon::start(
                "virtio-harness vhost-user",
                cmd,
                sock,
                dir.path(&format!("{file}-{tag}.log")),
            )?,
        });
    }
    if qsd_unavailable().is_none() {
        for aio in ["threads", "io_uring"] {
            let sock = dir.path(&format!("qsd-{aio}-{tag}.sock"));
            let mut cmd = backend_command(QSD);
            cmd.args([
                "--blockdev".to_string(),
                format!(
                    "driver=file,node-name=f0,filename={img},cache.direct={},aio={aio}",
                    if direct { "on" } else { "off" }
                ),
                "--export".into(),
                format!(
                    "type=vhost-user-blk,id=e0,node-name=f0,writable=on,num-queues=2,\
                     addr.type=unix,addr.path={}",
                    sock.display()
                ),
            ]);
            let name = if aio == "threads" {
                "qsd threads"
            } else {
                "qsd io_uring"
            };
            match Daemon::start(name, cmd, sock, dir.path(&format!("qsd-{aio}-{tag}.log"))) {
                Ok(daemon) => out.push(Backend { name, daemon }),
                Err(e) => eprintln!("bench --user: {name} not measured: {e}"),
            }
        }
    }
    Ok(out)
}

/// The median row of several runs (by rate).
fn median_row(mut rows: Vec<UserRow>) -> UserRow {
    rows.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    rows.swap_remove(rows.len() / 2)
}

fn cell(r: &UserRow) -> String {
    format!(
        "{:.0} ({:.0}/{:.0})",
        r.rate(),
        r.p50.as_secs_f64() * 1e6,
        r.p99.as_secs_f64() * 1e6
    )
}

/// `qemu-img bench` on `img`: QEMU's block layer alone, sequential 4 KiB
/// reads at `depth`, `aio`, cached or not; requests per second.
fn qemu_img_bench(img: &str, depth: u16, aio: &str, direct: bool) -> Option<f64> {
    let count = 200_000u32;
    let t0 = Instant::now();
    let out = Command::new("qemu-img")
        .args([
            "bench",
            "-f",
            "raw",
            "-c",
            &count.to_string(),
            "-d",
            &depth.to_string(),
        ])
        .args([
            "-s",
            "4096",
            "-i",
            aio,
            "-t",
            if direct { "none" } else { "writeback" },
            img,
        ])
        .output()
        .ok()?;
    let wall = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    // "Run completed in 1.234 seconds."
    let secs = text
        .split("completed in ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(wall);
    out.status
        .success()
        .then(|| f64::from(count) / secs.max(1e-9))
}

/// The blk and rng virtio-user rows, `rounds` runs each.
pub fn run_user(rounds: usize) -> Result<String, String> {
    let before = affinity();
    let pinned = pinning() && pin_self(DRIVER_CPU);
    let r = run_user_rows(rounds, pinned);
    if let Some(set) = &before {
        restore(set);
    }
    r
}

fn run_user_rows(rounds: usize, pinned: bool) -> Result<String, String> {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{}",
        if pinned {
            format!(
                "placement: our driver on CPU {DRIVER_CPU}, each backend confined to CPU {BACKEND_CPU} (taskset)"
            )
        } else {
            "placement: not pinned (one CPU, or no taskset)".to_string()
        }
    );
    let dir = crate::scenarios::Workdir::new("bench-user").map_err(|e| e.to_string())?;
    let img_path = dir.path("user.img");
    random_image(&img_path)?;
    let img = img_path.display().to_string();
    for direct in [false, true] {
        let _ = std::fs::read(&img_path);
        let mut backends = blk_backends(&dir, &img, direct)?;
        let names: Vec<&str> = backends.iter().map(|b| b.name).collect();
        let _ = writeln!(
            t,
            "\nvhost-user-blk through virtio-user, raw file {} (median of {rounds}; IOPS (p50/p99 µs); backend CPU s per M requests; per-CPU-s = requests per backend CPU second)\n",
            cache_mode(direct)
        );
        let mut head = "| job | queues |".to_string();
        for n in &names {
            let _ = write!(head, " {n} |");
        }
        for n in names.iter().skip(1) {
            let _ = write!(head, " ours / {n} |");
        }
        head.push_str(" CPU s/M |");
        for n in names.iter().skip(1) {
            let _ = write!(head, " per-CPU-s ours / {n} |");
        }
        let _ = writeln!(t, "{head}");
        let cols = head.matches('|').count() - 1;
        let _ = writeln!(t, "|{}", " --- |".repeat(cols));
        for &(workload, block, depth, requests) in USER_BLK_JOBS {
            crate::progress::step(format!(
                "bench: virtio-user blk {workload} {block} B, depth {depth}"
            ))?;
            for queues in [1u16, 2] {
                let mut results: Vec<Vec<UserRow>> = vec![Vec::new(); backends.len()];
                for _ in 0..rounds {
                    for (i, b) in backends.iter_mut().enumerate() {
                        let run = UserRun {
                            socket: b.daemon.socket().to_path_buf(),
                            kind: UserKind::Blk,
                            workload: workload.into(),
                            block,
                            depth,
                            queues,
                            requests,
                            backend_pid: Some(b.daemon.pid()),
                            ..UserRun::default()
                        };
                        let row = run_once(&run)
                            .map_err(|e| format!("{}: {e}\n{}", b.name, b.daemon.output()))?;
                        b.daemon.check_alive()?;
                        results[i].push(row);
                    }
                }
                let meds: Vec<UserRow> = results.into_iter().map(median_row).collect();
                if workload == "randread" && block == 4096 {
                    for (name, m) in names.iter().zip(&meds) {
                        USER_BLK_PLOT.point_in(
                            &plot_variant(direct, queues),
                            name,
                            if name.starts_with("ours") {
                                Role::Ours
                            } else {
                                Role::Peer
                            },
                            f64::from(depth),
                            m.rate(),
                        );
                    }
                }
                let job = format!("{workload} {}, depth {depth}", crate::user::size(block));
                let mut line = format!("| {job} | {queues} |");
                for m in &meds {
                    let _ = write!(line, " {} |", cell(m));
                }
                for m in meds.iter().skip(1) {
                    let _ = write!(line, " {:.2}x |", meds[0].rate() / m.rate().max(1e-9));
                }
                let cpus: Vec<String> = meds
                    .iter()
                    .map(|m| {
                        m.cpu_per_million()
                            .map_or("-".into(), |c| format!("{c:.2}"))
                    })
                    .collect();
                let _ = write!(line, " {} |", cpus.join("; "));
                for m in meds.iter().skip(1) {
                    let r = meds[0]
                        .per_cpu_second()
                        .zip(m.per_cpu_second())
                        .map(|(a, b)| a / b.max(1e-9));
                    let _ = write!(line, " {} |", r.map_or("-".into(), |r| format!("{r:.2}x")));
                }
                let _ = writeln!(t, "{line}");
            }
        }
        let mut ceiling = String::new();
        for aio in ["threads", "io_uring"] {
            for depth in [1u16, 32] {
                if let Some(r) = qemu_img_bench(&img, depth, aio, direct) {
                    // One job at `depth`: the 1-queue plot's x is its own.
                    {
                        USER_BLK_PLOT.point_in(
                            &plot_variant(direct, 1),
                            &format!(
                                "qemu-img bench aio={aio} (QEMU's block layer alone, sequential)"
                            ),
                            Role::Limit,
                            f64::from(depth),
                            r,
                        );
                    }
                    let _ = write!(ceiling, " aio={aio} depth {depth}: {r:.0}/s;");
                }
            }
        }
        if !ceiling.is_empty() {
            let _ = writeln!(
                t,
                "\nQEMU's block layer alone (`qemu-img bench`, sequential 4 KiB reads, no vhost-user):{ceiling}"
            );
        }
        for b in &mut backends {
            b.daemon.kill();
        }
    }
    t.push_str(&rng_rows(&dir, rounds)?);
    t.push_str(&net_rows(&dir, rounds)?);
    Ok(t)
}

/// The user blk plot: IOPS of 4 KiB random reads against the depth.
const USER_BLK_PLOT: Plot = Plot {
    id: "user-blk-iops-depth",
    title: "vhost-user-blk through virtio-user, 4 KiB random reads",
    x_label: "requests in flight per queue",
    y_label: "IOPS",
    log_x: true,
};

/// The user net plot: echo frames per second against the frame size.
const USER_NET_PLOT: Plot = Plot {
    id: "user-net-pps-size",
    title: "virtio-net echo through virtio-user, 128 frames in flight",
    x_label: "frame bytes",
    y_label: "frames per second",
    log_x: true,
};

/// The user blk plot's variant: the cache mode and the queues.
fn plot_variant(direct: bool, queues: u16) -> String {
    format!(
        "{}, {queues} queue{}",
        cache_mode(direct),
        if queues == 1 { "" } else { "s" }
    )
}

/// How the raw file is read: `on O_DIRECT` or `in the page cache`.
fn cache_mode(direct: bool) -> &'static str {
    if direct {
        "on O_DIRECT"
    } else {
        "in the page cache"
    }
}

/// How the driver learned of completions.
fn driver(poll: bool) -> &'static str {
    if poll { "polls" } else { "sleeps until called" }
}

/// `dpdk-testpmd`'s path, if installed.
fn testpmd() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("dpdk-testpmd"))
        .find(|p| p.is_file())
}

/// net echo: ours (`-netdev loopback`: each frame comes back) against
/// DPDK's vhost PMD (`dpdk-testpmd --vdev net_vhost0` in `macswap`
/// forwarding, its forwarding lcore polling on CPU 1), 64- and 1514-byte
/// frames. Each backend runs alone: a polling core would take the CPU the
/// other backend is confined to.
fn net_rows(dir: &crate::scenarios::Workdir, rounds: usize) -> Result<String, String> {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nvirtio-net echo through virtio-user, 128 frames in flight (median of {rounds}; the backend's CPU includes a polling core where it has one)\n"
    );
    let _ = writeln!(
        t,
        "| backend | frame | our driver | pps | kicks per frame | calls per frame | backend CPU µs per frame |"
    );
    let _ = writeln!(t, "| --- | ---: | --- | ---: | ---: | ---: | ---: |");
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let sock = dir.path("ours-net.sock");
    let mut cmd = backend_command(&exe);
    cmd.arg("vhost-user").arg("--socket").arg(&sock).args([
        "-netdev",
        "loopback,id=n0",
        "-device",
        "virtio-net-device,netdev=n0",
    ]);
    let mut ours = Backend {
        name: "ours (loopback)",
        daemon: Daemon::start(
            "virtio-harness vhost-user",
            cmd,
            sock,
            dir.path("ours-net.log"),
        )?,
    };
    net_backend_rows(&mut t, &mut ours, rounds)?;
    ours.daemon.kill();
    crate::progress::step("bench: DPDK's vhost PMD")?;
    let Some(program) = testpmd() else {
        let _ = writeln!(
            t,
            "\nDPDK vhost PMD not measured: dpdk-testpmd is not installed"
        );
        return Ok(t);
    };
    let sock = dir.path("testpmd.sock");
    // DPDK pins its lcores itself: lcore 1, the forwarding one, on CPU 1.
    let mut cmd = Command::new(&program);
    cmd.args(["-l", "0-1", "--no-pci", "--no-huge", "-m", "512"])
        .arg(format!("--file-prefix=vt-bench-{}", std::process::id()))
        .arg("--vdev")
        .arg(format!("net_vhost0,iface={},queues=1", sock.display()))
        .arg("--")
        .args([
            "--nb-cores=1",
            "--total-num-mbufs=16384",
            "--forward-mode=macswap",
            // With a stats period testpmd forwards until killed instead of
            // waiting for a key on stdin (closed here).
            "--stats-period=1",
        ])
        .stdin(std::process::Stdio::null());
    match Daemon::start(
        "dpdk-testpmd (vhost PMD)",
        cmd,
        sock,
        dir.path("testpmd.log"),
    ) {
        Ok(daemon) => {
            let mut b = Backend {
                name: "DPDK vhost PMD (testpmd macswap)",
                daemon,
            };
            let r = net_backend_rows(&mut t, &mut b, rounds);
            b.daemon.kill();
            r?;
        }
        Err(e) => {
            let _ = writeln!(t, "\nDPDK vhost PMD not measured: {e}");
        }
    }
    Ok(t)
}

/// The net rows of one backend.
fn net_backend_rows(
    t: &mut String,
    b: &mut Backend,
    rounds: usize,
) -> Result<(), crate::progress::Interrupted> {
    for (size, poll) in [(64u32, false), (64, true), (1514, false), (1514, true)] {
        crate::progress::step(format!("bench: virtio-user net {size} B, {}", b.name))?;
        let mut rows = Vec::new();
        for _ in 0..rounds {
            let run = UserRun {
                socket: b.daemon.socket().to_path_buf(),
                kind: UserKind::Net,
                block: size,
                requests: 200_000,
                poll,
                backend_pid: Some(b.daemon.pid()),
                ..UserRun::default()
            };
            match run_once(&run) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    let _ = writeln!(
                        t,
                        "| {} | {size} B | {} | not measured: {e} | | | |",
                        b.name,
                        driver(poll)
                    );
                    break;
                }
            }
        }
        if rows.len() < rounds {
            continue;
        }
        let m = median_row(rows);
        let per = |n: u64| n as f64 / m.requests.max(1) as f64;
        USER_NET_PLOT.point(
            &format!("{}, driver {}", b.name, driver(poll)),
            if b.name.starts_with("ours") {
                Role::Ours
            } else {
                Role::Peer
            },
            f64::from(size),
            m.rate(),
        );
        let _ = writeln!(
            t,
            "| {}{} | {size} B | {} | {:.0} | {:.3} | {:.3} | {} |",
            b.name,
            if m.lost.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.lost)
            },
            driver(poll),
            m.rate(),
            per(m.kicks),
            per(m.calls),
            m.cpu_per_million()
                .map_or("-".into(), |c| format!("{c:.2}"))
        );
    }
    Ok(())
}

fn rng_rows(dir: &crate::scenarios::Workdir, rounds: usize) -> Result<String, String> {
    let mut t = String::new();
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let sock = dir.path("ours-rng.sock");
    let mut cmd = backend_command(&exe);
    cmd.arg("vhost-user").arg("--socket").arg(&sock).args([
        "-object",
        "rng-random,id=r0,filename=/dev/urandom",
        "-device",
        "virtio-rng-device,rng=r0",
    ]);
    let mut backends = vec![Backend {
        name: "ours",
        daemon: Daemon::start(
            "virtio-harness vhost-user",
            cmd,
            sock,
            dir.path("ours-rng.log"),
        )?,
    }];
    let vdr = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin/vhost-device-rng"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "vhost-device-rng".into());
    let sock = dir.path("vdr.sock");
    let mut cmd = backend_command(&vdr);
    cmd.arg("--socket-path").arg(&sock);
    match Daemon::start(
        "vhost-device-rng",
        cmd,
        std::path::PathBuf::from(format!("{}0", sock.display())),
        dir.path("vdr.log"),
    ) {
        Ok(daemon) => backends.push(Backend {
            name: "vhost-device-rng",
            daemon,
        }),
        Err(e) => {
            let _ = writeln!(t, "vhost-device-rng not measured: {e}");
        }
    }
    let _ = writeln!(
        t,
        "\nvhost-user-rng through virtio-user, 64 MiB in reads of 256 KiB, 16 buffers of 16 KiB in flight, from /dev/urandom (median of {rounds})\n"
    );
    let _ = writeln!(
        t,
        "| backend | MB/s | backend CPU s per GB | kicks per MB | calls per MB |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: |");
    let mut rates = Vec::new();
    for b in &mut backends {
        crate::progress::step(format!("bench: virtio-user rng, {}", b.name))?;
        let mut rows = Vec::new();
        for _ in 0..rounds {
            let run = UserRun {
                socket: b.daemon.socket().to_path_buf(),
                kind: UserKind::Rng,
                requests: 64 << 10,
                backend_pid: Some(b.daemon.pid()),
                ..UserRun::default()
            };
            rows.push(
                run_once(&run).map_err(|e| format!("{}: {e}\n{}", b.name, b.daemon.output()))?,
            );
        }
        let m = median_row(rows);
        let mb = m.bytes as f64 / 1e6;
        let _ = writeln!(
            t,
            "| {} | {:.1} | {} | {:.1} | {:.1} |",
            b.name,
            m.rate() / 1e6,
            m.backend_cpu.map_or("-".into(), |c| format!(
                "{:.2}",
                c.as_secs_f64() / (mb / 1e3)
            )),
            m.kicks as f64 / mb,
            m.calls as f64 / mb
        );
        rates.push(m.rate());
        b.daemon.kill();
    }
    if let [ours, theirs] = rates[..] {
        let _ = writeln!(
            t,
            "\nours / vhost-device-rng: {:.2}x",
            ours / theirs.max(1e-9)
        );
    }
    Ok(t)
}
