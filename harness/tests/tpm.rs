//! The TPM end to end in this process: `guest_driver::tpm` (the CRB
//! transport and the commands) against the monitor's `tpm_crb` device in
//! front of a real swtpm (`backends::tpm::emulator`), its registers
//! reached through the same MMIO read and write calls the vCPU loop makes.
//! Also the restart rules over one state directory: after
//! Shutdown(STATE) and Startup(STATE) the PCRs are those from before;
//! after Startup(CLEAR) they are reset; the NV index survives both.
//! (`guests.rs` runs the same under KVM from the tiny `tpm` guest.)

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::tpm::emulator::Emulator;
use guest_driver::tpm::command::RC_INITIALIZE;
use guest_driver::tpm::{Crb, Startup, Tpm, TpmError};
use harness::scenarios::Workdir;
use harness::swtpm::{self, Swtpm};
use monitor::bus::MmioDevice;
use monitor::tpm_crb::{CrbHandle, TpmCrb};
use virtio_core::mmio::driver::RegisterAccess;

/// The device behind guest-driver's register access (shared by the views
/// of several localities).
#[derive(Clone)]
struct Regs(Rc<RefCell<TpmCrb>>);

impl Regs {
    fn read(&self, off: u64, n: usize) -> u64 {
        let mut b = [0u8; 8];
        self.0.borrow_mut().read(off, &mut b[..n]);
        u64::from_le_bytes(b)
    }
    fn write(&self, off: u64, v: u64, n: usize) {
        self.0.borrow_mut().write(off, &v.to_le_bytes()[..n]);
    }
}

impl RegisterAccess for Regs {
    fn read32(&self, offset: u64) -> u32 {
        self.read(offset, 4) as u32
    }
    fn write32(&self, offset: u64, value: u32) {
        self.write(offset, value.into(), 4)
    }
    fn read16(&self, offset: u64) -> u16 {
        self.read(offset, 2) as u16
    }
    fn write16(&self, offset: u64, value: u16) {
        self.write(offset, value.into(), 2)
    }
    fn read8(&self, offset: u64) -> u8 {
        self.read(offset, 1) as u8
    }
    fn write8(&self, offset: u64, value: u8) {
        self.write(offset, value.into(), 1)
    }
}

/// A bounded wait that sleeps a little between looks.
fn patience() -> impl FnMut() -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    move || {
        std::thread::sleep(Duration::from_micros(50));
        Instant::now() < end
    }
}

/// Our CRB in front of the swtpm at `s`, as locality `locality`, granted
/// and ready.
fn open(s: &Swtpm, locality: u8) -> (Tpm<Regs>, CrbHandle) {
    let backend = Arc::new(Emulator::connect(&s.ctrl).expect("connect to swtpm"));
    let crb = TpmCrb::new(backend).expect("CRB in front of swtpm");
    let handle = crb.handle();
    (at(&Regs(Rc::new(RefCell::new(crb))), locality), handle)
}

/// A view of `regs` as `locality`, granted and ready.
fn at(regs: &Regs, locality: u8) -> Tpm<Regs> {
    let crb = Crb::new(regs.clone(), locality).unwrap();
    crb.request_locality(&mut patience()).unwrap();
    crb.ready(&mut patience()).unwrap();
    Tpm::new(crb)
}

fn measure(tpm: &mut Tpm<Regs>) {
    for b in 0..swtpm::BLOCKS {
        let d = swtpm::sha256(&swtpm::block(b));
        tpm.pcr_extend(swtpm::PCR_BLOCKS, &d, &mut patience())
            .unwrap();
    }
    tpm.pcr_extend(swtpm::PCR_TAG, &swtpm::sha256(swtpm::TAG), &mut patience())
        .unwrap();
}

