//! Linux's virtio drivers as a target of the report (`conform run
//! --linux`): Debian's kernel (the kit `.ci/setup` fetches) boots under
//! QEMU TCG on `microvm`, QEMU's `vhost-user-rng` and `vhost-user-blk` in
//! front of our backend started with `--watch-driver`, and does what a
//! user would (reads `/dev/hwrng`; writes, reads back and discards on
//! `/dev/vda`; pings and moves TCP both ways through `eth0`, whose other
//! end is our backend's tap in a network namespace). What the ring watch
//! judged becomes the target's records.

use std::path::Path;
use std::time::{Duration, Instant};

use conform::{Outcome, Record};

use super::report::Run;
use crate::daemon::Daemon;
use crate::linux::{self, Kit, LinuxVm, Machine};
use crate::scenarios::Workdir;

/// The target's name in reports.
pub const LINUX: &str = "Linux's drivers (Debian kernel), behind our vhost-user backend";

/// The driver-side statement and check named `id`, as the checks spell
/// them (records name `'static` strings).
fn statement(id: &str) -> Option<(&'static str, &'static str)> {
    conform::driver::CHECKS.iter().find_map(|c| {
        c.statements
            .iter()
            .find(|s| **s == id)
            .map(|s| (*s, c.name))
    })
}

/// The records a `--watch-driver` file holds (JSON lines: statement,
/// outcome, detail), waiting up to 10 s for the backend to write them
/// when its session ends.
fn watched(path: &Path) -> Result<Vec<Record>, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        match std::fs::read_to_string(path) {
            Ok(t) if !t.is_empty() => break t,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(_) => return Err("the backend wrote no judgement".into()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
        let Some((statement, check)) = statement(&field("statement")) else {
            continue;
        };
        let detail = field("detail");
        let outcome = match field("outcome").as_str() {
            "pass" => Outcome::Pass,
            "fail" => Outcome::Fail(detail),
            "warn" => Outcome::Warn(detail),
            "not-applicable" => Outcome::NotApplicable(detail),
            _ => Outcome::NotObservable(detail),
        };
        out.push(Record {
            statement,
            check,
            outcome,
        });
    }
    Ok(out)
}

/// What one boot needs besides our backend: QEMU's arguments for the
/// vhost-user frontend (its chardev is `vu`), and what must happen once
/// the backend is up (it returns what must live until the boot ends).
struct Frontend<'a> {
    args: Vec<String>,
    prepare: &'a dyn Fn() -> Result<Box<dyn std::any::Any>, String>,
}

/// A frontend that is one `-device` on chardev `vu`, nothing to prepare.
fn device(frontend: &str) -> Frontend<'static> {
    Frontend {
        args: vec!["-device".into(), format!("{frontend},chardev=vu")],
        prepare: &|| Ok(Box::new(())),
    }
}

/// One boot: our backend for `device` (its options) behind QEMU's
/// `frontend`, Linux loading `module` and running `plan`, whose checks
/// named `expected` must pass.
fn one(
    kit: &Kit,
    device: &str,
    options: &[String],
    frontend: Frontend<'_>,
    module: &str,
    plan: &str,
    expected: &[&str],
) -> Run {
    let run = |records, error| Run {
        target: LINUX.into(),
        device: device.into(),
        records,
        error,
    };
    let result = (|| -> Result<Vec<Record>, String> {
        let dir = Workdir::new(&format!("conform-linux-{device}"))
            .map_err(|e| format!("scratch directory: {e}"))?;
        let watch = dir.path("driver-watch.jsonl");
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut args = vec!["--watch-driver".to_string(), watch.display().to_string()];
        args.extend(options.iter().cloned());
        let sock = dir.path(&format!("{device}.sock"));
        let mut d = Daemon::ours(&exe, sock.clone(), &args, false)?;
        let _prepared = (frontend.prepare)()?;
        let mut vm = LinuxVm::new(Machine::Microvm);
        vm.args = vec![
            "-chardev".into(),
            format!("socket,id=vu,path={}", sock.display()),
        ];
        vm.args.extend(frontend.args);
        let booted = linux::boot(kit, &vm, &dir.path(""), &["virtio_mmio", module], plan)?;
        booted
            .check(expected)
            .map_err(|e| format!("{e}\n{}", booted.run.describe()))?;
        d.check_alive()?;
        watched(&watch)
    })();
    match result {
        Ok(records) => run(records, None),
        Err(e) => run(Vec::new(), Some(e)),
    }
}

