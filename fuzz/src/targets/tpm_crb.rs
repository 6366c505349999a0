//! `tpm_crb`: sequences of register reads and writes (any locality page,
//! any offset, width and value) against the monitor's TPM CRB interface
//! (PTP 6.5.3), in front of a backend whose answers come from the input
//! (a response, a failure, an oversized size). Checks what the interface
//! owes the guest: `TPM_LOC_STATE` always valid, at most one locality
//! granted and it is the active one, a data buffer that reads all ones
//! from a locality not active, `START` that clears once the backend
//! answers, and the fatal-error bit only after a backend failure (a dead
//! channel or a response that does not parse).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use backends::tpm::{TpmBackend, TpmError};
use monitor::bus::MmioDevice;
use monitor::tpm_crb::{LOCALITIES, LOCALITY_STRIDE, TpmCrb, loc_state, loc_sts, reg};

/// How the backend answers one command.
#[derive(Arbitrary, Clone, Copy, Debug)]
enum Answer {
    /// A success response of this many bytes (clamped to the room).
    Respond(u16),
    /// A response whose header claims this size, with this many bytes.
    Lie(u32, u16),
    /// The channel fails (swtpm died).
    Die,
    /// The backend refuses the locality.
    Refuse,
}

/// A backend that answers from a list, then with 10-byte successes.
struct Scripted {
    answers: Mutex<Vec<Answer>>,
    failed: Mutex<bool>,
}

