//! Our monitor as a vhost-user frontend (QEMU `docs/interop/vhost-user.rst`):
//! `-device vhost-user-blk|vhost-user-rng,chardev=…` and `-netdev
//! vhost-user` put an external backend behind one of our virtio-mmio slots
//! (§4.2), with guest RAM on a shared memfd. The tiny guests run their
//! usual checks against (a) our own backend, `virtio-harness vhost-user`,
//! started as a child process, and (b) `qemu-storage-daemon`'s
//! vhost-user-blk export, an independent backend. A backend killed before
//! or during the run gives a reported error, never a hang or a panic.
//!
//! Skips, saying why, without `/dev/kvm` (and the qemu-storage-daemon test
//! without that program).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::daemon::Daemon;
use harness::scenarios::Workdir;
use monitor::machine::Machine;
use monitor::vm::{Outcome, kvm_or_skip};

mod common;
use common::{describe, machine, net_guest, options, run, scratch};

const RNG: &str = env!("GUEST_RNG");
const BLK: &str = env!("GUEST_BLK");

/// `virtio-harness vhost-user` serving `options` on `socket`; killed on
/// drop.
fn ours(socket: PathBuf, options: &[&str]) -> Daemon {
    Daemon::ours(
        Path::new(env!("CARGO_BIN_EXE_virtio-harness")),
        socket,
        options,
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn assert_pass(o: &Outcome, line: &str) {
    assert!(o.verdict.is_pass(), "{}", describe(o));
    assert!(o.serial.contains(line), "no {line:?}\n{}", describe(o));
}

const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const BYTES: u64 = 512 << 10;
const OFFSET: u64 = 4096;

fn blk_append() -> String {
    format!(
        "blk.test=pattern blk.mode=irq blk.depth=8 blk.seed={SEED} blk.bytes={BYTES} blk.offset={OFFSET}"
    )
}

fn disk(dir: &Workdir) -> PathBuf {
    let file = dir.path("disk.img");
    fs::File::create(&file)
        .and_then(|f| f.set_len(16 << 20))
        .expect("creating the disk");
    file
}

/// The disk holds the pattern (§5.2.6 writes reached the file) and zeros
/// elsewhere.
fn check_disk(file: &Path, o: &Outcome) {
    let data = fs::read(file).expect("reading the disk");
    for (i, w) in data.chunks_exact(8).enumerate() {
        let at = i as u64 * 8;
        let want = if (OFFSET..OFFSET + BYTES).contains(&at) {
            (at ^ SEED).to_le_bytes()
        } else {
            [0; 8]
        };
        assert_eq!(w, want, "disk byte {at:#x}\n{}", describe(o));
    }
}

/// virtio-blk (§5.2) through our frontend and our own backend: pattern
/// write, flush, read back; the file holds the pattern; the backend's
/// calls arrived as interrupts with `InterruptStatus` set (§4.2.2).
#[test]
fn frontend_blk_pattern_against_our_backend() {
    let test = "frontend_blk_pattern_against_our_backend";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let file = disk(&dir);
    let drive = format!("if=none,id=d0,file={},format=raw", file.display());
    let daemon = ours(
        dir.path("blk.sock"),
        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
    );
    let args = options(
        BLK,
        &blk_append(),
        daemon.socket(),
        &["-device", "vhost-user-blk,chardev=vu"],
    );
    let o = run(&args);
    assert_pass(&o, &format!("blk: pattern: {} bytes, ", 2 * BYTES));
    check_disk(&file, &o);
    let slot = &o.devices[0];
    assert!(slot.counters.interrupts > 0, "{}", describe(&o));
    assert!(slot.fault.is_none(), "{}", describe(&o));
}

/// The same guest against `qemu-storage-daemon --export
/// type=vhost-user-blk`, an independent backend (libvhost-user).
#[test]
fn frontend_blk_pattern_against_qemu_storage_daemon() {
    let test = "frontend_blk_pattern_against_qemu_storage_daemon";
    if !kvm_or_skip(test) {
        return;
    }
    if Command::new("qemu-storage-daemon")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        if std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{test}: qemu-storage-daemon is not installed, and HARNESS_REQUIRE_QEMU=1");
        }
        println!("SKIP: {test}: qemu-storage-daemon is not installed");
        return;
    }
    let dir = scratch(test);
    let file = disk(&dir);
    let socket = dir.path("qsd.sock");
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f,filename={}",
            file.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
            socket.display()
        ));
    let log = socket.with_extension("log");
    let daemon =
        Daemon::start("qemu-storage-daemon", cmd, socket, log).unwrap_or_else(|e| panic!("{e}"));
    let args = options(
        BLK,
        &blk_append(),
        daemon.socket(),
        &["-device", "vhost-user-blk,chardev=vu"],
    );
    let o = run(&args);
    assert_pass(&o, &format!("blk: pattern: {} bytes, ", 2 * BYTES));
    check_disk(&file, &o);
}

