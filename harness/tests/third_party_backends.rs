//! Other projects' vhost-user backends behind our monitor, each started by
//! the test, each against our tiny guests under KVM (QEMU
//! `docs/interop/vhost-user.rst`; virtio-mmio §4.2):
//!
//! - rust-vmm's `vhost-device-rng` behind `-device vhost-user-rng`;
//! - rust-vmm's `vhost-device-console` behind the generic
//!   `-device vhost-user-device,virtio-id=3,num_vqs=4,config_size=12`
//!   (QEMU 8.2's spelling), with its network backend: the guest's console
//!   output arrives on a TCP port, and what is sent there reaches the
//!   guest;
//! - DPDK's `dpdk-testpmd` with the vhost PMD (`--vdev net_vhost0`) in
//!   `macswap` mode behind `-netdev vhost-user`: the guest counts its
//!   frames coming back.
//!
//! And the other way round: DPDK's own userspace virtio driver
//! (`--vdev net_virtio_user0`) against our net backend on a loopback
//! netdev.
//!
//! `.ci/setup` installs them (`cargo install --locked vhost-device-rng
//! vhost-device-console`, Debian's `dpdk-dev` with the vhost and virtio
//! PMDs). Without KVM or a peer the test says why and skips; where
//! `HARNESS_REQUIRE_QEMU=1` (CI with `/dev/kvm`) that is a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::daemon::Daemon;
use monitor::vm::{Outcome, kvm_or_skip};
use vhost_user::{DEVICE_COUNTERS, logged_device_counter};

mod common;
use common::{TIMEOUT, net_guest, options, run, scratch};

const RNG: &str = env!("GUEST_RNG");
const CONSOLE: &str = env!("GUEST_CONSOLE");

/// `program`'s path (`PATH`, then cargo's bin directory), or why not.
fn find(program: &str) -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{program} is not installed (.ci/setup installs it)"))
}

/// KVM and `program`, or a printed skip (a failure under
/// `HARNESS_REQUIRE_QEMU=1`).
fn ready(test: &str, program: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) {
        return None;
    }
    match find(program) {
        Ok(p) => Some(p),
        Err(why) if std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1") => {
            panic!("{test}: {why}, and HARNESS_REQUIRE_QEMU=1")
        }
        Err(why) => {
            println!("SKIP: {test}: {why}");
            None
        }
    }
}

fn describe(o: &Outcome, daemon: &Daemon) -> String {
    format!(
        "{}\n--- {} log ---\n{}",
        common::describe(o),
        daemon.name(),
        daemon.output()
    )
}

fn assert_pass(o: &Outcome, line: &str, daemon: &Daemon) {
    assert!(o.verdict.is_pass(), "{}", describe(o, daemon));
    assert!(
        o.serial.contains(line),
        "no {line:?}\n{}",
        describe(o, daemon)
    );
}

/// virtio-rng (§5.4) from rust-vmm's `vhost-device-rng` (reading
/// /dev/urandom) through our `vhost-user-rng` frontend: 256 KiB in
/// interrupt mode.
#[test]
fn vhost_device_rng_behind_our_monitor() {
    let test = "vhost_device_rng_behind_our_monitor";
    let Some(program) = ready(test, "vhost-device-rng") else {
        return;
    };
    let dir = scratch(test);
    // It listens on the path with the socket's index appended.
    let socket = dir.path("rng.sock");
    let mut cmd = Command::new(program);
    cmd.arg("--socket-path").arg(&socket);
    let listening = PathBuf::from(format!("{}0", socket.display()));
    let daemon = Daemon::start("vhost-device-rng", cmd, listening, dir.path("rng.log"))
        .unwrap_or_else(|e| panic!("{e}"));
    let args = options(
        RNG,
        "rng.mode=irq rng.bytes=262144",
        daemon.socket(),
        &["-device", "vhost-user-rng,chardev=vu"],
    );
    let o = run(&args);
    assert_pass(&o, "rng: 262144 bytes in ", &daemon);
}

