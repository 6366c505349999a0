//! QEMU 7.2 as the vhost-user frontend of our backend (QEMU
//! `docs/interop/vhost-user.rst`): `virtio-harness vhost-user` serves one
//! of our devices on a unix socket, and QEMU `microvm` (KVM, modern
//! virtio-mmio, §4.2.2, guest RAM on a shared memfd) boots our tiny guests
//! against it through `vhost-user-rng`, `vhost-user-blk` and `-netdev
//! vhost-user` with `virtio-net-device`. The guests' checks are the same
//! as against QEMU's own devices (`qemu_devices.rs`, `qemu_blk.rs`); the
//! blk test also checks the disk file on the host, and the rng test boots
//! twice against one daemon (it serves the next frontend after QEMU
//! exits); another rng test stops and continues the VM over the HMP
//! monitor while the guest reads (GET_VRING_BASE / SET_VRING_BASE at the
//! index we report).
//!
//! Skips, saying why, without `qemu-system-x86_64` or `/dev/kvm`, unless
//! `HARNESS_REQUIRE_QEMU=1` makes that a failure.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::daemon::Daemon;
use harness::qemu::{Qemu, QemuRun as Run, qemu_or_skip as qemu_ready};
use harness::scenarios::{Workdir, number_before};

/// Longest a guest may run before it is killed.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Guest RAM (also the memfd's size).
const RAM: &str = "64M";

const RNG: &str = env!("GUEST_RNG");
const BLK: &str = env!("GUEST_BLK");

/// The `net` guest's ELF.
fn net_guest() -> &'static str {
    option_env!("GUEST_NET").unwrap_or(concat!(env!("GUEST_DIR"), "/net"))
}

fn scratch(test: &str) -> Workdir {
    Workdir::new(test).unwrap_or_else(|e| panic!("{test}: scratch directory: {e}"))
}