/// virtio-rng (§5.4) on `rng-deterministic` behind our backend: every
/// byte is the seed's SplitMix64 stream.
#[test]
fn frontend_rng_matches_the_seed() {
    let test = "frontend_rng_matches_the_seed";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let seed = 0x5eed_0000_0000_0042_u64;
    let daemon = ours(
        dir.path("rng.sock"),
        &[
            "-object",
            &format!("rng-deterministic,id=r0,seed={seed}"),
            "-device",
            "virtio-rng-device,rng=r0",
        ],
    );
    let args = options(
        RNG,
        &format!("rng.mode=irq rng.seed={seed} rng.bytes=262144"),
        daemon.socket(),
        &["-device", "vhost-user-rng,chardev=vu"],
    );
    let o = run(&args);
    assert_pass(&o, "rng: 262144 bytes in ");
    assert!(
        o.serial.contains("bytes match the SplitMix64 stream"),
        "{}",
        describe(&o)
    );
}

/// The `lifecycle` guest on a vhost-user-rng: reset with a request in
/// flight (§2.4; the frontend stops the rings with `GET_VRING_BASE` and
/// resets the backend), an unoffered feature refused (§2.2.2), a clean
/// re-init that reads entropy again through the same backend.
#[test]
fn frontend_rng_survives_reset_and_reinit() {
    let test = "frontend_rng_survives_reset_and_reinit";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let daemon = ours(
        dir.path("rng.sock"),
        &[
            "-object",
            "rng-builtin,id=r0",
            "-device",
            "virtio-rng-device,rng=r0",
        ],
    );
    let args = options(
        env!("GUEST_LIFECYCLE"),
        "",
        daemon.socket(),
        &["-device", "vhost-user-rng,chardev=vu"],
    );
    let o = run(&args);
    assert!(o.verdict.is_pass(), "{}", describe(&o));
    assert!(o.devices[0].fault.is_none(), "{}", describe(&o));
}

