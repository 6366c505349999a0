//! Our driver under KVM: the main job's tiny guests (rng, blk, console,
//! net) drive our devices in our monitor while both driver watches look
//! on. Each device is placed under the ring watch
//! ([`super::drivers::WatchedDevice`]) and its slot's registers are tapped
//! for the register watch ([`conform::driver::DriverWatch`]): every
//! access the guest's driver makes to a slot (with inline notification,
//! so each `QueueNotify` traps in order) and every interrupt the slot
//! raises. A host thread reads each publication while the vCPU writes it
//! ([`conform::driver::publish`]).
//! What the device does is unchanged. This is the "our monitor" path of
//! the driver-side checks: registers and rings, not what the driver does
//! inside the guest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conform::Record;
use conform::driver::DriverWatch;
use conform::driver::rings::RingWatch;
use monitor::machine::{BoxedDevice, Machine, SlotWatch};
use monitor::virtio::RegisterTap;
use monitor::vm::GuestRam;

use super::drivers::{PublishHandle, WatchedDevice, le_u64};
use super::report::Run;
use super::targets::Kind;
use crate::scenarios::Workdir;

/// The target's name in reports.
pub const GUEST_DRIVER_KVM: &str = "guest-driver (ours) under KVM (tiny guests)";

/// How long one guest may run (each moves a few hundred KiB at most).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Records shared between the watch and the run that reads them.
type Sink = Arc<Mutex<Vec<Record>>>;

/// The register watch on one slot, fed by the monitor.
struct Tap(Mutex<DriverWatch>);

impl Tap {
    fn watch(&self) -> std::sync::MutexGuard<'_, DriverWatch> {
        // A panic in the watch would be a bug here; its state is still
        // worth reporting.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RegisterTap for Tap {
    fn read(&self, offset: u64, data: &[u8]) {
        self.watch().read(offset, data.len(), le_u64(data));
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.watch().write(offset, data.len(), le_u64(data));
    }
    fn interrupt(&self) {
        self.watch().interrupt();
    }
}

/// The watch on every device of one machine: the ring watch's sessions
/// go to `rings`, each slot's register watch is kept in `taps`.
#[derive(Default)]
struct Watch {
    rings: Sink,
    taps: Vec<Arc<Tap>>,
    /// The order of each publication, read from a host thread while the
    /// guest's vCPU writes it (§2.7.13.3.1).
    publish: PublishHandle,
}

impl SlotWatch for Watch {
    fn watch(
        &mut self,
        _kind: &'static str,
        device: BoxedDevice,
        mem: &GuestRam,
    ) -> (BoxedDevice, Option<Arc<dyn RegisterTap>>) {
        let tap = Arc::new(Tap(Mutex::new(DriverWatch::new(
            Some(device.device_type()),
            device.device_features(),
            device.queue_max_sizes(),
            device.config_len() as u64,
        ))));
        self.taps.push(Arc::clone(&tap));
        let sink = Arc::clone(&self.rings);
        let done: Box<dyn FnMut(&RingWatch) + Send> = Box::new(move |w: &RingWatch| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(w.records());
        });
        let watched =
            WatchedDevice::new(device, mem.clone(), done).with_publish_order(self.publish.clone());
        (Box::new(watched), Some(tap))
    }
}

/// The guest, its options and its command line for `kind`, the backend
/// files in `dir`.
fn machine_args(kind: Kind, dir: &Workdir) -> Result<Vec<String>, String> {
    let missing = |what: &str| format!("the {what} tiny guest was not built");
    let (guest, options, append) = match kind {
        Kind::Rng => (
            option_env!("GUEST_RNG").ok_or_else(|| missing("rng"))?,
            "-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0".to_string(),
            "rng.bytes=65536 rng.mode=irq".to_string(),
        ),
        Kind::Blk => {
            let img = dir.path("disk.img");
            let f = std::fs::File::create(&img).map_err(|e| format!("{}: {e}", img.display()))?;
            f.set_len(4 << 20)
                .map_err(|e| format!("{}: {e}", img.display()))?;
            (
                option_env!("GUEST_BLK").ok_or_else(|| missing("blk"))?,
                format!(
                    "-drive if=none,id=d0,file={},format=raw -device virtio-blk-device,drive=d0",
                    img.display()
                ),
                "blk.test=pattern blk.bytes=262144 blk.depth=8 blk.mode=irq".to_string(),
            )
        }
        Kind::Console => {
            let out = dir.path("console.out");
            (
                option_env!("GUEST_CONSOLE").ok_or_else(|| missing("console"))?,
                format!(
                    "-chardev file,id=c0,path={} -device virtio-serial-device,max_ports=1 \
                     -device virtconsole,chardev=c0",
                    out.display()
                ),
                "console.test=write console.bytes=16384 console.mode=irq".to_string(),
            )
        }
        Kind::Net => (
            crate::scenarios::net::net_guest().ok_or_else(|| missing("net"))?,
            "-netdev loopback,id=n0 -device virtio-net-device,netdev=n0".to_string(),
            "net.test=bench net.dir=echo net.size=1500 net.count=256 net.ms=30000".to_string(),
        ),
        Kind::Crypto => (
            option_env!("GUEST_CRYPTO").ok_or_else(|| missing("crypto"))?,
            "-object cryptodev-backend-builtin,id=c0 -device virtio-crypto-device,cryptodev=c0"
                .to_string(),
            "crypto.mode=irq crypto.require=all crypto.invsess=off".to_string(),
        ),
    };
    let mut args: Vec<String> = options.split_whitespace().map(String::from).collect();
    args.extend(["-append".into(), append, "-kernel".into(), guest.into()]);
    Ok(args)
}

/// Our driver in the tiny guest for `kind`, under our monitor, watched.
pub fn guest_driver_under_kvm(kind: Kind) -> Run {
    let run = |records, error| Run {
        target: GUEST_DRIVER_KVM.into(),
        device: kind.name().into(),
        records,
        error,
    };
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return run(vec![], Some(why));
    }
    let dir = match Workdir::new(&format!("conform-driver-kvm-{}", kind.name())) {
        Ok(d) => d,
        Err(e) => return run(vec![], Some(format!("work directory: {e}"))),
    };
    let args = match machine_args(kind, &dir) {
        Ok(a) => a,
        Err(e) => return run(vec![], Some(e)),
    };
    let config = match monitor::options::parse(&args) {
        Ok(c) => c,
        Err(e) => return run(vec![], Some(format!("options: {e}"))),
    };
    let mut watch = Watch::default();
    let outcome = Machine::watched(&config, &mut watch)
        .map_err(|e| e.to_string())
        .and_then(|mut m| {
            let o = m.run(TIMEOUT).map_err(|e| e.to_string());
            // The devices (and the ring watch's open sessions) go with
            // the machine, before the records are read.
            drop(m);
            o
        });
    let error = match &outcome {
        Ok(o) if o.verdict.is_pass() => None,
        Ok(o) => Some(format!(
            "the guest did not pass: verdict {}\n{}",
            o.verdict, o.serial
        )),
        Err(e) => Some(e.clone()),
    };
    let mut records = Vec::new();
    for tap in &watch.taps {
        let mut w = tap.watch();
        w.finish();
        records.extend(w.records());
    }
    records.extend(watch.publish.records());
    records.extend(
        watch
            .rings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned(),
    );
    run(records, error)
}

/// Our driver under KVM against each of our devices, the crypto device
/// included.
pub fn all() -> Vec<Run> {
    Kind::ALL
        .iter()
        .chain(&[Kind::Crypto])
        .map(|k| guest_driver_under_kvm(*k))
        .collect()
}
