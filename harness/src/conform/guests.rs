//! The device checks from inside a guest: the `conform` tiny guest runs
//! `conform::device::CHECKS` against every virtio-mmio device of a
//! machine and prints its records on COM1, here read back into runs.
//! Machines: our monitor under KVM with our devices, and QEMU `microvm`
//! with QEMU's own devices on both virtio-mmio transports (legacy, QEMU's
//! default, and `force-legacy=false`). Through a guest the registers and
//! rings are the device model's own (`conform::Path::Guest`).

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use conform::{Outcome, Record};
use monitor::machine::Machine;

use super::report::Run;
use super::run::READ_ONLY_BLK;
use crate::qemu::{Qemu, Transport};
use crate::scenarios::Workdir;

/// Our monitor's target name in reports.
pub const OURS_KVM: &str = "ours under KVM (tiny guest)";
/// QEMU's target name, legacy transport.
pub const QEMU_LEGACY: &str = "QEMU 7.2 microvm, legacy virtio-mmio (tiny guest)";
/// QEMU's target name, modern transport.
pub const QEMU_MODERN: &str = "QEMU 7.2 microvm, virtio-mmio version 2 (tiny guest)";

/// How long one machine may run the checks (four or five devices, a few
/// seconds each under KVM; a few `Expect` waits time out on purpose).
const TIMEOUT: Duration = Duration::from_secs(120);

/// The guest, if the build script built it.
fn guest() -> Result<&'static str, String> {
    option_env!("GUEST_CONFORM").ok_or_else(|| "the conform tiny guest was not built".into())
}

/// The catalogue id and check name as the checks spell them (static), for
/// a statement and check read back from the guest.
fn known(statement: &str, check: &str) -> Option<(&'static str, &'static str)> {
    conform::device::CHECKS
        .iter()
        .filter(|c| c.name == check)
        .find_map(|c| {
            c.statements
                .iter()
                .find(|s| **s == statement)
                .map(|s| (*s, c.name))
        })
}

/// The device name of a DeviceID.
fn device_name(id: u32) -> String {
    match id {
        1 => "net".into(),
        2 => "blk".into(),
        3 => "console".into(),
        4 => "rng".into(),
        20 => "crypto".into(),
        n => format!("device type {n}"),
    }
}

/// The runs in a guest's COM1 output: one per device, in slot order.
pub fn parse(target: &str, serial: &str) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for line in serial.lines() {
        if let Some(rest) = line.strip_prefix("conform: device ") {
            // `<base> id <n> version <v>`
            let id = rest
                .split_whitespace()
                .nth(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            runs.push(Run {
                target: target.into(),
                device: device_name(id),
                records: vec![],
                error: None,
            });
        } else if let Some(rest) = line.strip_prefix("conform-record: ") {
            let mut f = rest.splitn(4, '\t');
            let (Some(statement), Some(check), Some(outcome)) = (f.next(), f.next(), f.next())
            else {
                continue;
            };
            let detail = f.next().unwrap_or("").to_string();
            let Some(run) = runs.last_mut() else {
                continue;
            };
            let Some((statement, check)) = known(statement, check) else {
                run.error = Some(format!(
                    "the guest reported {statement} for check {check}, which this harness does not know (a stale guest?)"
                ));
                continue;
            };
            let outcome = match outcome {
                "pass" => Outcome::Pass,
                "fail" => Outcome::Fail(detail),
                "warn" => Outcome::Warn(detail),
                "not-applicable" => Outcome::NotApplicable(detail),
                _ => Outcome::NotObservable(detail),
            };
            run.records.push(Record {
                statement,
                check,
                outcome,
            });
        }
    }
    // A block device that offers VIRTIO_BLK_F_RO is the read-only one.
    for run in runs.iter_mut().filter(|r| r.device == "blk") {
        let ro = run.records.iter().any(|r| {
            r.statement == "device:blk/device-operation#2"
                && !matches!(r.outcome, Outcome::NotApplicable(_))
        });
        if ro {
            run.device = READ_ONLY_BLK.into();
        }
    }
    runs
}

