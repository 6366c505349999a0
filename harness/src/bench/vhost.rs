//! The vhost-user rows: QEMU as the frontend of our backend and of
//! `qemu-storage-daemon`; our monitor in process and over vhost-user.

use super::*;

/// Most runs per vhost-user row in the full [`run`] (each is a QEMU boot
/// of a few seconds); [`run_vhost`] takes any number.
pub const VHOST_MAX_ROUNDS: usize = 5;

/// The `qemu-storage-daemon` binary.
pub(super) const QSD: &str = "qemu-storage-daemon";

/// Why `qemu-storage-daemon` cannot run here, if it cannot.
pub(super) fn qsd_unavailable() -> Option<String> {
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

/// The vhost-user plot: 4 KiB random-read IOPS against the depth under
/// QEMU, our backend against qemu-storage-daemon.
const VHOST_PLOT: Plot = Plot {
    id: "vhost-blk-iops-depth",
    title: "vhost-user-blk under QEMU microvm, 4 KiB random reads, raw file in page cache",
    x_label: "requests in flight",
    y_label: "IOPS",
    log_x: true,
};

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
pub(super) fn vhost_rows(t: &mut String, rounds: usize) -> Result<(), String> {
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
        crate::progress::step(format!(
            "bench: vhost-user-blk {pattern} {size} B, depth {depth}"
        ))?;
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
        VHOST_PLOT.point(
            "ours (virtio-harness vhost-user)",
            Role::Ours,
            f64::from(depth),
            om,
        );
        if let Some((m, _, _)) = q {
            VHOST_PLOT.point("qemu-storage-daemon", Role::Peer, f64::from(depth), m);
        }
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
        crate::progress::step(format!(
            "bench: vhost-user-blk {pattern} {size} B, depth {depth}"
        ))?;
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
