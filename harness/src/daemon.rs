//! A vhost-user backend process started by us (ours, `virtio-harness
//! vhost-user`, or another such as `qemu-storage-daemon`): started, waited
//! for until it listens, checked between runs, killed and reaped on drop.
//! The benchmark and the tests use it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a backend may take to listen on its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A backend process serving a unix socket, its output in a log file.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (stdin closed, stdout and stderr into `log`) and waits
    /// until it listens on `socket` (an old socket file is removed first),
    /// at most [`START_TIMEOUT`]. `name` names it in errors.
    pub fn start(
        name: impl Into<String>,
        mut cmd: Command,
        socket: PathBuf,
        log: PathBuf,
    ) -> Result<Daemon, String> {
        let name = name.into();
        let _ = std::fs::remove_file(&socket);
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd.spawn().map_err(|e| {
            format!(
                "{name}: cannot start {}: {e}",
                cmd.get_program().to_string_lossy()
            )
        })?;
        crate::progress::adopt(child.id());
        let mut d = Daemon {
            name,
            child,
            socket,
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !unix_listening(&d.socket) {
            d.check_alive()?;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} did not listen on {} within {} s\n{}",
                    d.name,
                    d.socket.display(),
                    START_TIMEOUT.as_secs(),
                    d.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// `virtio-harness vhost-user` (the binary `exe`) serving `options` on
    /// `socket`, its log beside the socket (`<socket>.log`); `verbose`
    /// logs every request.
    pub fn ours<S: AsRef<std::ffi::OsStr>>(
        exe: &Path,
        socket: PathBuf,
        options: &[S],
        verbose: bool,
    ) -> Result<Daemon, String> {
        let mut cmd = Command::new(exe);
        cmd.arg("vhost-user").arg("--socket").arg(&socket);
        if verbose {
            cmd.arg("--verbose");
        }
        cmd.args(options);
        let log = socket.with_extension("log");
        Daemon::start("virtio-harness vhost-user", cmd, socket, log)
    }

    /// Its name in errors.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The file its output goes to.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its output once it contains `needle` (a line it prints later, e.g.
    /// our backend's counters when a frontend hangs up), waiting at most
    /// `within`; what it printed by then otherwise.
    pub fn output_when(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let out = self.output();
            if out.contains(needle) || Instant::now() >= deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How it ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `Err` with its output if it has exited (it must serve every run).
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}):\n{}",
                self.name,
                self.output()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Kills and reaps it (also done on drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::progress::release(self.child.id());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Whether a unix socket is listening at `path`, from `/proc/net/unix`
/// (the `__SO_ACCEPTCON` flag, 0x10000), so that waiting for a daemon
/// does not connect to it (a connection would be a frontend); without
/// `/proc`, whether the path exists.
pub fn unix_listening(path: &std::path::Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    let want = path.to_string_lossy();
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8
            && f[7] == want
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 0x10000 != 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_unix_socket_is_seen_without_connecting() {
        let dir = crate::scenarios::Workdir::new("daemon-listen").expect("workdir");
        let path = dir.path("l.sock");
        assert!(!unix_listening(&path));
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(unix_listening(&path));
        drop(l);
    }

    #[test]
    fn a_daemon_that_exits_at_once_is_an_error_with_its_output() {
        let dir = crate::scenarios::Workdir::new("daemon-exit").expect("workdir");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo no such socket; exit 3"]);
        let err = Daemon::start("sh", cmd, dir.path("s.sock"), dir.path("s.log"))
            .expect_err("sh never listens");
        assert!(
            err.contains("sh exited") && err.contains("no such socket"),
            "{err}"
        );
    }
}