/// A run that could not happen, with why.
fn failed(target: &str, e: String) -> Vec<Run> {
    vec![Run {
        target: target.into(),
        device: "all".into(),
        records: vec![],
        error: Some(e),
    }]
}

/// The runs of a finished machine, or its failure.
fn runs_of(target: &str, serial: &str, verdict_ok: bool, describe: &str) -> Vec<Run> {
    let runs = parse(target, serial);
    if runs.is_empty() || !verdict_ok || !serial.contains("device(s) checked") {
        return failed(
            target,
            format!("the conform guest did not finish\n{describe}"),
        );
    }
    runs
}

/// Two 1 MiB raw images in `dir`, the second for the read-only device.
fn images(dir: &Workdir) -> Result<(String, String), String> {
    let mut out = Vec::new();
    for name in ["disk.img", "disk-ro.img"] {
        let p = dir.path(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(p.display().to_string());
    }
    Ok((out[0].clone(), out[1].clone()))
}

/// Our monitor under KVM with our rng, blk (writable and read-only),
/// console and net (a loopback netdev: what is sent comes back).
pub fn ours_under_kvm() -> Vec<Run> {
    let guest = match guest() {
        Ok(g) => g,
        Err(e) => return failed(OURS_KVM, e),
    };
    let dir = match Workdir::new("conform-kvm") {
        Ok(d) => d,
        Err(e) => return failed(OURS_KVM, format!("work directory: {e}")),
    };
    let (img, ro) = match images(&dir) {
        Ok(i) => i,
        Err(e) => return failed(OURS_KVM, e),
    };
    let args: Vec<String> = [
        "-object",
        "rng-builtin,id=r0",
        "-device",
        "virtio-rng-device,rng=r0",
        "-drive",
        &format!("if=none,id=d0,file={img},format=raw"),
        "-device",
        "virtio-blk-device,drive=d0",
        "-drive",
        &format!("if=none,id=d1,file={ro},format=raw,readonly=on"),
        "-device",
        "virtio-blk-device,drive=d1",
        "-chardev",
        "null,id=c0",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=c0",
        "-netdev",
        "loopback,id=n0",
        "-device",
        "virtio-net-device,netdev=n0",
        "-object",
        "cryptodev-backend-builtin,id=cr0",
        "-device",
        "virtio-crypto-device,cryptodev=cr0",
        "-kernel",
        guest,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let outcome = monitor::options::parse(&args)
        .map_err(|e| format!("options: {e}"))
        .and_then(|config| Machine::new(&config).map_err(|e| e.to_string()))
        .and_then(|mut m| m.run(TIMEOUT).map_err(|e| e.to_string()));
    match outcome {
        Ok(o) => runs_of(
            OURS_KVM,
            &o.serial,
            o.verdict.is_pass(),
            &format!("verdict {}\n{}", o.verdict, o.serial),
        ),
        Err(e) => failed(OURS_KVM, e),
    }
}

/// A UDP port free on the loopback address (for a QEMU socket netdev that
/// sends to itself).
fn free_udp_port() -> Result<u16, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("a UDP port: {e}"))?;
    s.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("a UDP port: {e}"))
}

