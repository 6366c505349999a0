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

use harness::machine::Machine;
use harness::scenarios::Workdir;
use harness::vhost_user::Daemon;
use harness::vm::{Outcome, kvm_or_skip};

/// Longest a guest may run before it is stopped.
const TIMEOUT: Duration = Duration::from_secs(120);

const RNG: &str = env!("GUEST_RNG");
const CONSOLE: &str = env!("GUEST_CONSOLE");

/// The `net` guest's ELF.
fn net_guest() -> &'static str {
    option_env!("GUEST_NET").unwrap_or(concat!(env!("GUEST_DIR"), "/net"))
}

fn scratch(test: &str) -> Workdir {
    Workdir::new(test).unwrap_or_else(|e| panic!("{test}: scratch directory: {e}"))
}

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

/// Our options for a 64 MiB guest on a shared memfd, a unix-socket
/// chardev `vu` on `socket`, then `device`.
fn options(kernel: &str, append: &str, socket: &Path, device: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-m",
        "64M",
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-machine",
        "microvm,memory-backend=mem",
        "-kernel",
        kernel,
        "-append",
        append,
        "-chardev",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("socket,id=vu,path={}", socket.display()));
    a.extend(device.iter().map(|s| s.to_string()));
    a
}

fn run(args: &[String]) -> Outcome {
    let config = harness::options::parse(args).expect("options");
    Machine::new(&config)
        .unwrap_or_else(|e| panic!("machine: {e}"))
        .run(TIMEOUT)
        .expect("run")
}

fn describe(o: &Outcome, daemon: &Daemon) -> String {
    let devices: Vec<String> = o.devices.iter().map(|d| d.to_string()).collect();
    format!(
        "verdict: {:?}\nserial:\n{}\ndevices:\n{}\n--- {} log ---\n{}",
        o.verdict,
        o.serial,
        devices.join("\n"),
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
/// output, sends 512 bytes and reads the guest's echo
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
    // sends N bytes and reads the guest's echo. vhost-device-console 0.1
    // drops input until the driver first wrote (hence this order), and
    // publishes one used element per byte it receives, for the same chain
    // (§2.7.14: our driver reports the used index jumping), so input goes
    // one byte at a time, each echo awaited.
    const N: usize = 512;
    // ASCII only: vhost-device-console 0.1 panics on guest output that is
    // not UTF-8 (its vring worker dies).
    let sent: Vec<u8> = (0..N).map(|i| b'a' + (i * 7 % 26) as u8).collect();
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
        let mut echo = Vec::with_capacity(N);
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
        &format!("console.test=talk console.mode=irq console.multiport=on console.bytes={N}"),
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