fn pcrs(tpm: &mut Tpm<Regs>) -> ([u8; 32], [u8; 32]) {
    (
        tpm.pcr_read_sha256(swtpm::PCR_BLOCKS, &mut patience())
            .unwrap(),
        tpm.pcr_read_sha256(swtpm::PCR_TAG, &mut patience())
            .unwrap(),
    )
}

fn nv(tpm: &mut Tpm<Regs>) -> [u8; 32] {
    let mut out = [0u8; 32];
    tpm.nv_read(swtpm::NV_INDEX, 0, &mut out, &mut patience())
        .unwrap();
    out
}

#[test]
fn pcrs_and_nv_follow_the_startup_type_across_restarts_on_one_state() {
    let test = "pcrs_and_nv_follow_the_startup_type_across_restarts_on_one_state";
    if !swtpm::swtpm_or_skip(test) {
        return;
    }
    let dir = Workdir::new(test).unwrap();
    let state = dir.path("state");
    let ctrl = dir.path("ctrl.sock");
    let expected = swtpm::expected_pcrs();

    // First boot: Startup(CLEAR), measure, define and write NV, then an
    // orderly Shutdown(STATE).
    let mut s = Swtpm::start(&state, &ctrl).unwrap();
    {
        let (mut tpm, handle) = open(&s, 0);
        tpm.startup(Startup::Clear, &mut patience()).unwrap();
        assert_eq!(
            tpm.startup(Startup::Clear, &mut patience()),
            Err(TpmError::Response(RC_INITIALIZE))
        );
        tpm.self_test(true, &mut patience()).unwrap();
        let mut r = [0u8; 32];
        assert_eq!(tpm.get_random(&mut r, &mut patience()).unwrap(), 32);
        let m = tpm
            .tpm_property(guest_driver::tpm::command::PT_MANUFACTURER, &mut patience())
            .unwrap();
        // libtpms reports "IBM".
        assert_eq!(&m.to_be_bytes()[..3], b"IBM", "{m:#x}");
        assert_eq!(pcrs(&mut tpm), ([0; 32], [0; 32]));
        measure(&mut tpm);
        assert_eq!(pcrs(&mut tpm), expected);
        tpm.nv_define(swtpm::NV_INDEX, 32, &mut patience()).unwrap();
        tpm.nv_write(swtpm::NV_INDEX, 0, swtpm::NV_DATA, &mut patience())
            .unwrap();
        assert_eq!(&nv(&mut tpm), swtpm::NV_DATA);
        tpm.shutdown(Startup::State, &mut patience()).unwrap();
        assert!(!handle.is_fatal());
        assert!(handle.stats().commands >= 14, "{:?}", handle.stats());
        // Dropping the device shuts swtpm down (CMD_SHUTDOWN), as QEMU.
    }
    assert!(
        s.wait_exit(Duration::from_secs(10)).unwrap().is_some(),
        "swtpm still running after its device went away"
    );
    drop(s);

    // A TPM Resume: Startup(STATE) keeps the PCRs.
    let s = Swtpm::start(&state, &ctrl).unwrap();
    {
        let (mut tpm, _) = open(&s, 0);
        tpm.startup(Startup::State, &mut patience()).unwrap();
        assert_eq!(pcrs(&mut tpm), expected);
        assert_eq!(&nv(&mut tpm), swtpm::NV_DATA);
        tpm.shutdown(Startup::State, &mut patience()).unwrap();
    }
    drop(s);

    // A TPM Reset: Startup(CLEAR) zeroes them; NV stays.
    let s = Swtpm::start(&state, &ctrl).unwrap();
    {
        let (mut tpm, _) = open(&s, 0);
        tpm.startup(Startup::Clear, &mut patience()).unwrap();
        assert_eq!(pcrs(&mut tpm), ([0; 32], [0; 32]));
        assert_eq!(&nv(&mut tpm), swtpm::NV_DATA);
        tpm.nv_undefine(swtpm::NV_INDEX, &mut patience()).unwrap();
        assert!(matches!(
            tpm.nv_read(swtpm::NV_INDEX, 0, &mut [0; 4], &mut patience()),
            Err(TpmError::Response(_))
        ));
    }
}