/// The console guest's pattern stream P (`harness/guests/README.md`):
/// byte i is `\n` when i % 64 == 63, else ALPHA[(i / 64 + i % 64) % 62].
fn console_pattern(n: usize) -> Vec<u8> {
    const ALPHA: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..n)
        .map(|i| {
            if i % 64 == 63 {
                b'\n'
            } else {
                ALPHA[(i / 64 + i % 64) % 62]
            }
        })
        .collect()
}

/// A free TCP port on the loopback (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// virtio-console (§5.3) from rust-vmm's `vhost-device-console` behind our
/// generic frontend (`vhost-user-device,virtio-id=3,num_vqs=4,
/// config_size=12`: MULTIPORT with one port): its network backend listens
/// on a TCP port; the test connects, reads the guest's 512 bytes of
/// output, sends 4 bytes and reads the guest's echo of each
/// (`console.test=talk` on port 0 once MULTIPORT added and opened it).
#[test]
fn vhost_device_console_behind_our_generic_frontend() {
    let test = "vhost_device_console_behind_our_generic_frontend";
    let Some(program) = ready(test, "vhost-device-console") else {
        return;
    };
    let dir = scratch(test);
    let socket = dir.path("console.sock");
    let port = free_port();
    let mut cmd = Command::new(program);
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--backend=network")
        .arg(format!("--tcp-port={port}"));
    let listening = PathBuf::from(format!("{}0", socket.display()));
    let daemon = Daemon::start(
        "vhost-device-console",
        cmd,
        listening,
        dir.path("console.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // The peer: connects to the console's TCP port (retrying while the
    // backend sets it up), reads the guest's N bytes of the pattern, then
    // sends a few bytes, one at a time, and reads the guest's echo of each.
    // vhost-device-console 0.1 drops input until the driver first wrote
    // (hence this order); publishes one used element per byte it receives,
    // all for the same chain (§2.7.14: our driver reports the used index
    // jumping), so input goes a byte at a time; and pops every available
    // receive buffer while completing only as many as it has bytes for,
    // losing the rest: 15 of the driver's 16 go with the first byte, and
    // the last one when its receive event finds nothing queued (which
    // happens under load), so only a few bytes can be checked reliably.
    const N: usize = 512;
    const INPUT: usize = 4;
    // ASCII only: vhost-device-console 0.1 panics on guest output that is
    // not UTF-8 (its vring worker dies).
    let sent: Vec<u8> = (0..INPUT).map(|i| b'a' + (i * 7 % 26) as u8).collect();
    let to_send = sent.clone();
    let peer = std::thread::spawn(move || -> Result<(Vec<u8>, Vec<u8>), String> {
        let deadline = Instant::now() + TIMEOUT;
        let mut s = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(format!("connect: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        s.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let read_n = |s: &mut TcpStream, n: usize| {
            let mut got = Vec::with_capacity(n);
            let mut buf = [0u8; 4096];
            while got.len() < n {
                match s.read(&mut buf[..(n - got.len()).min(4096)]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
            got
        };
        let output = read_n(&mut s, N);
        let mut echo = Vec::with_capacity(INPUT);
        for b in &to_send {
            s.write_all(std::slice::from_ref(b))
                .map_err(|e| format!("write: {e}"))?;
            let got = read_n(&mut s, 1);
            if got.is_empty() {
                break;
            }
            echo.extend_from_slice(&got);
        }
        Ok((output, echo))
    });
    let args = options(
        CONSOLE,
        &format!(
            "console.test=talk console.mode=irq console.multiport=on console.bytes={N} console.input={INPUT}"
        ),
        daemon.socket(),
        &[
            "-device",
            "vhost-user-device,chardev=vu,virtio-id=3,num_vqs=4,config_size=12",
        ],
    );
    let o = run(&args);
    assert_pass(&o, &format!("console: talk: {N} bytes, "), &daemon);
    let (output, echo) = peer
        .join()
        .unwrap_or_else(|_| Err("the peer panicked".into()))
        .unwrap_or_else(|e| panic!("{e}\n{}", describe(&o, &daemon)));
    assert_eq!(output, console_pattern(N), "the guest's output on TCP");
    assert_eq!(echo, sent, "the echo of the input sent over TCP");
}

/// `dpdk-testpmd` with Debian's PMD plugins, as the tests run it: no PCI,
/// no hugepages (anonymous memory; the vhost and virtio-user PMDs share
/// guest memory through fds, not through their own pool), 512 MiB, its own
/// runtime directory.
fn testpmd(program: &Path, prefix: &str, vdev: &str, app: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(["-l", "0-1", "--no-pci", "--no-huge", "-m", "512"])
        .arg(format!("--file-prefix={prefix}"))
        .arg("--vdev")
        .arg(vdev)
        .arg("--")
        .args(["--nb-cores=1", "--total-num-mbufs=16384"])
        .args(app);
    cmd
}

/// A run-unique DPDK file prefix.
fn prefix(tag: &str) -> String {
    format!("vt-{tag}-{}", std::process::id())
}

/// virtio-net (§5.1) behind DPDK's vhost PMD: `dpdk-testpmd --vdev
/// net_vhost0,iface=…` listens, our `-netdev vhost-user` connects, testpmd
/// forwards in `macswap` mode (each frame back with its addresses
/// swapped), and the `net` guest's echo bench counts 1000 frames back.
#[test]
fn dpdk_vhost_pmd_behind_our_monitor() {
    let test = "dpdk_vhost_pmd_behind_our_monitor";
    let Some(program) = ready(test, "dpdk-testpmd") else {
        return;
    };
    let dir = scratch(test);
    let socket = dir.path("vhost.sock");
    let mut cmd = testpmd(
        &program,
        &prefix("vhost"),
        &format!("net_vhost0,iface={},queues=1", socket.display()),
        &["--forward-mode=macswap", "--stats-period=1"],
    );
    cmd.stdin(std::process::Stdio::null());
    let daemon = Daemon::start(
        "dpdk-testpmd (vhost PMD)",
        cmd,
        socket,
        dir.path("testpmd.log"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let args = options(
        net_guest(),
        "net.test=bench net.dir=echo net.count=1000 net.size=200 net.ms=60000",
        daemon.socket(),
        &[
            "-netdev",
            "vhost-user,id=n0,chardev=vu",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
    );
    let o = run(&args);
    assert_pass(&o, "net: bench echo 1000 frames 200000 bytes ", &daemon);
}

/// The numbers after `label` in each forward-statistics block of
/// testpmd's output, in order (`RX-packets:` or `TX-packets:`).
fn testpmd_counts(log: &str, label: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut in_port_block = false;
    for line in log.lines() {
        if line.contains("Forward statistics for port 0") {
            in_port_block = true;
        } else if in_port_block && let Some(rest) = line.trim().strip_prefix(label) {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                out.push(n);
            }
            if label.starts_with("TX") {
                in_port_block = false;
            }
        } else if line.contains("----------------------------------") {
            in_port_block = false;
        }
    }
    out
}

/// DPDK's own userspace virtio driver (`--vdev net_virtio_user0`) against
/// our net backend on a loopback netdev: testpmd transmits in `txonly`
/// mode for a second (every frame it counts sent is one our device sent on
/// to the netdev), then receives in `rxonly` mode what came back (every
/// frame our device delivered is one testpmd counts received), without an
/// error on either side. With `packed_vq=1` DPDK asks for packed rings,
/// which we do not offer, and goes on with split rings.
#[test]
fn dpdk_virtio_user_against_our_net_backend() {
    let test = "dpdk_virtio_user_against_our_net_backend";
    let Some(program) = ready(test, "dpdk-testpmd") else {
        return;
    };
    for packed in [false, true] {
        let dir = scratch(test);
        let daemon = Daemon::ours(
            Path::new(env!("CARGO_BIN_EXE_virtio-harness")),
            dir.path("net.sock"),
            &[
                "-netdev",
                "loopback,id=n0",
                "-device",
                "virtio-net-device,netdev=n0",
            ],
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let vdev = format!(
            "net_virtio_user0,path={},queues=1,packed_vq={}",
            daemon.socket().display(),
            u8::from(packed)
        );
        let log_path = dir.path("testpmd.log");
        let log = std::fs::File::create(&log_path).expect("testpmd log");
        let mut cmd = testpmd(
            &program,
            &prefix(if packed { "vu-packed" } else { "vu-split" }),
            &vdev,
            &["-i", "--no-flush-rx"],
        );
        cmd.stdin(std::process::Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut child = cmd.spawn().expect("dpdk-testpmd");
        let mut stdin = child.stdin.take().expect("stdin");
        // testpmd block-buffers its output to a file, but its command line
        // writes each prompt at once: one more prompt is one more command
        // done. Each phase is timed from its `start` having run, so a slow
        // start under load does not squeeze the phases together.
        let prompts = || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .matches("testpmd> ")
                .count()
        };
        let wait_prompts = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while prompts() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_prompts(1);
        let mut done = 1;
        let mut say = |cmds: &[&str], pause: u64| {
            for cmd in cmds {
                stdin
                    .write_all(format!("{cmd}\n").as_bytes())
                    .expect("testpmd stdin");
                done += 1;
                wait_prompts(done);
            }
            std::thread::sleep(Duration::from_millis(pause));
        };
        say(&["set fwd txonly", "start"], 1000);
        say(&["stop", "set fwd rxonly", "start"], 1500);
        say(&["stop", "show port stats 0"], 0);
        stdin.write_all(b"quit\n").expect("testpmd stdin");
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("testpmd wait") {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = std::fs::read_to_string(&log_path).unwrap_or_default();
        // The backend logs its counters when the frontend hangs up.
        let ours = daemon.output_when(DEVICE_COUNTERS, Duration::from_secs(5));
        let ctx = format!("packed_vq={packed}\n--- testpmd ---\n{out}\n--- ours ---\n{ours}");
        assert!(status.is_some_and(|s| s.success()), "testpmd failed\n{ctx}");
        let tx = testpmd_counts(&out, "TX-packets:");
        let rx = testpmd_counts(&out, "RX-packets:");
        assert!(tx.len() >= 2 && rx.len() >= 2, "no statistics\n{ctx}");
        let counter = |name: &str| logged_device_counter(&ours, name);
        assert!(tx[0] > 0, "testpmd sent nothing\n{ctx}");
        assert_eq!(tx[0], counter("tx_frames"), "frames sent\n{ctx}");
        assert_eq!(rx[0], 0, "txonly received\n{ctx}");
        assert!(rx[1] > 0, "testpmd received nothing\n{ctx}");
        assert_eq!(rx[1], counter("rx_frames"), "frames received\n{ctx}");
        for bad in [
            "tx_drop_bad_header",
            "tx_drop_malformed",
            "tx_drop_backend",
            "rx_bad_chains",
        ] {
            assert_eq!(counter(bad), 0, "{bad}\n{ctx}");
        }
        for err in ["RX-errors:", "TX-errors:"] {
            let n: Option<u64> = out.lines().find_map(|l| {
                let at = l.find(err)?;
                l[at + err.len()..].split_whitespace().next()?.parse().ok()
            });
            assert_eq!(n, Some(0), "{err}\n{ctx}");
        }
        eprintln!(
            "{test}: packed_vq={packed}: testpmd sent {} and received {} frames",
            tx[0], rx[1]
        );
    }
}
