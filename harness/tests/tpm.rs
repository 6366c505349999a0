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
