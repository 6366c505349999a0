//! The TPM driver against a CRB in this process whose responses the test
//! writes: what it sends (TPM 2.0 Part 3's layouts), and that every
//! malformed or hostile answer is an error, never a panic or a read past
//! the buffer. (`harness/tests/tpm.rs` runs it against swtpm.)

use std::cell::{Cell, RefCell};

use guest_driver::tpm::crb::{CRB_BASE, reg};
use guest_driver::tpm::{Crb, Startup, Tpm, TpmError};
use guest_driver::wait::Polls;
use virtio_core::mmio::driver::RegisterAccess;

/// What the fake TPM answers a command with.
type Respond = Box<dyn FnMut(&[u8]) -> Vec<u8>>;

/// A one-locality CRB: START runs `respond` on the command at once,
/// unless the TPM is set to hang or to fail.
struct FakeCrb {
    buffer: RefCell<Vec<u8>>,
    start: Cell<u32>,
    idle: Cell<bool>,
    granted: Cell<bool>,
    fatal: Cell<bool>,
    hang: Cell<bool>,
    deaf: Cell<bool>,
    rsp_size: Cell<u32>,
    last_command: RefCell<Vec<u8>>,
    respond: RefCell<Respond>,
}

impl FakeCrb {
    fn new(respond: impl FnMut(&[u8]) -> Vec<u8> + 'static) -> FakeCrb {
        FakeCrb {
            buffer: RefCell::new(vec![0; 0xf80]),
            start: Cell::new(0),
            idle: Cell::new(true),
            granted: Cell::new(false),
            fatal: Cell::new(false),
            hang: Cell::new(false),
            deaf: Cell::new(false),
            rsp_size: Cell::new(0xf80),
            last_command: RefCell::new(Vec::new()),
            respond: RefCell::new(Box::new(respond)),
        }
    }
}

