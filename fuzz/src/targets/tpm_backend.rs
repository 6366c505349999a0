//! `tpm_backend`: what a TPM backend reads from its TPM, from the input:
//! swtpm's control-channel answers and data-channel responses for the
//! emulator backend (`backends::tpm::emulator`), and a host TPM device's
//! responses for the passthrough backend. The input's bytes are all the
//! peer ever sends (then it closes), and a sequence of operations runs
//! over them. Every answer either parses or is an error: a response
//! returned is never shorter than a header, never longer than the room
//! given, and always the size its header says.

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use backends::tpm::emulator::Emulator;
use backends::tpm::passthrough::Passthrough;
use backends::tpm::{BlobType, TpmBackend, header_size};

/// One call on the backend.
#[derive(Arbitrary, Debug)]
enum Op {
    Startup(u16),
    Command { locality: u8, len: u16, room: u16 },
    Cancel,
    Established,
    ResetEstablished(u8),
    Blob(u8),
    SetBlob(u16),
    Stop,
}

/// The bytes the peers send.
#[derive(Arbitrary, Debug)]
struct Input {
    ctrl: Vec<u8>,
    data: Vec<u8>,
    passthrough: bool,
    ops: Vec<Op>,
}

fn blob(b: u8) -> BlobType {
    match b % 3 {
        0 => BlobType::Permanent,
        1 => BlobType::Volatile,
        _ => BlobType::SaveState,
    }
}

/// A pair whose far end has sent `bytes` and closed its sending side.
fn peer(bytes: &[u8]) -> Option<(UnixStream, UnixStream)> {
    let (ours, mut theirs) = UnixStream::pair().ok()?;
    theirs.write_all(bytes).ok()?;
    theirs.shutdown(Shutdown::Write).ok()?;
    Some((ours, theirs))
}

fn check_response(r: Result<usize, backends::tpm::TpmError>, resp: &[u8], room: usize) {
    if let Ok(n) = r {
        assert!(n >= 10 && n <= room, "response of {n} bytes in {room}");
        assert_eq!(header_size(resp), Some(n as u32), "header size");
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(mut input) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    // Bounded so that what the backend writes fits the socket buffers.
    input.ctrl.truncate(64 << 10);
    input.data.truncate(64 << 10);
    input.ops.truncate(32);
    let timeout = Duration::from_millis(200);
    if input.passthrough {
        // The far end stays open (unread) while the backend runs.
        let Some((ours, _theirs)) = peer(&input.data) else {
            return;
        };
        let p = Passthrough::from_fd(ours.into(), None).with_timeout(timeout);
        run_ops(&p, &input.ops, None);
    } else {
        let (Some((ctrl, _c)), Some((data, _d))) = (peer(&input.ctrl), peer(&input.data)) else {
            return;
        };
        if let Ok(e) = Emulator::over(ctrl, data, timeout) {
            run_ops(&e, &input.ops, Some(&e));
        }
    }
}

fn run_ops(b: &dyn TpmBackend, ops: &[Op], emulator: Option<&Emulator>) {
    let mut resp = vec![0u8; 4096];
    for op in ops {
        match op {
            Op::Startup(size) => {
                if let Ok(s) = b.startup((*size).into()) {
                    assert!(s >= 10, "buffer size {s}");
                }
            }
            Op::Command {
                locality,
                len,
                room,
            } => {
                let len = usize::from(*len % 512).max(10);
                let room = usize::from(*room) % resp.len() + 1;
                let mut cmd = vec![0u8; len];
                cmd[..2].copy_from_slice(&[0x80, 0x01]);
                cmd[2..6].copy_from_slice(&(len as u32).to_be_bytes());
                let r = b.command(locality % 5, &cmd, &mut resp[..room]);
                check_response(r, &resp, room);
            }
            Op::Cancel => drop(b.cancel()),
            Op::Established => drop(b.established()),
            Op::ResetEstablished(l) => drop(b.reset_established(*l)),
            Op::Blob(t) => {
                if let Some(e) = emulator {
                    drop(e.state_blob(blob(*t)));
                }
            }
            Op::SetBlob(len) => {
                if let Some(e) = emulator {
                    drop(
                        e.set_state_blob(BlobType::Volatile, &vec![0xa5; usize::from(*len % 4096)]),
                    );
                }
            }
            Op::Stop => drop(b.stop()),
        }
    }
}
