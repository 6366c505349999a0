//! The CRB register file against a backend in this process that records
//! what reaches it, can hold a command until released, and can fail.
//! The section names are the PTP specification's (6.5.3, CRB Interface).

use super::*;
use std::io;
use std::sync::Condvar;
use std::time::{Duration, Instant};

/// A TPM that answers each command with its own parameters after a
/// success header.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<(u8, Vec<u8>)>>,
    /// While true, a command waits.
    hold: Mutex<bool>,
    released: Condvar,
    fail: AtomicBool,
    cancels: Mutex<u32>,
    resets: Mutex<Vec<u8>>,
    startups: Mutex<u32>,
}

impl TpmBackend for Fake {
    fn startup(&self, buffer_size: u32) -> Result<u32, TpmError> {
        *self.startups.lock().unwrap() += 1;
        Ok(buffer_size.min(2048))
    }
    fn command(
        &self,
        locality: u8,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, TpmError> {
        self.seen.lock().unwrap().push((locality, command.to_vec()));
        let mut held = self.hold.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(TpmError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "swtpm went away",
            )));
        }
        let n = command.len();
        response[..2].copy_from_slice(&[0x80, 0x01]);
        response[2..6].copy_from_slice(&(n as u32).to_be_bytes());
        response[6..10].fill(0);
        response[10..n].copy_from_slice(&command[10..]);
        Ok(n)
    }
    fn cancel(&self) -> Result<(), TpmError> {
        *self.cancels.lock().unwrap() += 1;
        Ok(())
    }
    fn buffer_size(&self) -> u32 {
        2048
    }
    fn established(&self) -> Result<bool, TpmError> {
        Ok(true)
    }
    fn reset_established(&self, locality: u8) -> Result<(), TpmError> {
        self.resets.lock().unwrap().push(locality);
        Ok(())
    }
    fn stop(&self) -> Result<(), TpmError> {
        Ok(())
    }
}

impl Fake {
    fn set_hold(&self, on: bool) {
        *self.hold.lock().unwrap() = on;
        self.released.notify_all();
    }
}

fn rig() -> (TpmCrb, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let crb = TpmCrb::new(fake.clone()).unwrap();
    (crb, fake)
}

fn at(locality: u8, off: u64) -> u64 {
    u64::from(locality) * LOCALITY_STRIDE + off
}

fn rd(crb: &mut TpmCrb, locality: u8, off: u64) -> u32 {
    let mut b = [0u8; 4];
    crb.read(at(locality, off), &mut b);
    u32::from_le_bytes(b)
}

fn wr(crb: &mut TpmCrb, locality: u8, off: u64, v: u32) {
    crb.write(at(locality, off), &v.to_le_bytes());
}

/// A command of `len` bytes: a header, then a counting pattern.
fn command(len: usize) -> Vec<u8> {
    let mut c: Vec<u8> = (0..len).map(|i| i as u8).collect();
    c[..2].copy_from_slice(&[0x80, 0x01]);
    c[2..6].copy_from_slice(&(len as u32).to_be_bytes());
    c
}

/// Writes `cmd` to the buffer 8 bytes at a time (the last piece smaller).
fn put(crb: &mut TpmCrb, locality: u8, cmd: &[u8]) {
    for (i, chunk) in cmd.chunks(8).enumerate() {
        crb.write(at(locality, reg::DATA_BUFFER + 8 * i as u64), chunk);
    }
}

fn get(crb: &mut TpmCrb, locality: u8, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(4).enumerate() {
        crb.read(at(locality, reg::DATA_BUFFER + 4 * i as u64), chunk);
    }
    out
}

