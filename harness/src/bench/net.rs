//! The net rows: the `net` guest's raw-frame bench on our loopback, a hub
//! and a stream peer (and QEMU's stream), and the TCP echo over a tap.

use super::*;

/// The `net` guest's ELF (`GUEST_NET`, or `net` in the guests' output
/// directory).
pub(super) fn net_guest() -> Option<&'static str> {
    option_env!("GUEST_NET")
        .or(Some(concat!(env!("GUEST_DIR"), "/net")))
        .filter(|p| std::path::Path::new(p).is_file())
}

/// Frames of a small-count run whose figures are subtracted from a full
/// run's, so that boot, driver set-up and exit drop out of the
/// per-frame figures.
pub(super) const NET_BASE: u64 = 100;

/// Frames per full bench run, by direction: a few seconds each at the
/// guest's emulated ~1 ms per frame (tx), ~2 ms (echo, rx).
pub(super) fn net_count(dir: &str) -> u64 {
    match dir {
        "tx" => 3000,
        "rx" => 1000,
        _ => 1500,
    }
}

/// The ethertype of the generated frames (the guest's own).
pub(super) const BENCH_ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A broadcast 0x88b5 frame of `size` bytes from a host MAC.
pub(super) fn bench_frame(size: usize) -> Vec<u8> {
    let mut f = vec![0u8; size.max(60)];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xbb]);
    f[12..14].copy_from_slice(&BENCH_ETHERTYPE);
    f
}

/// The host side of one net bench run, stopped on drop.
pub(super) struct NetPeer {
    pub(super) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(super) thread: Option<std::thread::JoinHandle<u64>>,
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
pub(super) fn poll_readable(fd: std::os::fd::RawFd, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack for the call's duration.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// Frames per burst of a receive generator.
pub(super) const RX_BURST: u64 = 5;

/// Time between bursts: 250 frames per second offered, which the guest
/// keeps up with (its rx bench cannot be saturated, see the README).
pub(super) const RX_PERIOD: Duration = Duration::from_millis(20);

/// A host port on a hub that drains (`generate` = 0) or sends broadcast
/// frames of `generate` bytes, `RX_BURST` every `RX_PERIOD`.
pub(super) fn hub_peer(mut port: backends::net::hub::HubPort, generate: usize) -> NetPeer {
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
pub(super) fn accept_or_stop(
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
pub(super) fn stream_peer(
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
pub(super) struct NetRun {
    /// Boot to exit (ours) or process start to exit (QEMU).
    pub(super) wall: Duration,
    pub(super) exits: Option<u64>,
    pub(super) kvm_exits: Option<u64>,
    pub(super) kicks: u64,
    pub(super) interrupts: u64,
}

/// The backend of a net bench row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NetBackendKind {
    Loopback,
    Hub,
    Stream,
}

/// The guest's `net: bench …` line, parsed: kicks and interrupts.
pub(super) fn net_bench_line(serial: &str) -> Option<(u64, u64)> {
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
pub(super) fn net_ours(
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
pub(super) fn net_qemu(
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
pub(super) struct NetRate {
    pub(super) pps: f64,
    pub(super) exits: Option<f64>,
    pub(super) kvm_exits: Option<f64>,
    pub(super) kicks: f64,
    pub(super) interrupts: f64,
}

pub(super) fn net_rate(full: NetRun, base: NetRun, frames: u64) -> NetRate {
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

/// The net guest plot: frames per second against the frame size, one
/// figure per direction.
const NET_GUEST_PLOT: Plot = Plot {
    id: "guest-net-pps-size",
    title: "net guest, raw frames",
    x_label: "frame bytes",
    y_label: "frames per second",
    log_x: true,
};

/// The net rows: the `net` guest's raw-frame bench on our loopback, hub
/// and stream backends, QEMU's virtio-net-device on the stream backend in
/// the same run, and a TCP echo over a tap in a network namespace.
pub(super) fn net_rows(t: &mut String) -> Result<(), String> {
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
        crate::progress::step(format!("bench: net guest {dir} {size} B, {label}"))?;
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
        // rx runs at the rate the host offers: nothing there to plot.
        if dir != "rx" {
            NET_GUEST_PLOT.point_in(
                dir,
                &format!("ours, {label}"),
                Role::Ours,
                size as f64,
                ours.pps,
            );
            if let Some(q) = &theirs {
                NET_GUEST_PLOT.point_in(
                    dir,
                    &format!("QEMU, {label}"),
                    Role::Peer,
                    size as f64,
                    q.pps,
                );
            }
        }
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
pub(super) const TAP_BYTES: usize = 16 << 20;

/// The device MTU of the tap row (the largest whose frame fits 64 KiB).
pub(super) const TAP_DEVICE_MTU: u32 = 65518;

/// The host side of the tap row, inside `ns`: waits for the guest to
/// answer a ping, then times a TCP echo of [`TAP_BYTES`].
pub(super) fn tap_echo(ns: &crate::netns::Netns) -> Result<Duration, String> {
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
pub(super) fn link_exists(ifname: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(ifname).exists()
}

/// TCP echo host↔guest over a tap (MTU 65520) in a network namespace:
/// the `serve` guest under our monitor and under QEMU
/// (`-netdev tap,ifname=…`; the tap moved into the namespace once QEMU
/// opened it).
pub(super) fn tap_row(t: &mut String, guest: &str, qemu_ok: bool) -> Result<(), String> {
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
