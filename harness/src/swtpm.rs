//! swtpm processes for the TPM tests, scenarios and benchmark: one process
//! per monitor (QEMU's `-tpmdev emulator` model), its state in a directory
//! the caller gives, its control socket where the caller says, started
//! without `--server` so that the data channel is handed over with
//! `CMD_SET_DATAFD`. Killed on drop.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Why swtpm cannot be run here, if it cannot.
pub fn unavailable() -> Option<String> {
    match Command::new("swtpm").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!("`swtpm --version` failed: {}", out.status)),
        Err(e) => Some(format!("swtpm not found ({e}); .ci/setup installs it")),
    }
}

/// True if a test that needs swtpm should go on; prints why not
/// otherwise, and panics instead under `HARNESS_REQUIRE_QEMU=1` (CI, where
/// `.ci/setup` installs swtpm).
pub fn swtpm_or_skip(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var_os("HARNESS_REQUIRE_QEMU").is_some_and(|v| v == "1") {
        panic!("{test}: {reason}, and HARNESS_REQUIRE_QEMU=1");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// A running `swtpm socket --tpm2`.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    /// Its control socket.
    pub ctrl: PathBuf,
    /// Its state directory.
    pub state: PathBuf,
}

impl Swtpm {
    /// Starts swtpm with its state in `state` (made if missing) and its
    /// control socket at `ctrl`; returns once the socket exists.
    pub fn start(state: &Path, ctrl: &Path) -> io::Result<Swtpm> {
        std::fs::create_dir_all(state).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("creating swtpm's state directory {}: {e}", state.display()),
            )
        })?;
        let _ = std::fs::remove_file(ctrl);
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--ctrl"])
            .arg(format!("type=unixio,path={}", ctrl.display()))
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("starting swtpm: {e} (Debian's swtpm; .ci/setup installs it)"),
                )
            })?;
        crate::progress::adopt(child.id());
        let mut s = Swtpm {
            child,
            ctrl: ctrl.to_path_buf(),
            state: state.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ctrl.exists() {
            if let Some(status) = s.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "swtpm exited ({status}) before making {}",
                    ctrl.display()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("swtpm made no control socket at {} in 10 s", ctrl.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(s)
    }

    /// Kills the process now (a TPM that dies under its monitor).
    pub fn kill(&mut self) -> io::Result<()> {
        self.child.kill()?;
        let r = self.child.wait().map(drop);
        crate::progress::release(self.child.id());
        r
    }

    /// Waits up to `timeout` for the process to exit on its own (after
    /// `CMD_SHUTDOWN`); its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait()? {
                crate::progress::release(self.child.id());
                return Ok(Some(s));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::progress::release(self.child.id());
    }
}

/// The options (ours and QEMU's alike) that put a `tpm-crb` in front of
/// the swtpm whose control socket is `ctrl`.
pub fn tpm_options(ctrl: &Path) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=chrtpm,path={}", ctrl.display()),
        "-tpmdev".into(),
        "emulator,id=tpm0,chardev=chrtpm".into(),
        "-device".into(),
        "tpm-crb,tpmdev=tpm0".into(),
    ]
}

/// Copies the files of swtpm state directory `from` into `to` (made if
/// missing): two monitors compared on "the same state" each get a copy.
pub fn copy_state(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// How many blocks the TPM guest and tests measure into [`PCR_BLOCKS`].
pub const BLOCKS: usize = 4;
/// A measured block's size.
pub const BLOCK_LEN: usize = 512;
/// The PCR the blocks go to.
pub const PCR_BLOCKS: u32 = 8;
/// The PCR the tag goes to.
pub const PCR_TAG: u32 = 9;
/// The bytes measured once into [`PCR_TAG`].
pub const TAG: &[u8] = b"bothends tpm guest";
/// The NV index the guest defines (an ordinary index, owner range).
pub const NV_INDEX: u32 = 0x0150_0016;
/// What the guest writes to it.
pub const NV_DATA: &[u8; 32] = b"survives Startup(STATE)/(CLEAR)!";

/// Block `b` as the `tpm` guest makes it (`harness/guests/src/bin/tpm.rs`
/// has the same rule): byte `i` is `(7i + 13b) mod 256` xor `0x5a`.
pub fn block(b: usize) -> [u8; BLOCK_LEN] {
    core::array::from_fn(|i| ((i * 7 + b * 13) as u8) ^ 0x5a)
}

/// A SHA-256 PCR after extending it from zeros with `digests`
/// (TPM 2.0 Part 1: new = H(old || digest)).
pub fn extended(digests: &[[u8; 32]]) -> [u8; 32] {
    extended_from([0; 32], digests)
}

/// [`extended`] from a PCR value `start`.
pub fn extended_from(start: [u8; 32], digests: &[[u8; 32]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    digests.iter().fold(start, |pcr, d| {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(d);
        h.finalize().into()
    })
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

/// The values PCRs [`PCR_BLOCKS`] and [`PCR_TAG`] hold once the guest has
/// measured: its blocks, and its tag.
pub fn expected_pcrs() -> ([u8; 32], [u8; 32]) {
    let blocks: Vec<[u8; 32]> = (0..BLOCKS).map(|b| sha256(&block(b))).collect();
    (extended(&blocks), extended(&[sha256(TAG)]))
}