/// Polls START until it clears (bounded, so a bug fails rather than
/// hangs; no timing is asserted).
fn wait_done(crb: &mut TpmCrb, locality: u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rd(crb, locality, reg::CTRL_START) & ctrl::INVOKE != 0 {
        assert!(Instant::now() < deadline, "START never cleared");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ready(crb: &mut TpmCrb, locality: u8) {
    wr(crb, locality, reg::LOC_CTRL, loc_ctrl::REQUEST_ACCESS);
    wr(crb, locality, reg::CTRL_REQ, ctrl::CMD_READY);
}

#[test]
fn reset_values_name_a_five_locality_crb_ptp_6_5_3() {
    let (mut crb, fake) = rig();
    assert_eq!(*fake.startups.lock().unwrap(), 1);
    for l in 0..LOCALITIES {
        // Established (the fake says so): tpmEstablishment reads 0.
        assert_eq!(rd(&mut crb, l, reg::LOC_STATE), loc_state::REG_VALID);
        assert_eq!(rd(&mut crb, l, reg::LOC_STS), 0);
        assert_eq!(rd(&mut crb, l, reg::INTF_ID), INTF_ID_VALUE);
        assert_eq!(rd(&mut crb, l, reg::INTF_ID) & 0xf, 1, "CRB active");
        assert_eq!((rd(&mut crb, l, reg::INTF_ID) >> 8) & 1, 1, "CapLocality");
        assert_eq!(rd(&mut crb, l, reg::CTRL_STS), ctrl::STS_IDLE);
        // What the backend takes (2048 for this one), at most the buffer.
        assert_eq!(rd(&mut crb, l, reg::CMD_SIZE), 2048);
        assert_eq!(rd(&mut crb, l, reg::RSP_SIZE), 2048);
        let buf = (CRB_BASE + u64::from(l) * LOCALITY_STRIDE + reg::DATA_BUFFER) as u32;
        assert_eq!(rd(&mut crb, l, reg::CMD_LADDR), buf);
        assert_eq!(rd(&mut crb, l, reg::RSP_ADDR), buf);
        assert_eq!(rd(&mut crb, l, reg::RSP_ADDR + 4), 0);
    }
    // An 8-byte read of the interface id gives both halves; a byte read
    // gives its byte.
    let mut b = [0u8; 8];
    crb.read(reg::INTF_ID, &mut b);
    assert_eq!(
        u64::from_le_bytes(b),
        u64::from(INTF_ID_HI_VALUE) << 32 | u64::from(INTF_ID_VALUE)
    );
    let mut one = [0u8; 1];
    crb.read(reg::LOC_STATE, &mut one);
    assert_eq!(one[0], loc_state::REG_VALID as u8);
}

#[test]
fn localities_are_requested_relinquished_and_seized_ptp_6_5_3() {
    let (mut crb, _fake) = rig();
    let active = |crb: &mut TpmCrb| {
        let v = rd(crb, 0, reg::LOC_STATE);
        (v & loc_state::LOC_ASSIGNED != 0).then_some((v >> loc_state::ACTIVE_SHIFT) & 7)
    };
    assert_eq!(active(&mut crb), None);
    wr(&mut crb, 0, reg::LOC_CTRL, loc_ctrl::REQUEST_ACCESS);
    assert_eq!(active(&mut crb), Some(0));
    assert_eq!(rd(&mut crb, 0, reg::LOC_STS), loc_sts::GRANTED);
    // A second request waits for the first to let go.
    wr(&mut crb, 2, reg::LOC_CTRL, loc_ctrl::REQUEST_ACCESS);
    wr(&mut crb, 1, reg::LOC_CTRL, loc_ctrl::REQUEST_ACCESS);
    assert_eq!(rd(&mut crb, 2, reg::LOC_STS), 0);
    assert_eq!(active(&mut crb), Some(0));
    // Relinquished: the highest one waiting gets it.
    wr(&mut crb, 0, reg::LOC_CTRL, loc_ctrl::RELINQUISH);
    assert_eq!(active(&mut crb), Some(2));
    assert_eq!(rd(&mut crb, 0, reg::LOC_STS), 0);
    assert_eq!(rd(&mut crb, 2, reg::LOC_STS), loc_sts::GRANTED);
    // A higher locality seizes; the loser is told.
    wr(&mut crb, 4, reg::LOC_CTRL, loc_ctrl::SEIZE);
    assert_eq!(active(&mut crb), Some(4));
    assert_eq!(rd(&mut crb, 2, reg::LOC_STS), loc_sts::BEEN_SEIZED);
    // A lower one cannot.
    wr(&mut crb, 3, reg::LOC_CTRL, loc_ctrl::SEIZE);
    assert_eq!(active(&mut crb), Some(4));
    assert_eq!(crb.handle().stats().out_of_state, 1);
    // Locality 1 still waits, and gets it when 4 lets go.
    wr(&mut crb, 4, reg::LOC_CTRL, loc_ctrl::RELINQUISH);
    assert_eq!(active(&mut crb), Some(1));
    // Asking again clears beenSeized.
    wr(&mut crb, 2, reg::LOC_CTRL, loc_ctrl::REQUEST_ACCESS);
    assert_eq!(rd(&mut crb, 2, reg::LOC_STS), 0);
    wr(&mut crb, 1, reg::LOC_CTRL, loc_ctrl::RELINQUISH);
    assert_eq!(active(&mut crb), Some(2));
}

#[test]
fn a_command_runs_at_the_active_locality_and_its_response_lands_in_the_buffer() {
    let (mut crb, fake) = rig();
    ready(&mut crb, 3);
    assert_eq!(rd(&mut crb, 3, reg::CTRL_STS), 0, "ready, not idle");
    let cmd = command(61);
    put(&mut crb, 3, &cmd);
    wr(&mut crb, 3, reg::CTRL_START, ctrl::INVOKE);
    wait_done(&mut crb, 3);
    let resp = get(&mut crb, 3, 61);
    assert_eq!(&resp[..10], &[0x80, 0x01, 0, 0, 0, 61, 0, 0, 0, 0]);
    assert_eq!(&resp[10..], &cmd[10..]);
    assert_eq!(fake.seen.lock().unwrap()[0], (3, cmd));
    // Back to idle.
    wr(&mut crb, 3, reg::CTRL_REQ, ctrl::GO_IDLE);
    assert_eq!(rd(&mut crb, 3, reg::CTRL_STS), ctrl::STS_IDLE);
    assert_eq!(crb.handle().stats().commands, 1);
}

/// What a guest should not do gets what the interface specifies, and the
/// device goes on.
#[test]
fn bad_register_use_is_dropped_or_answered_ptp_6_5_3() {
    let (mut crb, fake) = rig();
    // Read-only registers keep their values.
    for off in [
        reg::LOC_STATE,
        reg::LOC_STS,
        reg::INTF_ID,
        reg::CMD_SIZE,
        reg::RSP_ADDR,
        0x70,
    ] {
        let before = rd(&mut crb, 0, off);
        wr(&mut crb, 0, off, 0xdead_beef);
        assert_eq!(rd(&mut crb, 0, off), before, "{off:#x}");
    }
    assert_eq!(crb.handle().stats().read_only_writes, 6);
    // A locality that is not active: its control writes and buffer writes
    // are dropped, its buffer reads all ones.
    ready(&mut crb, 0);
    put(&mut crb, 0, &command(12));
    wr(&mut crb, 1, reg::CTRL_REQ, ctrl::GO_IDLE);
    put(&mut crb, 1, &[0x55; 8]);
    wr(&mut crb, 1, reg::CTRL_START, ctrl::INVOKE);
    assert_eq!(get(&mut crb, 1, 4), vec![0xff; 4]);
    assert_eq!(rd(&mut crb, 0, reg::CTRL_STS), 0, "still ready");
    assert_eq!(get(&mut crb, 0, 12), command(12), "buffer untouched");
    assert_eq!(crb.handle().stats().inactive_writes, 3);
    assert!(fake.seen.lock().unwrap().is_empty());
    // START while idle does nothing.
    wr(&mut crb, 0, reg::CTRL_REQ, ctrl::GO_IDLE);
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    assert_eq!(rd(&mut crb, 0, reg::CTRL_START), 0);
    assert_eq!(crb.handle().stats().out_of_state, 1);
    // A size beyond the agreed buffer (2048 here) or under a header is
    // answered TPM_RC_COMMAND_SIZE without reaching the backend.
    wr(&mut crb, 0, reg::CTRL_REQ, ctrl::CMD_READY);
    for size in [2049u32, 9, 0xffff_ffff] {
        put(&mut crb, 0, &[0x80, 0x01]);
        crb.write(at(0, reg::DATA_BUFFER + 2), &size.to_be_bytes());
        wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
        assert_eq!(rd(&mut crb, 0, reg::CTRL_START), 0);
        assert_eq!(
            get(&mut crb, 0, 10),
            [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x42]
        );
    }
    assert_eq!(crb.handle().stats().bad_size, 3);
    assert!(fake.seen.lock().unwrap().is_empty());
    // Misaligned register writes are dropped.
    crb.write(at(0, reg::CTRL_START + 1), &[1]);
    assert_eq!(crb.handle().stats().misaligned, 1);
    // Out of the buffer's end (an 8-byte access at the page's last 4).
    crb.write(at(0, LOCALITY_STRIDE - 4), &[0; 8]);
    let mut b = [0u8; 8];
    crb.read(at(0, LOCALITY_STRIDE - 4), &mut b);
    assert_eq!(b, [0xff; 8]);
    // After all that, a command still runs.
    put(&mut crb, 0, &command(16));
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    wait_done(&mut crb, 0);
    assert_eq!(get(&mut crb, 0, 16)[6..10], [0, 0, 0, 0]);
    assert_eq!(fake.seen.lock().unwrap().len(), 1);
}

/// While a command runs: the buffer reads as the command (no response
/// yet), writes to it are dropped, goIdle is refused, a cancel reaches
/// the backend, a second START does not start a second command.
#[test]
fn a_running_command_can_be_cancelled_and_its_buffer_is_left_alone() {
    let (mut crb, fake) = rig();
    ready(&mut crb, 0);
    let cmd = command(20);
    put(&mut crb, 0, &cmd);
    fake.set_hold(true);
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    assert_eq!(rd(&mut crb, 0, reg::CTRL_START), ctrl::INVOKE);
    assert_eq!(
        get(&mut crb, 0, 20),
        cmd,
        "a response read before completion"
    );
    put(&mut crb, 0, &[0xaa; 8]);
    wr(&mut crb, 0, reg::CTRL_REQ, ctrl::GO_IDLE);
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    // The locality does not change hands while its command runs.
    wr(&mut crb, 0, reg::LOC_CTRL, loc_ctrl::RELINQUISH);
    wr(&mut crb, 4, reg::LOC_CTRL, loc_ctrl::SEIZE);
    assert_eq!(rd(&mut crb, 0, reg::LOC_STS), loc_sts::GRANTED);
    wr(&mut crb, 0, reg::CTRL_CANCEL, ctrl::INVOKE);
    assert_eq!(rd(&mut crb, 0, reg::CTRL_CANCEL), ctrl::INVOKE);
    // The cancel goes from a thread of its own (the vCPU does not wait
    // for the backend to read it).
    let end = Instant::now() + Duration::from_secs(10);
    while *fake.cancels.lock().unwrap() == 0 {
        assert!(Instant::now() < end, "the cancel never reached the backend");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(crb.handle().is_busy());
    fake.set_hold(false);
    wait_done(&mut crb, 0);
    assert_eq!(rd(&mut crb, 0, reg::CTRL_STS), 0);
    assert_eq!(fake.seen.lock().unwrap().len(), 1);
    // The buffer write, goIdle, the second START, relinquish and seize.
    assert_eq!(crb.handle().stats().out_of_state, 5);
    // A cancel with nothing running is only stored.
    wr(&mut crb, 0, reg::CTRL_CANCEL, ctrl::INVOKE);
    assert_eq!(*fake.cancels.lock().unwrap(), 1);
}

/// The backend dies mid-command: tpmSts (fatal) is set and START
/// cleared; later commands fail the same way without reaching the
/// backend; a reset with the backend back clears it.
#[test]
fn a_dead_backend_sets_the_fatal_bit_until_reset() {
    let (mut crb, fake) = rig();
    ready(&mut crb, 0);
    put(&mut crb, 0, &command(12));
    fake.fail.store(true, Ordering::SeqCst);
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    wait_done(&mut crb, 0);
    assert_eq!(
        rd(&mut crb, 0, reg::CTRL_STS) & ctrl::STS_FATAL,
        ctrl::STS_FATAL
    );
    assert!(crb.handle().is_fatal());
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    assert_eq!(rd(&mut crb, 0, reg::CTRL_START), 0);
    assert_eq!(fake.seen.lock().unwrap().len(), 1);
    fake.fail.store(false, Ordering::SeqCst);
    crb.reset().unwrap();
    assert_eq!(rd(&mut crb, 0, reg::CTRL_STS), ctrl::STS_IDLE);
    assert_eq!(rd(&mut crb, 0, reg::LOC_STATE) & loc_state::LOC_ASSIGNED, 0);
    ready(&mut crb, 0);
    put(&mut crb, 0, &command(12));
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    wait_done(&mut crb, 0);
    assert!(!crb.handle().is_fatal());
    assert_eq!(crb.handle().stats().fatal, 1);
}

#[test]
fn the_establishment_bit_is_reset_from_locality_3_or_4_only() {
    let (mut crb, fake) = rig();
    assert_eq!(
        rd(&mut crb, 0, reg::LOC_STATE) & loc_state::NOT_ESTABLISHED,
        0
    );
    ready(&mut crb, 0);
    wr(&mut crb, 0, reg::LOC_CTRL, loc_ctrl::RESET_ESTABLISHMENT);
    assert!(fake.resets.lock().unwrap().is_empty());
    wr(&mut crb, 0, reg::LOC_CTRL, loc_ctrl::RELINQUISH);
    // Locality 3, but not active: refused too.
    wr(&mut crb, 4, reg::LOC_CTRL, loc_ctrl::REQUEST_ACCESS);
    wr(&mut crb, 3, reg::LOC_CTRL, loc_ctrl::RESET_ESTABLISHMENT);
    assert!(fake.resets.lock().unwrap().is_empty());
    wr(&mut crb, 4, reg::LOC_CTRL, loc_ctrl::RESET_ESTABLISHMENT);
    assert_eq!(*fake.resets.lock().unwrap(), vec![4]);
    assert_eq!(
        rd(&mut crb, 0, reg::LOC_STATE) & loc_state::NOT_ESTABLISHED,
        loc_state::NOT_ESTABLISHED
    );
}

/// A reset while a command runs: the command's answer, when it comes,
/// belongs to no one and lands nowhere; the next command runs normally.
#[test]
fn a_command_running_across_a_reset_completes_into_nothing() {
    let (mut crb, fake) = rig();
    ready(&mut crb, 0);
    let cmd = command(20);
    put(&mut crb, 0, &cmd);
    fake.set_hold(true);
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    crb.reset().unwrap();
    assert_eq!(rd(&mut crb, 0, reg::CTRL_START), 0);
    fake.set_hold(false);
    // Wait until the backend has answered the old command.
    let end = Instant::now() + Duration::from_secs(10);
    while fake.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < end);
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    ready(&mut crb, 0);
    assert_eq!(
        get(&mut crb, 0, 20),
        cmd,
        "the old answer landed after the reset"
    );
    assert!(!crb.handle().is_fatal());
    let next = command(16);
    put(&mut crb, 0, &next);
    wr(&mut crb, 0, reg::CTRL_START, ctrl::INVOKE);
    wait_done(&mut crb, 0);
    assert_eq!(get(&mut crb, 0, 16)[6..10], [0, 0, 0, 0]);
}