/// virtio-net (§5.1) behind our backend on a `loopback` netdev: the `net`
/// guest's echo bench counts every frame back; MAC and link status are
/// the frontend's configuration space.
#[test]
fn frontend_net_echoes_frames() {
    let test = "frontend_net_echoes_frames";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let daemon = ours(
        dir.path("net.sock"),
        &[
            "-netdev",
            "loopback,id=n0",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
    );
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
    assert_pass(&o, "net: bench echo 1000 frames 200000 bytes ");
}

/// Without a shared memory backend the machine is refused with an error
/// that names the options to add.
#[test]
fn frontend_without_shared_ram_names_the_memory_backend() {
    let dir = scratch("frontend_without_shared_ram_names_the_memory_backend");
    let args: Vec<String> = [
        "-m".to_string(),
        "64M".into(),
        "-kernel".into(),
        RNG.into(),
        "-chardev".into(),
        format!("socket,id=vu,path={}", dir.path("none.sock").display()),
        "-device".into(),
        "vhost-user-rng,chardev=vu".into(),
    ]
    .to_vec();
    if monitor::vm::kvm_unavailable().is_some() {
        // The check needs only options, but Machine::new opens KVM first.
        assert!(monitor::options::parse(&args).is_ok());
        return;
    }
    let config = monitor::options::parse(&args).expect("options");
    let e = Machine::new(&config).expect_err("private RAM must be refused");
    let s = e.to_string();
    assert!(
        s.contains("memory-backend-memfd") && s.contains("share=on"),
        "{s}"
    );
}

const CRYPTO: &str = env!("GUEST_CRYPTO");

/// `-object cryptodev-vhost-user` (§5.9, QEMU's option) in front of our
/// own backend serving `cryptodev-backend-builtin` with two data queues:
/// the data queues run in the daemon, the control queue here, every
/// session the guest creates and destroys crosses the socket as
/// `CREATE_CRYPTO_SESSION`/`CLOSE_CRYPTO_SESSION`. The guest sees the
/// cipher service with the backend's four ciphers (from its configuration
/// space) and their NIST/IEEE vectors pass; a session never made is
/// INVSESS. No other crypto vhost-user backend installs here (DPDK's
/// vhost crypto needs a DPDK application and hardware queues), so ours is
/// the peer.
#[test]
fn frontend_crypto_ciphers_against_our_backend() {
    let test = "frontend_crypto_ciphers_against_our_backend";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let daemon = ours(
        dir.path("crypto.sock"),
        &[
            "-object",
            "cryptodev-backend-builtin,id=c0,queues=2",
            "-device",
            "virtio-crypto-device,cryptodev=c0",
        ],
    );
    for mode in ["irq", "poll"] {
        let args = options(
            CRYPTO,
            &format!("crypto.mode={mode} crypto.require=none"),
            daemon.socket(),
            &[
                "-object",
                "cryptodev-vhost-user,id=c0,chardev=vu,queues=2",
                "-device",
                "virtio-crypto-device,cryptodev=c0",
            ],
        );
        let o = run(&args);
        assert_pass(&o, "crypto: 4 vectors passed");
        for name in ["ECB", "CBC", "CTR", "XTS"] {
            assert!(
                o.serial.contains(&format!("AES-128-{name}")),
                "{name}\n{}",
                describe(&o)
            );
        }
        assert!(o.serial.contains(", 2 data queues"), "{}", describe(&o));
        assert!(o.devices[0].fault.is_none(), "{}", describe(&o));
    }
}

/// A backend that cannot take sessions by message (our rng daemon offers
/// no `CRYPTO_SESSION`) is refused when the machine is built, naming the
/// protocol feature.
#[test]
fn frontend_crypto_needs_the_crypto_session_protocol_feature() {
    let test = "frontend_crypto_needs_the_crypto_session_protocol_feature";
    let dir = scratch(test);
    let daemon = ours(
        dir.path("rng.sock"),
        &[
            "-object",
            "rng-builtin,id=r0",
            "-device",
            "virtio-rng-device,rng=r0",
        ],
    );
    let args = options(
        CRYPTO,
        "",
        daemon.socket(),
        &[
            "-object",
            "cryptodev-vhost-user,id=c0,chardev=vu",
            "-device",
            "virtio-crypto-device,cryptodev=c0",
        ],
    );
    let config = monitor::options::parse(&args).expect("options");
    let err = match Machine::new(&config) {
        Ok(_) => panic!("a machine was built over an rng backend"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("CRYPTO_SESSION"), "{err}");
    assert!(err.contains("cryptodev-vhost-user"), "{err}");
}

/// The crypto backend killed after the handshake: the guest's first
/// session finds it gone, the slot reports it, the run ends.
#[test]
fn frontend_crypto_backend_killed_is_reported() {
    let test = "frontend_crypto_backend_killed_is_reported";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let mut daemon = ours(
        dir.path("crypto.sock"),
        &[
            "-object",
            "cryptodev-backend-builtin,id=c0",
            "-device",
            "virtio-crypto-device,cryptodev=c0",
        ],
    );
    let args = options(
        CRYPTO,
        "crypto.require=cbc",
        daemon.socket(),
        &[
            "-object",
            "cryptodev-vhost-user,id=c0,chardev=vu",
            "-device",
            "virtio-crypto-device,cryptodev=c0",
        ],
    );
    let mut m = machine(&args);
    daemon.kill();
    let o = m.run(Duration::from_secs(30)).expect("run");
    assert!(!o.verdict.is_pass(), "{}", describe(&o));
    let fault = o.devices[0].fault.as_deref().unwrap_or("");
    assert!(
        fault.contains("vhost-user backend gone"),
        "{}",
        describe(&o)
    );
}

/// A backend that dies after the handshake: the guest's DRIVER_OK finds
/// it gone; the slot reports it and the run ends with a verdict.
#[test]
fn frontend_backend_killed_before_driver_ok_is_reported() {
    let test = "frontend_backend_killed_before_driver_ok_is_reported";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let file = disk(&dir);
    let drive = format!("if=none,id=d0,file={},format=raw", file.display());
    let mut daemon = ours(
        dir.path("blk.sock"),
        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
    );
    let args = options(
        BLK,
        &blk_append(),
        daemon.socket(),
        &["-device", "vhost-user-blk,chardev=vu"],
    );
    let mut m = machine(&args);
    daemon.kill();
    let o = m.run(Duration::from_secs(30)).expect("run");
    assert!(!o.verdict.is_pass(), "{}", describe(&o));
    let fault = o.devices[0].fault.as_deref().unwrap_or("");
    assert!(
        fault.contains("vhost-user backend gone"),
        "{}",
        describe(&o)
    );
}

/// A backend killed while the guest's requests are in flight: the run
/// ends (no hang, no panic) and, unless the guest finished first, the slot
/// reports the dead backend.
#[test]
fn frontend_backend_killed_mid_run_is_reported() {
    let test = "frontend_backend_killed_mid_run_is_reported";
    if !kvm_or_skip(test) {
        return;
    }
    let dir = scratch(test);
    let file = dir.path("big.img");
    fs::File::create(&file)
        .and_then(|f| f.set_len(64 << 20))
        .expect("creating the disk");
    let drive = format!("if=none,id=d0,file={},format=raw", file.display());
    let mut daemon = ours(
        dir.path("blk.sock"),
        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
    );
    let args = options(
        BLK,
        "blk.test=bench blk.mode=irq blk.pattern=randwrite blk.count=1000000 blk.bytes=33554432",
        daemon.socket(),
        &["-device", "vhost-user-blk,chardev=vu"],
    );
    let mut m = machine(&args);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        daemon.kill();
    });
    let o = m.run(Duration::from_secs(60)).expect("run");
    let _ = killer.join();
    if !o.verdict.is_pass() {
        let fault = o.devices[0].fault.as_deref().unwrap_or("");
        assert!(
            fault.contains("vhost-user backend gone"),
            "{}",
            describe(&o)
        );
    }
    eprintln!("{test}: {:?}\n{}", o.verdict, describe(&o));
}