impl RegisterAccess for FakeCrb {
    fn read32(&self, offset: u64) -> u32 {
        match offset {
            reg::LOC_STATE => {
                if self.granted.get() {
                    (1 << 7) | (1 << 1)
                } else {
                    1 << 7
                }
            }
            reg::LOC_STS => u32::from(self.granted.get()),
            reg::CTRL_STS => u32::from(self.fatal.get()) | (u32::from(self.idle.get()) << 1),
            reg::CTRL_START => self.start.get(),
            reg::CMD_SIZE => 0xf80,
            reg::RSP_SIZE => self.rsp_size.get(),
            reg::CMD_LADDR | reg::RSP_ADDR => (CRB_BASE + reg::DATA_BUFFER) as u32,
            o if o >= reg::DATA_BUFFER => {
                let at = (o - reg::DATA_BUFFER) as usize;
                let b = self.buffer.borrow();
                u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
            }
            _ => 0,
        }
    }
    fn write32(&self, offset: u64, value: u32) {
        match offset {
            reg::LOC_CTRL if value == 1 => self.granted.set(!self.deaf.get()),
            reg::LOC_CTRL if value == 2 => self.granted.set(false),
            reg::CTRL_REQ if value == 1 => self.idle.set(false),
            reg::CTRL_REQ if value == 2 => self.idle.set(true),
            reg::CTRL_START if value == 1 => {
                if self.hang.get() {
                    self.start.set(1);
                    return;
                }
                if self.fatal.get() {
                    return;
                }
                let mut b = self.buffer.borrow_mut();
                let size = u32::from_be_bytes(b[2..6].try_into().unwrap()) as usize;
                let cmd = b[..size].to_vec();
                *self.last_command.borrow_mut() = cmd.clone();
                let r = (self.respond.borrow_mut())(&cmd);
                b[..r.len()].copy_from_slice(&r);
            }
            o if o >= reg::DATA_BUFFER => {
                let at = (o - reg::DATA_BUFFER) as usize;
                self.buffer.borrow_mut()[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => {}
        }
    }
    fn read16(&self, _offset: u64) -> u16 {
        0
    }
    fn write16(&self, _offset: u64, _value: u16) {}
    fn read8(&self, offset: u64) -> u8 {
        let at = (offset - reg::DATA_BUFFER) as usize;
        self.buffer.borrow()[at]
    }
    fn write8(&self, offset: u64, value: u8) {
        let at = (offset - reg::DATA_BUFFER) as usize;
        self.buffer.borrow_mut()[at] = value;
    }
}

/// A response: tag, size, rc 0, then `body`.
fn ok(tag: u16, body: &[u8]) -> Vec<u8> {
    let mut r = tag.to_be_bytes().to_vec();
    r.extend_from_slice(&((10 + body.len()) as u32).to_be_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(body);
    r
}

fn tpm(fake: FakeCrb) -> Tpm<FakeCrb> {
    let crb = Crb::new(fake, 0).unwrap();
    crb.request_locality(&mut Polls::new(10)).unwrap();
    crb.ready(&mut Polls::new(10)).unwrap();
    Tpm::new(crb)
}

fn polls() -> Polls {
    Polls::new(100)
}

#[test]
fn commands_are_marshalled_as_part_3_lays_them_out() {
    let mut t = tpm(FakeCrb::new(|_| ok(0x8001, &[])));
    t.startup(Startup::State, &mut polls()).unwrap();
    // TPM2_Startup(TPM_SU_STATE): tag 8001, size 12, TPM_CC 0x144, 0001.
    assert_eq!(
        *t.crb().regs().last_command.borrow(),
        [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 1]
    );
    let mut t = tpm(FakeCrb::new(|_| ok(0x8002, &[0, 0, 0, 0, 0, 0, 1, 0, 0])));
    let digest = [0xab; 32];
    t.pcr_extend(8, &digest, &mut polls()).unwrap();
    let c = t.crb().regs().last_command.borrow().clone();
    // Sessions tag, TPM_CC_PCR_Extend, the PCR handle, one password session
    // (size 9: TPM_RS_PW, empty nonce, attributes 0, empty HMAC), one
    // SHA-256 digest.
    assert_eq!(c[..2], [0x80, 0x02]);
    assert_eq!(c[6..10], [0, 0, 0x01, 0x82]);
    assert_eq!(c[10..14], [0, 0, 0, 8]);
    assert_eq!(c[14..27], [0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
    assert_eq!(c[27..33], [0, 0, 0, 1, 0, 0x0b]);
    assert_eq!(c[33..], digest);
    assert_eq!(
        u32::from_be_bytes(c[2..6].try_into().unwrap()) as usize,
        c.len()
    );
}

#[test]
fn a_pcr_read_answer_is_checked_field_by_field() {
    // pcrUpdateCounter, one selection (SHA-256, 3 bytes, PCR 8), one digest.
    let good = |select: [u8; 3], alg: u16, digest_len: u16| {
        let mut b = vec![0, 0, 0, 7, 0, 0, 0, 1];
        b.extend_from_slice(&alg.to_be_bytes());
        b.push(3);
        b.extend_from_slice(&select);
        b.extend_from_slice(&[0, 0, 0, 1]);
        b.extend_from_slice(&digest_len.to_be_bytes());
        b.extend(std::iter::repeat_n(0x5a, digest_len as usize));
        ok(0x8001, &b)
    };
    let mut t = tpm(FakeCrb::new(move |_| good([0, 1, 0], 0x0b, 32)));
    assert_eq!(t.pcr_read_sha256(8, &mut polls()).unwrap(), [0x5a; 32]);
    for (bad, why) in [
        (good([0, 2, 0], 0x0b, 32), "another PCR"),
        (good([0, 1, 0], 0x04, 32), "another bank"),
        (good([0, 1, 0], 0x0b, 20), "not 32 bytes"),
        (ok(0x8001, &[0, 0, 0, 7, 0, 0, 0, 1]), "hash"),
        (ok(0x8001, &[]), "pcrUpdateCounter"),
    ] {
        let mut t = tpm(FakeCrb::new(move |_| bad.clone()));
        match t.pcr_read_sha256(8, &mut polls()) {
            Err(TpmError::Malformed(m)) => assert!(m.contains(why), "{m} / {why}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    let mut t = tpm(FakeCrb::new(|_| ok(0x8001, &[])));
    assert!(matches!(
        t.pcr_read_sha256(24, &mut polls()),
        Err(TpmError::Argument(_))
    ));
}

#[test]
fn hostile_answers_are_errors() {
    // A response code.
    let mut t = tpm(FakeCrb::new(|_| {
        let mut r = ok(0x8001, &[]);
        r[6..10].copy_from_slice(&0x100u32.to_be_bytes());
        r
    }));
    assert_eq!(
        t.startup(Startup::Clear, &mut polls()),
        Err(TpmError::Response(0x100))
    );
    // More random bytes than asked.
    let mut t = tpm(FakeCrb::new(|_| {
        let mut b = vec![0, 40];
        b.extend([7u8; 40]);
        ok(0x8001, &b)
    }));
    let mut out = [0u8; 32];
    assert!(matches!(
        t.get_random(&mut out, &mut polls()),
        Err(TpmError::Malformed(_))
    ));
    // A random size past the response.
    let mut t = tpm(FakeCrb::new(|_| ok(0x8001, &[0xff, 0xff, 1, 2])));
    assert!(matches!(
        t.get_random(&mut out, &mut polls()),
        Err(TpmError::Malformed(_))
    ));
    // A parameterSize past the response, and an unknown tag.
    for r in [ok(0x8002, &[0, 0, 1, 0]), ok(0x1234, &[])] {
        let mut t = tpm(FakeCrb::new(move |_| r.clone()));
        assert!(matches!(
            t.nv_read(0x0150_0000, 0, &mut out, &mut polls()),
            Err(TpmError::Malformed(_))
        ));
    }
    // NV data of another size.
    let mut t = tpm(FakeCrb::new(|_| {
        ok(0x8002, &[0, 0, 0, 6, 0, 4, 1, 2, 3, 4])
    }));
    assert!(matches!(
        t.nv_read(0x0150_0000, 0, &mut out, &mut polls()),
        Err(TpmError::Malformed(_))
    ));
    // Another property than asked.
    let mut t = tpm(FakeCrb::new(|_| {
        ok(0x8001, &[0, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 1, 6, 0, 0, 0, 1])
    }));
    assert!(matches!(
        t.tpm_property(0x105, &mut polls()),
        Err(TpmError::Malformed(_))
    ));
    // A response size under a header, or over RSP_SIZE.
    for size in [4u32, 0x1000] {
        let mut t = tpm(FakeCrb::new(move |_| {
            let mut r = ok(0x8001, &[]);
            r[2..6].copy_from_slice(&size.to_be_bytes());
            r
        }));
        assert!(matches!(
            t.startup(Startup::Clear, &mut polls()),
            Err(TpmError::Malformed(_))
        ));
    }
    let fake = FakeCrb::new(|_| ok(0x8001, &[0; 100]));
    fake.rsp_size.set(64);
    let mut t = tpm(fake);
    assert!(matches!(
        t.startup(Startup::Clear, &mut polls()),
        Err(TpmError::Malformed(_))
    ));
}

#[test]
fn a_hung_or_failed_tpm_ends_the_wait() {
    let fake = FakeCrb::new(|_| ok(0x8001, &[]));
    fake.hang.set(true);
    let mut t = tpm(fake);
    assert_eq!(
        t.startup(Startup::Clear, &mut polls()),
        Err(TpmError::Timeout)
    );
    // The next command waits for the hung one rather than overwrite it.
    assert_eq!(t.self_test(true, &mut polls()), Err(TpmError::Timeout));
    assert_eq!(t.crb().regs().last_command.borrow().len(), 0);
    t.crb().regs().hang.set(false);
    t.crb().regs().start.set(0);
    t.self_test(true, &mut polls()).unwrap();
    assert_eq!(t.crb().regs().last_command.borrow()[9], 0x43);
    let fake = FakeCrb::new(|_| ok(0x8001, &[]));
    fake.fatal.set(true);
    let crb = Crb::new(fake, 0).unwrap();
    crb.request_locality(&mut polls()).unwrap();
    assert_eq!(crb.ready(&mut polls()), Err(TpmError::Fatal));
    // A locality never granted.
    let fake = FakeCrb::new(|_| ok(0x8001, &[]));
    fake.deaf.set(true);
    let crb = Crb::new(fake, 0).unwrap();
    assert_eq!(
        crb.request_locality(&mut polls()),
        Err(TpmError::LocalityNotGranted(0))
    );
    // An interface whose control area points its buffers nowhere (all
    // registers zero), and a locality that does not exist.
    struct Deaf;
    impl RegisterAccess for Deaf {
        fn read32(&self, _: u64) -> u32 {
            0
        }
        fn write32(&self, _: u64, _: u32) {}
        fn read16(&self, _: u64) -> u16 {
            0
        }
        fn write16(&self, _: u64, _: u16) {}
        fn read8(&self, _: u64) -> u8 {
            0
        }
        fn write8(&self, _: u64, _: u8) {}
    }
    assert!(matches!(Crb::new(Deaf, 2), Err(TpmError::Malformed(_))));
    assert!(matches!(Crb::new(Deaf, 5), Err(TpmError::Argument(_))));
    // A command over the buffer.
    let mut t = tpm(FakeCrb::new(|_| ok(0x8001, &[])));
    let big = [0u8; 1000];
    assert!(matches!(
        t.nv_write(0x0150_0000, 0, &big, &mut polls()),
        Err(TpmError::Argument(_))
    ));
}