/// Localities reach swtpm: PCR 17 (a dynamic-launch PCR, PC Client
/// profile) takes an extend from locality 4 and refuses one from locality
/// 0 (TPM_RC_LOCALITY), which only works if the CRB's active locality
/// travels with each command; PCR 23 takes one from any.
#[test]
fn localities_reach_swtpm_and_it_enforces_pcr_localities() {
    let test = "localities_reach_swtpm_and_it_enforces_pcr_localities";
    if !swtpm::swtpm_or_skip(test) {
        return;
    }
    let dir = Workdir::new(test).unwrap();
    let s = Swtpm::start(&dir.path("state"), &dir.path("ctrl.sock")).unwrap();
    let backend = Arc::new(Emulator::connect(&s.ctrl).unwrap());
    let regs = Regs(Rc::new(RefCell::new(TpmCrb::new(backend).unwrap())));
    let mut zero = at(&regs, 0);
    zero.startup(Startup::Clear, &mut patience()).unwrap();
    let d = swtpm::sha256(b"dynamic launch");
    assert_eq!(
        zero.pcr_extend(17, &d, &mut patience()),
        Err(TpmError::Response(0x907))
    );
    zero.pcr_extend(23, &d, &mut patience()).unwrap();
    zero.crb().relinquish();
    let mut four = at(&regs, 4);
    assert_eq!(four.crb().active_locality(), Some(4));
    let before = four.pcr_read_sha256(17, &mut patience()).unwrap();
    four.pcr_extend(17, &d, &mut patience()).unwrap();
    let after = four.pcr_read_sha256(17, &mut patience()).unwrap();
    // PCR 17 starts all ones after Startup(CLEAR) without a dynamic launch.
    assert_eq!(before, [0xff; 32]);
    assert_eq!(after, swtpm::extended_from(before, &[d]));
    four.crb().relinquish();
    // Locality 0 again: still refused.
    let mut zero = at(&regs, 0);
    assert_eq!(
        zero.pcr_extend(17, &d, &mut patience()),
        Err(TpmError::Response(0x907))
    );
}

// ---- The tiny `tpm` guest under KVM: our monitor, and QEMU 7.2. ----

/// The `tpm` guest's ELF.
fn tpm_guest() -> &'static str {
    option_env!("GUEST_TPM").unwrap_or(concat!(env!("GUEST_DIR"), "/tpm"))
}

/// The guest's `tpm: <what> <hex>` line.
fn line<'a>(serial: &'a str, what: &str) -> Option<&'a str> {
    let prefix = format!("tpm: {what} ");
    serial.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Our monitor's options for the guest with `append`, its TPM on swtpm's
/// control socket `ctrl`.
fn our_options(ctrl: &std::path::Path, append: &str) -> Vec<String> {
    let mut a: Vec<String> = ["-m", "64M", "-kernel", tpm_guest(), "-append", append]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(swtpm::tpm_options(ctrl));
    a
}

/// Boots the guest under our monitor on a fresh swtpm over `state`; the
/// serial output, the verdict, and whether swtpm exited after (the
/// device's CMD_SHUTDOWN).
fn boot_ours(state: &std::path::Path, append: &str) -> (String, monitor::vm::Verdict) {
    let ctrl = state.with_extension("ctrl");
    let mut s = Swtpm::start(state, &ctrl).unwrap();
    let config = monitor::options::parse(&our_options(&ctrl, append)).unwrap();
    let out = {
        let mut m = monitor::Machine::new(&config).unwrap();
        assert!(m.tpm.is_some());
        m.run(Duration::from_secs(60)).unwrap()
    };
    assert!(
        s.wait_exit(Duration::from_secs(10)).unwrap().is_some(),
        "swtpm still running after our monitor went away"
    );
    (out.serial, out.verdict)
}

