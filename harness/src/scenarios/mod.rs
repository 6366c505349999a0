//! The end-to-end scenarios: each boots one tiny guest against one device
//! configuration, built from QEMU-style options exactly as `virtio-harness
//! run` would, with whatever the host side needs around it (an EGD daemon,
//! a socket peer that echoes, files to compare), then checks the outcome.
//!
//! [`all`] is the suite (`virtio-harness suite`); the integration tests in
//! `harness/tests/` run the same scenarios one by one, so the table and the
//! tests never disagree. The guest side of each scenario follows the
//! contract in `harness/guests/README.md`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backends::rng::{Deterministic, RngBackend};

use monitor::machine::Machine;
use monitor::vm::Outcome;

pub mod hostile_net;
pub mod hostile_vhost;
pub mod misbehave;
pub mod net;

mod basic;
mod blk;
mod peers;
#[cfg(test)]
mod tests;

use basic::*;
pub use blk::*;
pub use peers::*;

/// Longest a scenario guest may run.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Byte `i` of the console pattern stream (the guests' contract): a newline
/// every 64th byte, letters and digits between.
pub fn pattern_byte(i: usize) -> u8 {
    const ALPHA: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    if i % 64 == 63 {
        b'\n'
    } else {
        ALPHA[(i / 64 + i % 64) % 62]
    }
}

/// The first `n` bytes of the console pattern stream.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

/// A scratch directory for one scenario run, removed when dropped.
#[derive(Debug)]
pub struct Workdir(PathBuf);

impl Workdir {
    /// A fresh directory under the system's temporary directory.
    pub fn new(name: &str) -> std::io::Result<Workdir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "virtio-harness-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "creating the work directory {}: {e} (set TMPDIR elsewhere)",
                    dir.display()
                ),
            )
        })?;
        Ok(Workdir(dir))
    }

    /// A path inside it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A host-side actor that runs beside the guest (an EGD daemon, a socket
/// peer); joined after the run, its result is part of the verdict.
type Peer = JoinHandle<Result<String, String>>;

/// Checks run on the outcome after the guest has finished.
type Check = Box<dyn FnOnce(&Outcome) -> Result<(), String>>;

/// Where a scenario runs: what it may need beyond its guest.
#[derive(Clone, Debug, Default)]
pub struct RunEnv {
    /// The `virtio-harness` binary, for scenarios that run a second
    /// machine in a child process (`run …`). Tests pass
    /// `env!("CARGO_BIN_EXE_virtio-harness")`; [`RunEnv::current`] finds it
    /// when this process is `virtio-harness`.
    pub harness_bin: Option<PathBuf>,
}

impl RunEnv {
    /// This process's environment: `harness_bin` is the current
    /// executable when it is `virtio-harness`.
    pub fn current() -> RunEnv {
        let harness_bin = std::env::current_exe()
            .ok()
            .filter(|p| p.file_stem().is_some_and(|n| n == "virtio-harness"));
        RunEnv { harness_bin }
    }
}

/// What a custom run gives: the verdict, the outcome shown in the suite
/// (the main machine's), and whether it was skipped (why).
struct CustomRun {
    result: Result<(), String>,
    outcome: Option<Outcome>,
    skipped: Option<String>,
}

/// What a scenario that drives its machines itself (several guests, a
/// child process, a monitor client) gets.
struct CustomCtx<'a> {
    guest: &'a str,
    env: &'a RunEnv,
    notes: &'a mut Vec<String>,
}

