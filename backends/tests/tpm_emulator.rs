//! The swtpm backend (`backends::tpm::emulator`) against a real swtpm
//! process (`swtpm socket --tpm2 --ctrl type=unixio,path=…`, no
//! `--server`, one process per test): the data channel handed over with
//! `CMD_SET_DATAFD`, TPM2_Startup and TPM2_GetRandom through it, the
//! locality, cancel and the established flag, the state blobs, and a
//! swtpm that dies between commands. Skips, saying why, without swtpm;
//! under `HARNESS_REQUIRE_QEMU=1` (CI, where `.ci/setup` installs it) a
//! missing swtpm fails.

mod tpm_common;
use tpm_common::{STARTUP_CLEAR, get_random, rc};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backends::tpm::emulator::{Emulator, cap};
use backends::tpm::{BlobType, TpmBackend, TpmError, header_size};

/// A swtpm process on a control socket in a directory of its own; killed
/// on drop.
struct Swtpm {
    child: Child,
    dir: PathBuf,
    ctrl: PathBuf,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn swtpm(test: &str) -> Option<Swtpm> {
    if Command::new("swtpm").arg("--version").output().is_err() {
        if std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{test}: swtpm is not installed, and HARNESS_REQUIRE_QEMU=1");
        }
        println!("SKIP: {test}: swtpm is not installed (.ci/setup installs it)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("bothends-tpm-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ctrl = dir.join("ctrl.sock");
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--ctrl"])
        .arg(format!("type=unixio,path={}", ctrl.display()))
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctrl.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ctrl.exists(), "{test}: swtpm made no control socket");
    Some(Swtpm { child, dir, ctrl })
}

fn started(path: &Path) -> Emulator {
    let e = Emulator::connect(path).unwrap();
    let size = e.startup(4096).unwrap();
    assert!(size >= 1024, "buffer size {size}");
    let mut resp = [0u8; 4096];
    let n = e.command(0, &STARTUP_CLEAR, &mut resp).unwrap();
    assert_eq!((n, rc(&resp[..n])), (10, 0), "TPM2_Startup");
    e
}

/// The data channel works: TPM2_GetRandom answers with its size header
/// and the bytes asked for, at locality 0 and at 3; two reads differ.
#[test]
fn swtpm_answers_get_random_through_the_handed_over_data_channel() {
    let test = "swtpm_answers_get_random_through_the_handed_over_data_channel";
    let Some(s) = swtpm(test) else {
        return;
    };
    let e = started(&s.ctrl);
    let caps = e.capabilities();
    for c in [cap::INIT, cap::SET_DATAFD, cap::SET_LOCALITY, cap::STOP] {
        assert_ne!(caps & c, 0, "capability {c:#x} in {caps:#x}");
    }
    let mut outs = Vec::new();
    for locality in [0u8, 3] {
        let mut resp = [0u8; 4096];
        let n = e.command(locality, &get_random(16), &mut resp).unwrap();
        assert_eq!(rc(&resp[..n]), 0);
        assert_eq!(header_size(&resp), Some(n as u32));
        // TPM2B_DIGEST: a 2-byte size, then the bytes.
        assert_eq!(u16::from_be_bytes([resp[10], resp[11]]), 16);
        outs.push(resp[12..28].to_vec());
    }
    assert_ne!(outs[0], outs[1]);
    e.cancel().unwrap();
    assert!(!e.established().unwrap());
    e.reset_established(3).unwrap();
    e.stop().unwrap();
}

/// Bad commands are refused before they reach swtpm, and swtpm's own
/// error answers come back as responses: a command shorter than a header,
/// one larger than the buffer, and a command code the TPM does not have
/// (TPM_RC_COMMAND_CODE, 0x143).
#[test]
fn bad_commands_are_refused_or_answered_and_the_tpm_goes_on() {
    let test = "bad_commands_are_refused_or_answered_and_the_tpm_goes_on";
    let Some(s) = swtpm(test) else {
        return;
    };
    let e = started(&s.ctrl);
    let mut resp = [0u8; 4096];
    assert!(matches!(
        e.command(0, &[0x80, 0x01, 0], &mut resp),
        Err(TpmError::BadCommand(_))
    ));
    let big = vec![0u8; e.buffer_size() as usize + 1];
    assert!(matches!(
        e.command(0, &big, &mut resp),
        Err(TpmError::BadCommand(_))
    ));
    let unknown = [0x80, 0x01, 0, 0, 0, 0x0a, 0x20, 0, 0, 0x01];
    let n = e.command(0, &unknown, &mut resp).unwrap();
    assert_eq!(rc(&resp[..n]), 0x143);
    // A response larger than the room given is an error, and the channel
    // is then out of step: later commands say so rather than misread.
    let mut small = [0u8; 12];
    assert!(matches!(
        e.command(0, &get_random(32), &mut small),
        Err(TpmError::BadResponse(_))
    ));
    assert!(matches!(
        e.command(0, &get_random(8), &mut resp),
        Err(TpmError::BadResponse(_))
    ));
}

/// The state blobs: after TPM2_Startup the permanent state reads back
/// non-empty, and setting it again on the stopped TPM is accepted.
#[test]
fn state_blobs_read_back_and_set() {
    let test = "state_blobs_read_back_and_set";
    let Some(s) = swtpm(test) else {
        return;
    };
    let e = started(&s.ctrl);
    let blob = e.state_blob(BlobType::Permanent).unwrap();
    assert!(blob.len() > 100, "{} bytes", blob.len());
    e.stop().unwrap();
    e.set_state_blob(BlobType::Permanent, &blob).unwrap();
    e.startup(4096).unwrap();
    let mut resp = [0u8; 4096];
    let n = e.command(0, &STARTUP_CLEAR, &mut resp).unwrap();
    assert_eq!(rc(&resp[..n]), 0);
}

/// swtpm killed between commands: the next command fails with the
/// channel's error (a closed socket, not a timeout), and every later one
/// fails too.
#[test]
fn a_dead_swtpm_fails_commands_promptly() {
    let test = "a_dead_swtpm_fails_commands_promptly";
    let Some(mut s) = swtpm(test) else {
        return;
    };
    let e = started(&s.ctrl);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let mut resp = [0u8; 4096];
    assert!(matches!(
        e.command(0, &get_random(8), &mut resp),
        Err(TpmError::Io(_))
    ));
    // Every later command fails too (the channel is out of step).
    assert!(e.command(0, &get_random(8), &mut resp).is_err());
    assert!(e.cancel().is_err());
    let _ = e.shutdown();
}

/// swtpm stopped (SIGSTOP) rather than dead: a command fails once the
/// backend's timeout passes (the bound on a hung TPM), not never; once
/// swtpm runs again, a restart recovers the channel.
#[test]
fn a_hung_swtpm_fails_the_command_at_the_timeout() {
    let test = "a_hung_swtpm_fails_the_command_at_the_timeout";
    let Some(s) = swtpm(test) else {
        return;
    };
    let e = Emulator::connect_with(&s.ctrl, Duration::from_millis(300)).unwrap();
    e.startup(4096).unwrap();
    let mut resp = [0u8; 4096];
    let n = e.command(0, &STARTUP_CLEAR, &mut resp).unwrap();
    assert_eq!(rc(&resp[..n]), 0);
    let pid = s.child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let r = e.command(0, &get_random(8), &mut resp);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    match r {
        Err(TpmError::Io(err)) => assert!(
            matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{err}"
        ),
        other => panic!("{other:?}"),
    }
    // Its late answer must not be taken for the next command's: the
    // channel is out of step from then on.
    assert!(matches!(
        e.command(0, &get_random(8), &mut resp),
        Err(TpmError::BadResponse(_))
    ));
    // A restart (what a machine reset does) stops the TPM, drops the late
    // answer, starts it again: commands go through once more.
    std::thread::sleep(Duration::from_millis(100));
    e.startup(4096).unwrap();
    let n = e.command(0, &STARTUP_CLEAR, &mut resp).unwrap();
    assert_eq!(rc(&resp[..n]), 0);
    let n = e.command(0, &get_random(8), &mut resp).unwrap();
    assert_eq!((n, rc(&resp[..n])), (20, 0));
}