impl TpmBackend for Scripted {
    fn startup(&self, buffer_size: u32) -> Result<u32, TpmError> {
        Ok(buffer_size)
    }
    fn command(
        &self,
        _locality: u8,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, TpmError> {
        assert!(command.len() >= 10 && command.len() <= response.len());
        let a = self
            .answers
            .lock()
            .unwrap()
            .pop()
            .unwrap_or(Answer::Respond(10));
        match a {
            Answer::Respond(n) => {
                let n = usize::from(n).clamp(10, response.len());
                response[..n].fill(0);
                response[2..6].copy_from_slice(&(n as u32).to_be_bytes());
                Ok(n)
            }
            Answer::Lie(claim, n) => {
                // A response that does not parse leaves the channel out of
                // step: a failure, as a dead channel is.
                *self.failed.lock().unwrap() = true;
                let n = usize::from(n).min(response.len());
                if n >= 6 {
                    response[2..6].copy_from_slice(&claim.to_be_bytes());
                }
                // What the real backends do with such an answer.
                Err(TpmError::BadResponse("a size outside the buffer"))
            }
            Answer::Die => {
                *self.failed.lock().unwrap() = true;
                Err(TpmError::Io(std::io::Error::other("gone")))
            }
            Answer::Refuse => Err(TpmError::Unsupported("locality")),
        }
    }
    fn cancel(&self) -> Result<(), TpmError> {
        Ok(())
    }
    fn buffer_size(&self) -> u32 {
        4096
    }
    fn established(&self) -> Result<bool, TpmError> {
        Ok(false)
    }
    fn reset_established(&self, _locality: u8) -> Result<(), TpmError> {
        Ok(())
    }
    fn stop(&self) -> Result<(), TpmError> {
        Ok(())
    }
}

/// One guest access.
#[derive(Arbitrary, Debug)]
enum Op {
    Read {
        locality: u8,
        offset: u16,
        width: u8,
    },
    Write {
        locality: u8,
        offset: u16,
        width: u8,
        value: u64,
    },
    /// A register write at a well-known register (more likely to matter).
    Reg {
        locality: u8,
        which: u8,
        value: u32,
    },
    /// A command header of `size` bytes in the buffer.
    Header {
        locality: u8,
        size: u32,
    },
    /// Waits until the running command (if any) completes.
    Drain,
    Reset,
}

const REGS: [u64; 8] = [
    reg::LOC_CTRL,
    reg::CTRL_REQ,
    reg::CTRL_START,
    reg::CTRL_CANCEL,
    reg::LOC_STATE,
    reg::INT_ENABLE,
    reg::CMD_SIZE,
    reg::DATA_BUFFER,
];

fn width(w: u8) -> usize {
    [1, 2, 4, 8][usize::from(w % 4)]
}

fn offset(locality: u8, off: u64) -> u64 {
    u64::from(locality % LOCALITIES) * LOCALITY_STRIDE + off % LOCALITY_STRIDE
}

fn read32(crb: &mut TpmCrb, locality: u8, off: u64) -> u32 {
    let mut b = [0u8; 4];
    crb.read(offset(locality, off), &mut b);
    u32::from_le_bytes(b)
}

/// Checks the register invariants from every page.
fn check(crb: &mut TpmCrb) {
    let state = read32(crb, 0, reg::LOC_STATE);
    assert_ne!(state & loc_state::REG_VALID, 0, "tpmRegValidSts");
    let active = (state & loc_state::LOC_ASSIGNED != 0).then_some((state >> 2) & 7);
    if let Some(a) = active {
        assert!(a < u32::from(LOCALITIES), "active locality {a}");
    }
    for l in 0..LOCALITIES {
        assert_eq!(
            read32(crb, l, reg::LOC_STATE),
            state,
            "LOC_STATE differs in page {l}"
        );
        let granted = read32(crb, l, reg::LOC_STS) & loc_sts::GRANTED != 0;
        assert_eq!(granted, active == Some(u32::from(l)), "granted in page {l}");
        if !granted {
            let mut b = [0u8; 8];
            crb.read(offset(l, reg::DATA_BUFFER), &mut b);
            assert_eq!(b, [0xff; 8], "buffer of an inactive locality");
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(answers) = Vec::<Answer>::arbitrary(&mut u) else {
        return;
    };
    let backend = Arc::new(Scripted {
        answers: Mutex::new(answers.into_iter().take(64).collect()),
        failed: Mutex::new(false),
    });
    let Ok(mut crb) = TpmCrb::new(backend.clone()) else {
        return;
    };
    let handle = crb.handle();
    for _ in 0..256 {
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        match op {
            Op::Read {
                locality,
                offset: off,
                width: w,
            } => {
                let mut b = [0u8; 8];
                crb.read(offset(locality, off.into()), &mut b[..width(w)]);
            }
            Op::Write {
                locality,
                offset: off,
                width: w,
                value,
            } => {
                crb.write(
                    offset(locality, off.into()),
                    &value.to_le_bytes()[..width(w)],
                );
            }
            Op::Reg {
                locality,
                which,
                value,
            } => {
                let r = REGS[usize::from(which) % REGS.len()];
                crb.write(offset(locality, r), &value.to_le_bytes());
            }
            Op::Header { locality, size } => {
                let mut h = [0x80, 0x01, 0, 0, 0, 0, 0, 0, 0x01, 0x7b];
                h[2..6].copy_from_slice(&size.to_be_bytes());
                crb.write(offset(locality, reg::DATA_BUFFER), &h[..8]);
                crb.write(offset(locality, reg::DATA_BUFFER + 8), &h[8..]);
            }
            Op::Drain => {
                let end = Instant::now() + Duration::from_secs(5);
                while handle.is_busy() {
                    assert!(Instant::now() < end, "START never cleared");
                    std::thread::yield_now();
                }
            }
            Op::Reset => {
                // A reset may come while a command runs (its answer must
                // land nowhere).
                if crb.reset().is_ok() {
                    // A fresh start: a fatal bit from here on needs a new
                    // failure (a late failure of a command from before the
                    // reset sets the flag but lands nowhere).
                    *backend.failed.lock().unwrap() = false;
                }
            }
        }
        check(&mut crb);
        if handle.is_fatal() {
            assert!(
                *backend.failed.lock().unwrap(),
                "fatal without a backend failure"
            );
        }
    }
}