/// `virtio-harness vhost-user` serving `options` on `socket` (its log,
/// every request with `verbose`, beside the socket); killed on drop.
fn daemon(socket: PathBuf, options: &[&str], verbose: bool) -> Daemon {
    Daemon::ours(
        Path::new(env!("CARGO_BIN_EXE_virtio-harness")),
        socket,
        options,
        verbose,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// QEMU's arguments for guest RAM the backend can map and a vhost-user
/// chardev on `socket`, then `device`.
fn vhost_args(socket: &Path, device: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-machine".into(),
        "memory-backend=mem".into(),
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={RAM},share=on"),
        "-chardev".into(),
        format!("socket,id=vu,path={}", socket.display()),
    ];
    a.extend(device.iter().map(|s| s.to_string()));
    a
}

fn boot(kernel: &str, append: &str, args: &[String]) -> Run {
    Qemu::microvm(kernel)
        .memory(RAM)
        .modern()
        .append(append)
        .args(args)
        .timeout(TIMEOUT)
        .run()
        .unwrap_or_else(|e| panic!("cannot run qemu: {e}"))
}

fn assert_pass(run: &Run, summary: &str) {
    if let Err(e) = run.check_pass_with_summary(summary) {
        panic!("{e}");
    }
}

/// virtio-rng (§5.4) on `rng-deterministic`, two QEMU runs against one
/// daemon: in interrupt mode the guest checks every byte against the
/// seed's SplitMix64 stream; then in polling mode (the backend's stream
/// goes on where the first run left it, so no seed check) it gets its
/// bytes without a single interrupt.
#[test]
fn qemu_vhost_user_rng_matches_the_seed_twice() {
    let test = "qemu_vhost_user_rng_matches_the_seed_twice";
    if !qemu_ready(test) {
        return;
    }
    let dir = scratch(test);
    let seed = 0x5eed_0000_0000_0042_u64;
    let mut daemon = daemon(
        dir.path("rng.sock"),
        &[
            "-object",
            &format!("rng-deterministic,id=r0,seed={seed}"),
            "-device",
            "virtio-rng-device,rng=r0",
        ],
        false,
    );
    let args = vhost_args(daemon.socket(), &["-device", "vhost-user-rng,chardev=vu"]);
    for (round, mode) in ["irq", "poll"].iter().enumerate() {
        let run = boot(
            RNG,
            &if round == 0 {
                format!("rng.mode={mode} rng.seed={seed} rng.bytes=262144")
            } else {
                format!("rng.mode={mode} rng.bytes=262144")
            },
            &args,
        );
        assert_pass(&run, "rng: 262144 bytes in ");
        if round == 0 {
            assert!(
                run.serial.contains("bytes match the SplitMix64 stream"),
                "{}",
                run.describe()
            );
        } else {
            assert_eq!(
                number_before(run.summary(), "interrupts"),
                Some(0),
                "{}",
                run.describe()
            );
        }
        assert!(daemon.alive(), "the daemon died after run {round}");
        eprintln!("{test}: {mode}: {} in {:?}", run.summary(), run.elapsed);
    }
}

/// virtio-blk (§5.2) on a raw file: the `pattern` scenario writes,
/// flushes and reads back at depth 8; the file is then checked byte for
/// byte on the host (the 8 bytes at offset `o` are `o ^ seed`).
#[test]
fn qemu_vhost_user_blk_pattern_reaches_the_file() {
    let test = "qemu_vhost_user_blk_pattern_reaches_the_file";
    if !qemu_ready(test) {
        return;
    }
    const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
    const BYTES: u64 = 512 << 10;
    const OFFSET: u64 = 4096;
    let dir = scratch(test);
    let file = dir.path("disk.img");
    fs::File::create(&file)
        .and_then(|f| f.set_len(16 << 20))
        .expect("creating the disk");
    let drive = format!("if=none,id=d0,file={},format=raw", file.display());
    let daemon = daemon(
        dir.path("blk.sock"),
        &["-drive", &drive, "-device", "virtio-blk-device,drive=d0"],
        false,
    );
    let args = vhost_args(daemon.socket(), &["-device", "vhost-user-blk,chardev=vu"]);
    let run = boot(
        BLK,
        &format!("blk.test=pattern blk.mode=irq blk.depth=8 blk.bytes={BYTES} blk.offset={OFFSET}"),
        &args,
    );
    assert_pass(&run, &format!("blk: pattern: {} bytes, ", 2 * BYTES));
    let data = fs::read(&file).expect("reading the disk");
    for (i, w) in data.chunks_exact(8).enumerate() {
        let o = i as u64 * 8;
        let want = if (OFFSET..OFFSET + BYTES).contains(&o) {
            (o ^ SEED).to_le_bytes()
        } else {
            [0; 8]
        };
        assert_eq!(w, want, "disk byte {o:#x}\n{}", run.describe());
    }
    eprintln!("{test}: {} in {:?}", run.summary(), run.elapsed);
}

/// virtio-net (§5.1) on our `loopback` netdev: the `bench` guest's echo
/// sends raw frames and counts each one back.
#[test]
fn qemu_vhost_user_net_echoes_frames() {
    let test = "qemu_vhost_user_net_echoes_frames";
    if !qemu_ready(test) {
        return;
    }
    let dir = scratch(test);
    let daemon = daemon(
        dir.path("net.sock"),
        &[
            "-netdev",
            "loopback,id=n0",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
        false,
    );
    let args = vhost_args(
        daemon.socket(),
        &[
            "-netdev",
            "vhost-user,id=n0,chardev=vu",
            "-device",
            "virtio-net-device,netdev=n0",
        ],
    );
    let run = boot(
        net_guest(),
        "net.test=bench net.dir=echo net.count=1000 net.size=200 net.ms=60000",
        &args,
    );
    assert_pass(&run, "net: bench echo 1000 frames 200000 bytes ");
    eprintln!("{test}: {} in {:?}", run.summary(), run.elapsed);
}

/// virtio-rng (§5.4) with the VM stopped and continued over QEMU's HMP
/// monitor again and again while the guest reads 512 KiB: every `stop` makes
/// QEMU stop the ring (`GET_VRING_BASE`) and every `cont` start it again at
/// the index we reported (`SET_VRING_BASE`, vhost-user.rst "Ring states").
/// A wrong position would replay chains (the driver sees more used
/// entries than it made available) or lose one (the guest waits for
/// ever); the guest checks every byte against the seed, so no request was
/// served twice or skipped.
#[test]
fn qemu_vhost_user_rng_survives_stop_and_cont() {
    let test = "qemu_vhost_user_rng_survives_stop_and_cont";
    if !qemu_ready(test) {
        return;
    }
    let dir = scratch(test);
    let seed = 0x5eed_0000_0000_0007_u64;
    let mut daemon = daemon(
        dir.path("rng.sock"),
        &[
            "-object",
            &format!("rng-deterministic,id=r0,seed={seed}"),
            "-device",
            "virtio-rng-device,rng=r0",
        ],
        true,
    );
    let log = daemon.log().to_path_buf();
    let monitor = dir.path("monitor.sock");
    let mut args = vhost_args(daemon.socket(), &["-device", "vhost-user-rng,chardev=vu"]);
    args.extend([
        "-monitor".to_string(),
        format!("unix:{},server=on,wait=off", monitor.display()),
    ]);
    let mut qemu = Qemu::microvm(RNG)
        .memory(RAM)
        .modern()
        .append(format!("rng.mode=irq rng.seed={seed} rng.bytes=524288"))
        .args(&args)
        .timeout(TIMEOUT)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu: {e}"));
    let mut mon = qemu
        .connect_unix(&monitor)
        .unwrap_or_else(|e| panic!("the HMP monitor: {e}"));
    // The monitor's echo and prompts are read and dropped on the side.
    let mut sink = mon.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while matches!(sink.read(&mut b), Ok(n) if n > 0) {}
    });
    let done = Arc::new(AtomicBool::new(false));
    let cycler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut cycles = 0u32;
            while !done.load(Ordering::Relaxed) && cycles < 50 {
                if mon.write_all(b"stop\n").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
                if mon.write_all(b"cont\n").is_err() {
                    break;
                }
                cycles += 1;
                std::thread::sleep(Duration::from_millis(15));
            }
            // Never leave the VM stopped.
            let _ = mon.write_all(b"cont\n");
            cycles
        })
    };
    let run = qemu.wait().expect("waiting for qemu");
    done.store(true, Ordering::Relaxed);
    let cycles = cycler.join().unwrap_or(0);
    assert_pass(&run, "rng: 524288 bytes in ");
    assert!(
        run.serial.contains("bytes match the SplitMix64 stream"),
        "{}",
        run.describe()
    );
    assert!(daemon.alive(), "the daemon died");
    let log = fs::read_to_string(&log).unwrap_or_default();
    let gets = log.matches("GetVringBase").count();
    let resumed = log
        .lines()
        .filter(|l| l.contains("SetVringBase") && !l.contains("num: 0 "))
        .count();
    eprintln!(
        "{test}: {} in {:?}; {cycles} stop/cont cycles, {gets} GET_VRING_BASE, {resumed} non-zero SET_VRING_BASE",
        run.summary(),
        run.elapsed
    );
    assert!(
        resumed > 0,
        "no ring was resumed at a non-zero base ({cycles} cycles)\n{log}"
    );
}