/// Linux's entropy and block drivers, one boot each; a run with the
/// reason where Linux cannot boot here.
pub fn runs() -> Vec<Run> {
    let kit = match linux::unavailable() {
        None => Kit::find(),
        Some(why) => Err(why),
    };
    let kit = match kit {
        Ok(k) => k,
        Err(why) => {
            return vec![Run {
                target: LINUX.into(),
                device: "rng, blk".into(),
                records: Vec::new(),
                error: Some(why),
            }];
        }
    };
    let rng = one(
        &kit,
        "rng",
        &[
            "-object".into(),
            "rng-random,id=r0,filename=/dev/urandom".into(),
            "-device".into(),
            "virtio-rng-device,rng=r0".into(),
        ],
        device("vhost-user-rng"),
        "virtio_rng",
        "wait_for /dev/hwrng 20\n\
         check rng-read sh -c 'dd if=/dev/hwrng of=/tmp/r bs=4096 count=64 iflag=fullblock 2>/dev/null; [ $(wc -c < /tmp/r) = 262144 ]'\n",
        &["rng-read"],
    );
    let disk = std::env::temp_dir().join(format!("conform-linux-{}.img", std::process::id()));
    let blk = match std::fs::File::create(&disk).and_then(|f| f.set_len(16 << 20)) {
        Err(e) => Run {
            target: LINUX.into(),
            device: "blk".into(),
            records: Vec::new(),
            error: Some(format!("{}: {e}", disk.display())),
        },
        Ok(()) => one(
            &kit,
            "blk",
            &[
                "-drive".into(),
                format!("file={},if=none,id=d0,format=raw", disk.display()),
                "-device".into(),
                "virtio-blk-device,drive=d0".into(),
            ],
            device("vhost-user-blk"),
            "virtio_blk",
            "wait_for /dev/vda 30\n\
             check blk-write vtio write /dev/vda 0 1048576 5\n\
             check blk-read vtio check /dev/vda 0 1048576 5\n\
             check blk-discard blkdiscard -o 1048576 -l 1048576 /dev/vda\n",
            &["blk-write", "blk-read", "blk-discard"],
        ),
    };
    let _ = std::fs::remove_file(&disk);
    vec![rng, blk, net(&kit)]
}

/// The host's end of the tap, and the port of the pattern server there.
const HOST_IP: &str = "10.0.2.2";
const PORT: u16 = 5001;

/// Linux's network driver: our backend's tap moved into a network
/// namespace with an address and a TCP pattern server; Linux pings it and
/// moves 1 MiB each way (every byte checked by the receiver).
fn net(kit: &Kit) -> Run {
    if let Some(why) = crate::netns::unavailable() {
        return Run {
            target: LINUX.into(),
            device: "net".into(),
            records: Vec::new(),
            error: Some(why),
        };
    }
    let ifname = format!("cfl{}", std::process::id() % 100_000);
    let prepare = || -> Result<Box<dyn std::any::Any>, String> {
        let ns = crate::netns::Netns::new("cf")?;
        ns.adopt(&ifname, &format!("{HOST_IP}/24"), 1500)?;
        let listener = ns
            .spawn(|| {
                std::net::TcpListener::bind((HOST_IP, PORT)).map_err(|e| format!("bind: {e}"))
            })
            .join()
            .map_err(|_| "the namespace thread panicked".to_string())??;
        let server =
            linux::PatternServer::start(listener).map_err(|e| format!("pattern server: {e}"))?;
        Ok(Box::new((server, ns)))
    };
    let mib = 1 << 20;
    one(
        kit,
        "net",
        &[
            "-netdev".into(),
            format!("tap,id=n0,ifname={ifname}"),
            "-device".into(),
            "virtio-net-device,netdev=n0".into(),
        ],
        Frontend {
            args: vec![
                "-netdev".into(),
                "vhost-user,id=n0,chardev=vu".into(),
                "-device".into(),
                "virtio-net-device,netdev=n0".into(),
            ],
            prepare: &prepare,
        },
        "virtio_net",
        &format!(
            "wait_for /sys/class/net/eth0 30
             ip link set eth0 up
             ip addr add 10.0.2.15/24 dev eth0
             check net-ping ping -c 3 -W 5 {HOST_IP}
             check net-send vtio tcp {HOST_IP} {PORT} send {mib} 11
             check net-recv vtio tcp {HOST_IP} {PORT} recv {mib} 12
"
        ),
        &["net-ping", "net-send", "net-recv"],
    )
}