/// Boots the guest under QEMU (`-M microvm`, KVM) with `-device tpm-crb`
/// on a fresh swtpm over `state`.
fn boot_qemu(state: &std::path::Path, append: &str) -> harness::qemu::QemuRun {
    let ctrl = state.with_extension("ctrl");
    let _s = Swtpm::start(state, &ctrl).unwrap();
    harness::qemu::Qemu::microvm(tpm_guest())
        .append(append)
        .args(swtpm::tpm_options(&ctrl))
        .timeout(Duration::from_secs(60))
        .run()
        .unwrap()
}

/// Under KVM, over three monitors on one state directory: the first boot
/// (locality arbitration checked, then Startup(CLEAR), measurements, an
/// NV index, Shutdown(STATE)) prints the PCR values computed on the host;
/// a Startup(STATE) boot prints the same; a Startup(CLEAR) boot prints
/// zeros; the NV index reads back in both.
#[test]
fn the_tpm_guest_measures_and_resumes_under_our_monitor() {
    let test = "the_tpm_guest_measures_and_resumes_under_our_monitor";
    if !monitor::vm::kvm_or_skip(test) || !swtpm::swtpm_or_skip(test) {
        return;
    }
    let dir = Workdir::new(test).unwrap();
    let state = dir.path("state");
    let (pcr8, pcr9) = swtpm::expected_pcrs();
    let nv = hex(swtpm::NV_DATA);

    let (serial, verdict) = boot_ours(&state, "tpm.arbitration=on tpm.nv=define");
    assert!(verdict.is_pass(), "{verdict}\n{serial}");
    assert!(serial.contains("tpm: arbitration ok"), "{serial}");
    // The data buffer is the RAM page the control area names.
    assert!(serial.contains("bytes at 0xfed45000"), "{serial}");
    assert!(serial.contains("five localities"), "{serial}");
    assert_eq!(line(&serial, "pcr8"), Some(hex(&pcr8).as_str()), "{serial}");
    assert_eq!(line(&serial, "pcr9"), Some(hex(&pcr9).as_str()), "{serial}");
    assert_eq!(line(&serial, "nv"), Some(nv.as_str()));

    let (serial, verdict) = boot_ours(&state, "tpm.startup=state tpm.measure=off tpm.nv=read");
    assert!(verdict.is_pass(), "{verdict}\n{serial}");
    assert_eq!(line(&serial, "pcr8"), Some(hex(&pcr8).as_str()), "{serial}");
    assert_eq!(line(&serial, "pcr9"), Some(hex(&pcr9).as_str()), "{serial}");
    assert_eq!(line(&serial, "nv"), Some(nv.as_str()));

    let (serial, verdict) = boot_ours(&state, "tpm.measure=off tpm.nv=read");
    assert!(verdict.is_pass(), "{verdict}\n{serial}");
    let zeros = hex(&[0; 32]);
    assert_eq!(line(&serial, "pcr8"), Some(zeros.as_str()), "{serial}");
    assert_eq!(line(&serial, "pcr9"), Some(zeros.as_str()), "{serial}");
    assert_eq!(line(&serial, "nv"), Some(nv.as_str()));
}