/// A scenario run that is not one machine built from options.
type Custom = Box<dyn FnOnce(CustomCtx<'_>) -> CustomRun>;

/// What a scenario's set-up produced.
struct Setup {
    /// Options for [`monitor::options::parse`], without `-kernel`.
    options: Vec<String>,
    /// The guest's command line (`-append`).
    append: String,
    peer: Option<Peer>,
    check: Option<Check>,
    /// Runs the scenario instead of the one-machine path (`options`,
    /// `append`, `peer` and `check` are then unused).
    custom: Option<Custom>,
}

impl Setup {
    fn new(options: &str, append: impl Into<String>) -> Setup {
        Setup {
            options: options.split_whitespace().map(String::from).collect(),
            append: append.into(),
            peer: None,
            check: None,
            custom: None,
        }
    }

    fn custom(run: impl FnOnce(CustomCtx<'_>) -> CustomRun + 'static) -> Setup {
        Setup {
            custom: Some(Box::new(run)),
            ..Setup::new("", "")
        }
    }
}

/// One scenario of the suite.
pub struct Scenario {
    /// Its name (also the integration test's name).
    pub name: &'static str,
    /// Which device, with which transport options.
    pub device: &'static str,
    /// Which backend.
    pub backend: &'static str,
    /// The guest ELF, if the build script built it.
    guest: Option<&'static str>,
    setup: fn(&Workdir) -> Result<Setup, String>,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("device", &self.device)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// What one scenario run gave.
#[derive(Debug)]
pub struct ScenarioResult {
    /// `Ok` when the guest passed and every host-side check held.
    pub result: Result<(), String>,
    /// The run, if the guest ran.
    pub outcome: Option<Outcome>,
    /// Notes from the host side (e.g. bytes an EGD daemon served).
    pub notes: Vec<String>,
    /// The scenario could not run here (e.g. no network namespaces
    /// without root), and why; `result` is then `Ok`.
    pub skipped: Option<String>,
}

impl Scenario {
    /// Sets up, boots and checks the scenario in [`RunEnv::current`].
    pub fn run(&self) -> ScenarioResult {
        self.run_with(&RunEnv::current())
    }

    /// Sets up, boots and checks the scenario in `env`.
    pub fn run_with(&self, env: &RunEnv) -> ScenarioResult {
        let mut notes = Vec::new();
        let mut skipped = None;
        let (result, outcome) = self.run_inner(env, &mut notes, &mut skipped);
        ScenarioResult {
            result,
            outcome,
            notes,
            skipped,
        }
    }

    fn run_inner(
        &self,
        env: &RunEnv,
        notes: &mut Vec<String>,
        skipped: &mut Option<String>,
    ) -> (Result<(), String>, Option<Outcome>) {
        let Some(guest) = self.guest else {
            return (Err("guest not built".into()), None);
        };
        let dir = match Workdir::new(self.name) {
            Ok(d) => d,
            Err(e) => return (Err(format!("work directory: {e}")), None),
        };
        let mut setup = match (self.setup)(&dir) {
            Ok(s) => s,
            Err(e) => return (Err(format!("set-up: {e}")), None),
        };
        if let Some(custom) = setup.custom.take() {
            let r = custom(CustomCtx { guest, env, notes });
            *skipped = r.skipped;
            return (r.result, r.outcome);
        }
        let mut args = setup.options.clone();
        args.extend(["-kernel".into(), guest.into()]);
        if !setup.append.is_empty() {
            args.extend(["-append".into(), setup.append.clone()]);
        }
        let outcome = monitor::options::parse(&args)
            .map_err(|e| format!("options: {e}"))
            .and_then(|config| Machine::new(&config).map_err(|e| e.to_string()))
            .and_then(|mut m| m.run(TIMEOUT).map_err(|e| e.to_string()));
        // The machine is gone (its sockets closed): the peer can finish.
        let peer = setup.peer.map(|p| {
            p.join()
                .unwrap_or_else(|_| Err("host-side peer panicked".into()))
        });
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => return (Err(e), None),
        };
        let mut result = if outcome.verdict.is_pass() {
            Ok(())
        } else {
            Err(outcome.verdict.to_string())
        };
        match peer {
            Some(Ok(note)) if !note.is_empty() => notes.push(note),
            Some(Err(e)) if result.is_ok() => result = Err(format!("host side: {e}")),
            _ => {}
        }
        if result.is_ok()
            && let Some(check) = setup.check
        {
            result = check(&outcome);
        }
        (result, Some(outcome))
    }
}

/// Every scenario, in suite order.
pub fn all() -> Vec<Scenario> {
    let mut v = scenario_list();
    v.extend(hostile_net::scenarios());
    v.extend(misbehave::scenarios());
    v.extend(hostile_vhost::scenarios());
    // Until the blk guest exists (issue 4 in progress), its rows would only
    // say "guest not built".
    if option_env!("GUEST_BLK").is_some() {
        v.extend(blk_scenarios());
    }
    v
}

/// The virtio-net scenarios (tested in `harness/tests/scenarios.rs`), empty
/// until the `net` guest is built; the suite runs them after [`all`].
pub fn net() -> Vec<Scenario> {
    if net::net_guest().is_some() {
        net::scenarios()
    } else {
        Vec::new()
    }
}

/// The scenario called `name` (in [`all`] or [`net()`]).
pub fn by_name(name: &str) -> Option<Scenario> {
    all().into_iter().chain(net()).find(|s| s.name == name)
}
