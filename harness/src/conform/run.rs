//! Runs the device checks against the targets: our devices in this
//! process, any vhost-user backend given by socket, and the installed
//! peers (our `virtio-harness vhost-user`, `qemu-storage-daemon`, rust-vmm's
//! `vhost-device-rng` and `vhost-device-console`), started here.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::report::Run;
use super::targets::{
    Kind, ours_in_process, ours_read_only_blk, run_device_checks, run_device_checks_each,
    vhost_user_backed,
};
use crate::daemon::Daemon;
use crate::scenarios::Workdir;

/// The in-process target's name in reports.
pub const OURS_IN_PROCESS: &str = "ours, in process";
/// Our vhost-user backend's name in reports.
pub const OURS_VHOST_USER: &str = "ours over vhost-user";

/// Our devices in this process, one run per device type, and a
/// read-only block device.
pub fn in_process() -> Vec<Run> {
    type Target = (&'static str, Result<Box<dyn conform::Bus>, String>);
    let mut buses: Vec<Target> = Kind::ALL
        .into_iter()
        .map(|kind| (kind.name(), ours_in_process(kind)))
        .collect();
    buses.push((READ_ONLY_BLK, ours_read_only_blk()));
    buses.push((Kind::Crypto.name(), ours_in_process(Kind::Crypto)));
    buses
        .into_iter()
        .map(|(device, bus)| match bus {
            Ok(bus) => Run {
                target: OURS_IN_PROCESS.into(),
                device: device.into(),
                records: run_device_checks(bus.as_ref()),
                error: None,
            },
            Err(e) => Run {
                target: OURS_IN_PROCESS.into(),
                device: device.into(),
                records: vec![],
                error: Some(e),
            },
        })
        .collect()
}

/// The device name of the read-only block device's run.
pub const READ_ONLY_BLK: &str = "blk, read-only";

/// The vhost-user backend on `socket` (a device of `kind`), named
/// `target`.
/// Each check gets a connection of its own.
pub fn over_vhost_user(target: &str, kind: Kind, socket: &Path) -> Run {
    over_vhost_user_backed(target, kind, socket, None)
}

/// [`over_vhost_user`] for a block backend on the image `backing` (the
/// stable-write check looks at what the host holds unwritten of it).
pub fn over_vhost_user_backed(
    target: &str,
    kind: Kind,
    socket: &Path,
    backing: Option<&Path>,
) -> Run {
    let connect = || vhost_user_backed(socket, kind, backing);
    // A backend that cannot be reached at all is an error of the run, not
    // a failure of every statement.
    if let Err(e) = connect() {
        return Run {
            target: target.into(),
            device: kind.name().into(),
            records: vec![],
            error: Some(e),
        };
    }
    Run {
        target: target.into(),
        device: kind.name().into(),
        records: run_device_checks_each(&connect),
        error: None,
    }
}

fn home_bin(name: &str) -> PathBuf {
    std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".cargo/bin").join(name))
        .filter(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

/// A 1 MiB image of zeros.
fn image(path: &Path) -> Result<(), String> {
    std::fs::write(path, vec![0u8; 1 << 20]).map_err(|e| format!("{}: {e}", path.display()))
}

fn workdir(runs: &mut Vec<Run>) -> Option<Workdir> {
    match Workdir::new("conform-peers") {
        Ok(d) => Some(d),
        Err(e) => {
            runs.push(Run {
                target: "peers".into(),
                device: "-".into(),
                records: vec![],
                error: Some(format!("work directory: {e}")),
            });
            None
        }
    }
}

/// Our `virtio-harness vhost-user` (the binary `exe`) serving each device
/// type in turn, checked through our frontend.
pub fn peers_ours(exe: &Path) -> Vec<Run> {
    let mut runs = Vec::new();
    let Some(dir) = workdir(&mut runs) else {
        return runs;
    };
    let img = dir.path("disk.img");
    let img_s = img.display().to_string();
    if let Err(e) = image(&img) {
        runs.push(Run {
            target: OURS_VHOST_USER.into(),
            device: "blk".into(),
            records: vec![],
            error: Some(e),
        });
    }
    let mut ours: Vec<(Kind, Vec<String>)> = vec![
        (
            Kind::Rng,
            vec![
                "-object".into(),
                "rng-builtin,id=r0".into(),
                "-device".into(),
                "virtio-rng-device,rng=r0".into(),
            ],
        ),
        (
            Kind::Blk,
            vec![
                "-drive".into(),
                format!("if=none,id=d0,file={img_s},format=raw"),
                "-device".into(),
                "virtio-blk-device,drive=d0".into(),
            ],
        ),
        (
            Kind::Console,
            vec![
                "-chardev".into(),
                "null,id=c0".into(),
                "-device".into(),
                "virtio-serial-device".into(),
                "-device".into(),
                "virtconsole,chardev=c0".into(),
            ],
        ),
        (
            Kind::Net,
            vec![
                "-netdev".into(),
                "loopback,id=n0".into(),
                "-device".into(),
                "virtio-net-device,netdev=n0".into(),
            ],
        ),
    ];
    // The same disk read-only.
    ours.push((
        Kind::Blk,
        vec![
            "-drive".into(),
            format!("if=none,id=d0,file={img_s},format=raw,readonly=on"),
            "-device".into(),
            "virtio-blk-device,drive=d0".into(),
        ],
    ));
    for (i, (kind, options)) in ours.into_iter().enumerate() {
        let read_only = options.iter().any(|o| o.contains("readonly=on"));
        let sock = dir.path(&format!("ours-{i}-{}.sock", kind.name()));
        let backing = (kind == Kind::Blk && !read_only).then_some(img.as_path());
        let mut run = match Daemon::ours(exe, sock.clone(), &options, false) {
            Ok(_d) => over_vhost_user_backed(OURS_VHOST_USER, kind, &sock, backing),
            Err(e) => failed(OURS_VHOST_USER, kind, e),
        };
        if read_only {
            run.device = READ_ONLY_BLK.into();
        }
        runs.push(run);
    }
    runs
}

/// Our backend ([`peers_ours`]) and each installed peer, checked; a peer
/// that cannot start is a run with its error.
pub fn peers(exe: &Path) -> Vec<Run> {
    let mut runs = peers_ours(exe);
    let Some(dir) = workdir(&mut runs) else {
        return runs;
    };
    // qemu-storage-daemon on its own copy of the image, writable and
    // read-only.
    runs.push(qsd(&dir, true));
    runs.push(qsd(&dir, false));
    // vhost-device-rng listens on `<socket-path>0`.
    let sock = dir.path("vdr.sock");
    let mut cmd = Command::new(home_bin("vhost-device-rng"));
    cmd.arg("--socket-path").arg(&sock);
    let listening = PathBuf::from(format!("{}0", sock.display()));
    match Daemon::start(
        "vhost-device-rng",
        cmd,
        listening.clone(),
        dir.path("vdr.log"),
    ) {
        Ok(_d) => runs.push(over_vhost_user("vhost-device-rng", Kind::Rng, &listening)),
        Err(e) => runs.push(failed("vhost-device-rng", Kind::Rng, e)),
    }
    // vhost-device-console with its network backend: a reader drains the
    // TCP port so the backend is never blocked on output.
    let sock = dir.path("vdc.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    let mut cmd = Command::new(home_bin("vhost-device-console"));
    cmd.arg("--socket-path")
        .arg(&sock)
        .arg("--backend=network")
        .arg(format!("--tcp-port={port}"));
    let listening = PathBuf::from(format!("{}0", sock.display()));
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                let mut b = [0u8; 4096];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    match Daemon::start(
        "vhost-device-console",
        cmd,
        listening.clone(),
        dir.path("vdc.log"),
    ) {
        Ok(_d) => runs.push(over_vhost_user(
            "vhost-device-console",
            Kind::Console,
            &listening,
        )),
        Err(e) => runs.push(failed("vhost-device-console", Kind::Console, e)),
    }
    runs
}

/// `qemu-storage-daemon` exporting its own 1 MiB image in `dir`
/// (`writable` or read-only) over vhost-user-blk, checked through our
/// frontend; the stable-write check sees the writable image.
pub fn qsd(dir: &Workdir, writable: bool) -> Run {
    let (writable, device) = if writable {
        ("on", "blk")
    } else {
        ("off", READ_ONLY_BLK)
    };
    let img2 = dir.path(&format!("qsd-{writable}.img"));
    let sock = dir.path(&format!("qsd-{writable}.sock"));
    let mut cmd = Command::new("qemu-storage-daemon");
    cmd.args([
        "--blockdev".to_string(),
        format!("driver=file,node-name=f0,filename={}", img2.display()),
        "--export".into(),
        format!(
            "type=vhost-user-blk,id=e0,node-name=f0,writable={writable},addr.type=unix,addr.path={}",
            sock.display()
        ),
    ]);
    let started = image(&img2).and_then(|()| {
        Daemon::start(
            "qemu-storage-daemon",
            cmd,
            sock.clone(),
            dir.path(&format!("qsd-{writable}.log")),
        )
    });
    let mut run = match started {
        Ok(_d) => over_vhost_user_backed(
            "qemu-storage-daemon",
            Kind::Blk,
            &sock,
            (writable == "on").then_some(img2.as_path()),
        ),
        Err(e) => failed("qemu-storage-daemon", Kind::Blk, e),
    };
    run.device = device.into();
    run
}

fn failed(target: &str, kind: Kind, e: String) -> Run {
    Run {
        target: target.into(),
        device: kind.name().into(),
        records: vec![],
        error: Some(e),
    }
}