/// The same guest under QEMU 7.2's `tpm-crb` and under ours, each on its
/// own copy of one state directory: the same PCR values (the host's) and
/// NV contents on a first boot, and again on a Startup(STATE) boot from
/// copies of the state that first boot left. Locality 0 only: QEMU's CRB
/// has no other (its interface id says so, and the guest prints it).
#[test]
fn qemu_tpm_crb_and_ours_agree_on_copies_of_one_state() {
    let test = "qemu_tpm_crb_and_ours_agree_on_copies_of_one_state";
    if !monitor::vm::kvm_or_skip(test)
        || !swtpm::swtpm_or_skip(test)
        || !harness::qemu::qemu_or_skip(test)
    {
        return;
    }
    let dir = Workdir::new(test).unwrap();
    let (pcr8, pcr9) = swtpm::expected_pcrs();
    let nv = hex(swtpm::NV_DATA);
    let first = "tpm.nv=define";
    let resume = "tpm.startup=state tpm.measure=off tpm.nv=read";

    let ours = dir.path("ours");
    let qemu = dir.path("qemu");
    let (serial, verdict) = boot_ours(&ours, first);
    assert!(verdict.is_pass(), "{verdict}\n{serial}");
    let q = boot_qemu(&qemu, first);
    q.check_pass().unwrap();
    assert!(q.serial.contains("only locality 0 of"), "{}", q.serial);
    // QEMU's buffer is at offset 0x80 of the page; the driver follows it.
    assert!(q.serial.contains("bytes at 0xfed40080"), "{}", q.serial);
    for what in ["pcr8", "pcr9", "nv"] {
        assert!(line(&serial, what).is_some(), "ours printed no {what}");
        assert_eq!(line(&serial, what), line(&q.serial, what), "{what}");
    }
    assert_eq!(line(&q.serial, "pcr8"), Some(hex(&pcr8).as_str()));
    assert_eq!(line(&q.serial, "pcr9"), Some(hex(&pcr9).as_str()));
    assert_eq!(line(&q.serial, "nv"), Some(nv.as_str()));

    // Resume from copies of the state ours left, one per monitor.
    let (a, b) = (dir.path("resume-ours"), dir.path("resume-qemu"));
    swtpm::copy_state(&ours, &a).unwrap();
    swtpm::copy_state(&ours, &b).unwrap();
    let (serial, verdict) = boot_ours(&a, resume);
    assert!(verdict.is_pass(), "{verdict}\n{serial}");
    let q = boot_qemu(&b, resume);
    q.check_pass().unwrap();
    for what in ["pcr8", "pcr9", "nv"] {
        assert!(line(&serial, what).is_some(), "ours printed no {what}");
        assert_eq!(line(&serial, what), line(&q.serial, what), "{what}");
    }
    assert_eq!(line(&q.serial, "pcr8"), Some(hex(&pcr8).as_str()));
    assert_eq!(line(&q.serial, "pcr9"), Some(hex(&pcr9).as_str()));
    assert_eq!(line(&q.serial, "nv"), Some(nv.as_str()));
}

/// swtpm killed while the guest runs commands: the CRB sets its
/// fatal-error bit and clears START, the guest's driver reports it and
/// fails, and the monitor runs on to the guest's verdict.
#[test]
fn a_swtpm_killed_under_a_running_guest_is_a_fatal_error_it_sees() {
    let test = "a_swtpm_killed_under_a_running_guest_is_a_fatal_error_it_sees";
    if !monitor::vm::kvm_or_skip(test) || !swtpm::swtpm_or_skip(test) {
        return;
    }
    let dir = Workdir::new(test).unwrap();
    let state = dir.path("state");
    let ctrl = dir.path("ctrl.sock");
    let s = std::sync::Mutex::new(Swtpm::start(&state, &ctrl).unwrap());
    let config = monitor::options::parse(&our_options(&ctrl, "tpm.bench=1000000")).unwrap();
    let mut m = monitor::Machine::new(&config).unwrap();
    let handle = m.tpm.clone().unwrap();
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Once commands flow, kill swtpm.
            let end = Instant::now() + Duration::from_secs(30);
            while handle.stats().commands < 50 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            s.lock().unwrap().kill().unwrap();
        });
        m.run(Duration::from_secs(60)).unwrap()
    });
    let monitor::vm::Verdict::Fail(msg) = &out.verdict else {
        panic!("{}\n{}", out.verdict, out.serial);
    };
    assert!(msg.contains("fatal error"), "{msg}");
    assert!(handle.is_fatal());
    assert_eq!(handle.stats().fatal, 1);
}
