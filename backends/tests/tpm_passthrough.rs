//! The host-TPM backend (`backends::tpm::passthrough`). These machines
//! have no `/dev/tpm*`, no vtpm proxy and no CUSE, so a real swtpm stands
//! in for the host TPM: `swtpm chardev --tpm2 --fd N` on one end of a
//! stream socket pair, the backend on the other end through the same
//! read and write code a `/dev/tpm0` goes through, and a regular file as
//! the `cancel-path`, checked for the `-` written to it. The test of a
//! real device runs where `/dev/tpmrm0` or `/dev/tpm0` exists and skips,
//! saying so, elsewhere. Without swtpm the others skip too, except under
//! `HARNESS_REQUIRE_QEMU=1` (CI), where that fails.

mod tpm_common;
use tpm_common::{STARTUP_CLEAR, get_random, rc};

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use backends::tpm::passthrough::Passthrough;
use backends::tpm::{TpmBackend, TpmError};

/// A `swtpm chardev` on a socket pair, its state in a directory of its
/// own; killed on drop.
struct Chardev {
    child: Child,
    dir: PathBuf,
}

impl Drop for Chardev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The descriptor number swtpm finds its end at.
const CHILD_FD: i32 = 10;

fn swtpm_chardev(test: &str) -> Option<(Chardev, UnixStream)> {
    if Command::new("swtpm").arg("--version").output().is_err() {
        if std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("{test}: swtpm is not installed, and HARNESS_REQUIRE_QEMU=1");
        }
        println!("SKIP: {test}: swtpm is not installed (.ci/setup installs it)");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("bothends-tpmpt-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new("swtpm");
    // A host TPM comes started by its firmware: no INIT, and
    // TPM2_Startup(CLEAR) done.
    cmd.args([
        "chardev",
        "--tpm2",
        "--flags",
        "not-need-init,startup-clear",
    ])
    .args(["--fd", &CHILD_FD.to_string(), "--tpmstate"])
    .arg(format!("dir={}", dir.display()))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; the child gets its end of the
    // pair at CHILD_FD, without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, CHILD_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
    Some((Chardev { child, dir }, ours))
}

/// The buffer size comes from the TPM's own limits; commands go through;
/// cancel writes `-` to the cancel file; another locality, a command
/// over the buffer and the established flag's reset are refused.
#[test]
fn a_tpm_behind_a_character_stream_answers_and_cancels_through_its_file() {
    let test = "a_tpm_behind_a_character_stream_answers_and_cancels_through_its_file";
    let Some((tpm, sock)) = swtpm_chardev(test) else {
        return;
    };
    let cancel = tpm.dir.join("cancel");
    std::fs::write(&cancel, b"").unwrap();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&cancel)
        .unwrap();
    let p = Passthrough::from_fd(sock.into(), Some(file));
    let size = p.startup(8192).unwrap();
    assert!((1024..=4096).contains(&size), "buffer size {size}");
    let mut resp = vec![0u8; size as usize];
    // Started already: a second Startup is TPM_RC_INITIALIZE.
    let n = p.command(0, &STARTUP_CLEAR, &mut resp).unwrap();
    assert_eq!((n, rc(&resp[..n])), (10, 0x100));
    let n = p.command(0, &get_random(32), &mut resp).unwrap();
    assert_eq!((n, rc(&resp[..n])), (44, 0));
    assert_eq!(u16::from_be_bytes([resp[10], resp[11]]), 32);
    p.cancel().unwrap();
    assert_eq!(std::fs::read(&cancel).unwrap(), b"-");
    assert!(matches!(
        p.command(3, &get_random(8), &mut resp),
        Err(TpmError::Unsupported(_))
    ));
    let big = vec![0u8; size as usize + 1];
    assert!(matches!(
        p.command(0, &big, &mut resp),
        Err(TpmError::BadCommand(_))
    ));
    assert!(!p.established().unwrap());
    assert!(p.reset_established(3).is_err());
    // The TPM goes on after the refusals.
    let n = p.command(0, &get_random(8), &mut resp).unwrap();
    assert_eq!(rc(&resp[..n]), 0);
}

/// The TPM dies: the next command fails with the channel's error at once.
#[test]
fn a_dead_host_tpm_fails_the_command() {
    let test = "a_dead_host_tpm_fails_the_command";
    let Some((mut tpm, sock)) = swtpm_chardev(test) else {
        return;
    };
    let p = Passthrough::from_fd(sock.into(), None);
    p.startup(4096).unwrap();
    tpm.child.kill().unwrap();
    tpm.child.wait().unwrap();
    let mut resp = [0u8; 4096];
    assert!(matches!(
        p.command(0, &get_random(8), &mut resp),
        Err(TpmError::Io(_))
    ));
}

/// `open` with a cancel path that cannot be opened fails, naming nothing
/// half-made; on a machine with a host TPM, GetRandom goes through it.
#[test]
fn a_host_tpm_device_where_there_is_one() {
    let missing = Passthrough::open(
        Path::new("/dev/null"),
        Some(Path::new("/nonexistent/cancel")),
    );
    assert!(matches!(missing, Err(TpmError::Io(_))));
    let Some(dev) = ["/dev/tpmrm0", "/dev/tpm0"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
    else {
        println!(
            "SKIP: a_host_tpm_device_where_there_is_one: this machine has no /dev/tpmrm0 or /dev/tpm0"
        );
        return;
    };
    let p = match Passthrough::open(dev, None) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "SKIP: a_host_tpm_device_where_there_is_one: {}: {e}",
                dev.display()
            );
            return;
        }
    };
    let size = p.startup(4096).unwrap();
    let mut resp = vec![0u8; size as usize];
    let n = p.command(0, &get_random(16), &mut resp).unwrap();
    assert_eq!(rc(&resp[..n]), 0);
}
