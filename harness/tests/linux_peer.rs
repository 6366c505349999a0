//! Linux's own virtio drivers against our devices: Debian's stock cloud
//! kernel (downloaded by `.ci/setup`, never built here) boots under QEMU
//! TCG (Linux cannot run under `kvm_pvm`) on both transports QEMU offers
//! for vhost-user, `microvm` (virtio-mmio) and `q35` (virtio-pci), with
//! QEMU's `vhost-user-*` frontends in front of `virtio-harness vhost-user`
//! started with default options, exactly as the README shows. The guest's
//! init runs each check the way a user would (busybox and a small static
//! helper, `harness/linux/vtio.c`) and prints a verdict line per check;
//! the host checks what it can see from outside (the disk image, the
//! backend's counters).
//!
//! Skips, saying why, without QEMU or the kit, unless
//! `HARNESS_REQUIRE_QEMU=1` (CI where `/dev/kvm` exists) makes that a
//! failure.

use std::path::{Path, PathBuf};

use harness::linux::{self, Kit, LinuxRun, LinuxVm, Machine};
use harness::scenarios::Workdir;
use harness::vhost_user::Daemon;

/// The modules every boot loads (both transports' drivers).
const TRANSPORTS: [&str; 2] = ["virtio_mmio", "virtio_pci"];

fn scratch(test: &str) -> Workdir {
    Workdir::new(test).unwrap_or_else(|e| panic!("{test}: scratch directory: {e}"))
}

/// `virtio-harness vhost-user` serving `options` on `socket`.
fn daemon(socket: PathBuf, options: &[&str]) -> Daemon {
    Daemon::ours(
        Path::new(env!("CARGO_BIN_EXE_virtio-harness")),
        socket,
        options,
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// QEMU's arguments for one vhost-user device on `socket` (chardev id
/// `id`): `device` is the device (or netdev) option that names it.
fn vhost_user(id: &str, socket: &Path, device: &[String]) -> Vec<String> {
    let mut a = vec![
        "-chardev".to_string(),
        format!("socket,id={id},path={}", socket.display()),
    ];
    a.extend(device.iter().cloned());
    a
}

/// Boots and returns the run; panics with the whole run if `expected`
/// checks did not all pass.
fn boot_and_check(
    kit: &Kit,
    vm: &LinuxVm,
    dir: &Workdir,
    modules: &[&str],
    plan: &str,
    expected: &[&str],
) -> LinuxRun {
    let mut all: Vec<&str> = TRANSPORTS.to_vec();
    all.extend_from_slice(modules);
    let run = linux::boot(kit, vm, &dir.path(""), &all, plan).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = run.check(expected) {
        panic!("{} on {}: {e}", expected.join(", "), vm.machine.name());
    }
    run
}

/// The rng plan: 1 MiB from `/dev/hwrng` (through the hw_random core, as a
/// user reads it), which must be exactly 1 MiB and incompressible.
const RNG_PLAN: &str = r#"
wait_for /dev/hwrng 20
say "rng current: $(cat /sys/class/misc/hw_random/rng_current)"
check rng-read sh -c 'dd if=/dev/hwrng of=/tmp/r bs=4096 count=256 iflag=fullblock 2>/dev/null; n=$(wc -c < /tmp/r); z=$(gzip -c /tmp/r | wc -c); echo "$n bytes, $z gzipped"; [ "$n" = 1048576 ] && [ "$z" -gt 1000000 ]'
"#;

/// virtio-rng (§5.4) through Linux's `virtio-rng` and `/dev/hwrng`, on
/// both transports, with QEMU's `vhost-user-rng` in front of our backend
/// (on virtio-mmio QEMU lets Linux take QueueNumMax 1024; on virtio-pci
/// the ring is QEMU's 4 entries).
#[test]
fn linux_reads_a_mebibyte_from_our_rng() {
    let test = "linux_reads_a_mebibyte_from_our_rng";
    let Some(kit) = linux::linux_or_skip(test) else {
        return;
    };
    for machine in Machine::ALL {
        let dir = scratch(test);
        let mut d = daemon(
            dir.path("rng.sock"),
            &[
                "-object",
                "rng-random,id=r0,filename=/dev/urandom",
                "-device",
                "virtio-rng-device,rng=r0",
            ],
        );
        let mut vm = LinuxVm::new(machine);
        vm.args = vhost_user(
            "vu",
            d.socket(),
            &["-device".into(), machine.device("vhost-user-rng") + ",chardev=vu"],
        );
        let run = boot_and_check(&kit, &vm, &dir, &["virtio_rng"], RNG_PLAN, &["rng-read"]);
        assert_eq!(
            run.said("rng current: "),
            Some("virtio_rng.0"),
            "{}",
            run.run.describe()
        );
        d.check_alive().unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{test}: {}: {} in {:?}",
            machine.name(),
            run.detail("rng-read").unwrap_or_default(),
            run.run.elapsed
        );
    }
}