const CRYPTO: &str = env!("GUEST_CRYPTO");

/// virtio-crypto (§5.9) with QEMU 7.2's `cryptodev-vhost-user`: QEMU keeps
/// the control queue and makes each session on our backend with
/// `CREATE_CRYPTO_SESSION` (its 7.2 layout), our device serves the data
/// queue. The crypto guest's AES-128-CBC vectors (SP 800-38A, each way in
/// a session of its own) pass through it, twice against one daemon (in
/// interrupt and in polling mode); the daemon counts the sessions made and
/// closed by message. What QEMU advertises beyond AES-CBC (SHA-1, the
/// MAC service) it refuses itself; the guest reports it.
#[test]
fn qemu_cryptodev_vhost_user_makes_sessions_on_our_backend() {
    let test = "qemu_cryptodev_vhost_user_makes_sessions_on_our_backend";
    if !qemu_ready(test) {
        return;
    }
    let dir = scratch(test);
    let mut daemon = daemon(
        dir.path("crypto.sock"),
        &[
            "-object",
            "cryptodev-backend-builtin,id=c0",
            "-device",
            "virtio-crypto-device,cryptodev=c0",
        ],
        false,
    );
    let args = vhost_args(
        daemon.socket(),
        &[
            "-object",
            "cryptodev-vhost-user,id=cv,chardev=vu",
            "-device",
            "virtio-crypto-device,cryptodev=cv",
        ],
    );
    for mode in ["irq", "poll"] {
        let run = boot(
            CRYPTO,
            &format!("crypto.mode={mode} crypto.require=cbc"),
            &args,
        );
        assert_pass(&run, "crypto: 1 vectors passed (AES-128-CBC");
        assert!(daemon.alive(), "the daemon died ({mode})");
    }
    // Each run: an encrypt and a decrypt session, made and closed by
    // message.
    let log = daemon.output_when("sessions_closed=", Duration::from_secs(10));
    assert!(
        log.contains("sessions_created=2") && log.contains("sessions_closed=2"),
        "{log}"
    );
}