/// QEMU `microvm` with its own rng, blk (writable and read-only), console
/// and net (a UDP socket netdev sending to itself, so what is sent comes
/// back) on `transport`.
pub fn qemu(transport: Transport) -> Vec<Run> {
    let target = match transport {
        Transport::Legacy => QEMU_LEGACY,
        Transport::Modern => QEMU_MODERN,
    };
    if let Some(why) = crate::qemu::unavailable() {
        return failed(target, why);
    }
    let guest = match guest() {
        Ok(g) => g,
        Err(e) => return failed(target, e),
    };
    let dir = match Workdir::new(&format!("conform-qemu-{transport}")) {
        Ok(d) => d,
        Err(e) => return failed(target, format!("work directory: {e}")),
    };
    let (img, ro) = match images(&dir) {
        Ok(i) => i,
        Err(e) => return failed(target, e),
    };
    let port = match free_udp_port() {
        Ok(p) => p,
        Err(e) => return failed(target, e),
    };
    let run = Qemu::microvm(guest)
        .memory("128M")
        .timeout(TIMEOUT)
        .transport(transport)
        .args([
            "-object".to_string(),
            "rng-random,id=r0,filename=/dev/urandom".into(),
            "-device".into(),
            "virtio-rng-device,rng=r0".into(),
            "-drive".into(),
            format!("if=none,id=d0,file={img},format=raw"),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
            "-drive".into(),
            format!("if=none,id=d1,file={ro},format=raw,readonly=on"),
            "-device".into(),
            "virtio-blk-device,drive=d1".into(),
            "-chardev".into(),
            "null,id=c0".into(),
            "-device".into(),
            "virtio-serial-device".into(),
            "-device".into(),
            "virtconsole,chardev=c0".into(),
            "-netdev".into(),
            format!("socket,id=n0,udp=127.0.0.1:{port},localaddr=127.0.0.1:{port}"),
            "-device".into(),
            "virtio-net-device,netdev=n0".into(),
        ])
        // virtio-crypto has no legacy interface (§5.9 is modern only).
        .args(if transport == Transport::Modern {
            vec![
                "-object".to_string(),
                "cryptodev-backend-builtin,id=cr0".into(),
                "-device".into(),
                "virtio-crypto-device,cryptodev=cr0".into(),
            ]
        } else {
            vec![]
        })
        .run();
    match run {
        Ok(r) => runs_of(target, &r.serial, r.passed(), &r.describe()),
        Err(e) => failed(target, format!("QEMU: {e}")),
    }
}

/// The device name of [`qemu_legacy_multiqueue`]'s run.
pub const NET_MULTIQUEUE: &str = "net (2 queue pairs, tap)";

/// QEMU `microvm` on the legacy transport with a multiqueue network
/// device (`mq=on`, two queue pairs, a tap QEMU creates and removes; no
/// frame is sent): only the checks that need multiqueue run
/// (`conform.checks=`), since the tap echoes nothing. Needs
/// CAP_NET_ADMIN for the tap.
pub fn qemu_legacy_multiqueue() -> Vec<Run> {
    let target = QEMU_LEGACY;
    let failed = |why: String| {
        let mut r = failed(target, why);
        for x in &mut r {
            x.device = NET_MULTIQUEUE.into();
        }
        r
    };
    if let Some(why) = crate::qemu::unavailable() {
        return failed(why);
    }
    if let Some(why) = crate::netns::unavailable() {
        return failed(format!("a tap device: {why}"));
    }
    let guest = match guest() {
        Ok(g) => g,
        Err(e) => return failed(e),
    };
    // At most 11 characters (IFNAMSIZ allows 15), one per process.
    let tap = format!("cfmq{}", std::process::id());
    let run = Qemu::microvm(guest)
        .memory("128M")
        .timeout(TIMEOUT)
        .transport(Transport::Legacy)
        .append("conform.checks=legacy-net-mq")
        .args([
            "-netdev".to_string(),
            format!("tap,id=n0,ifname={tap},script=no,downscript=no,queues=2"),
            "-device".into(),
            "virtio-net-device,netdev=n0,mq=on".into(),
        ])
        .run();
    let mut runs = match run {
        Ok(r) => runs_of(target, &r.serial, r.passed(), &r.describe()),
        Err(e) => failed(format!("QEMU: {e}")),
    };
    // Named for this device, a failure too (not the whole target's).
    for r in runs
        .iter_mut()
        .filter(|r| r.device == "net" || r.device == "all")
    {
        r.device = NET_MULTIQUEUE.into();
    }
    runs
}

/// Every machine: ours under KVM, QEMU on both transports (and on the
/// legacy one a multiqueue network device).
pub fn all() -> Vec<Run> {
    let mut runs = ours_under_kvm();
    for t in Transport::ALL {
        runs.extend(qemu(t));
    }
    runs.extend(qemu_legacy_multiqueue());
    runs
}

/// Whether `path` looks like a built guest (for tests that skip
/// otherwise).
pub fn guest_built() -> bool {
    guest().is_ok_and(|g| Path::new(g).exists())
}
