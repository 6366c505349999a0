//! Measurements, not tests (`virtio-harness bench`): our monitor against
//! QEMU `microvm` booting the same ELF in the same run, reported as medians
//! and ratios.
//!
//! - Boot-to-exit of the empty guest, process start to process exit, for
//!   both monitors (ours is this very binary's `run` subcommand), plus our
//!   in-process split: VM set-up and first `KVM_RUN` to the exit port.
//! - Entropy seen by the guest: the `rng` guest reads 1 MiB in its varied
//!   request sizes, polling or interrupt-driven; the time is the run's
//!   boot-to-exit minus the empty guest's (what the reads cost), the exits
//!   are ours (`KVM_RUN` returns) and KVM's (including ioeventfd writes it
//!   served without us), per request the guest made.
//! - virtio-net: the `net` guest's raw-frame bench (`net.test=bench`) on
//!   our loopback, a hub with a host port draining or offering frames, and
//!   `-netdev stream` to a host peer, the last also under QEMU's
//!   `virtio-net-device` (modern transport); frames per second from the
//!   wall clock of a full run minus a 100-frame run, exits and the guest's
//!   kicks and interrupts per frame the same way. Then a 16 MiB TCP echo
//!   through the `serve` guest over a tap in a network namespace (MTU
//!   65520), ours and QEMU's `-netdev tap`.
//! - vhost-user blk with QEMU as the frontend: the `blk` guest's 4 KiB
//!   random reads at depth 1 and 32 through `vhost-user-blk`, served by
//!   our `virtio-harness vhost-user` and by `qemu-storage-daemon` on the
//!   same file (both through the host page cache), alternating, median of
//!   several runs ([`run_vhost`], `bench --vhost-only`).
//! - TPM 2.0 through `tpm-crb` ([`run_tpm`], `bench --tpm`): the `tpm`
//!   guest's GetRandom and PCR_Extend rates under ours and QEMU, each on
//!   its own swtpm, and swtpm alone.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::qemu::{self, Qemu};
use crate::record::{Plot, Role};

mod blk;
mod crypto;
mod net;
mod rng;
#[cfg(test)]
mod tests;
mod tpm;
mod user;
mod vhost;

use blk::*;
use net::*;
use rng::*;
use vhost::*;

pub use crypto::run_crypto;
pub use tpm::run_tpm;
pub use user::run_user;
pub use vhost::VHOST_MAX_ROUNDS;

/// The median of `v` (which must not be empty).
fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// Runs every measurement `rounds` times and returns the table (markdown).
pub fn run(rounds: usize) -> Result<String, String> {
    let empty = option_env!("GUEST_EMPTY").ok_or("the empty guest was not built")?;
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return Err(format!("KVM is unavailable: {why}"));
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| measurement (median of {rounds}) | ours | QEMU microvm | QEMU / ours |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: |");

    // Process to process: our `run` subcommand against qemu-system-x86_64.
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut ours = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let st = Command::new(&exe)
            .args(["run", "-m", "64M", "-kernel", empty])
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        ours.push(start.elapsed());
        if !st.status.success() {
            return Err(format!(
                "our monitor did not pass the empty guest: {}",
                String::from_utf8_lossy(&st.stderr)
            ));
        }
    }
    let ours = median(ours);
    let qemu_cell = match qemu::unavailable() {
        Some(why) => (format!("n/a ({why})"), "-".to_string()),
        None => {
            let mut runs = Vec::new();
            for _ in 0..rounds {
                let r = Qemu::microvm(empty)
                    .run()
                    .map_err(|e| format!("qemu: {e}"))?;
                if !r.passed() {
                    return Err(format!(
                        "QEMU did not pass the empty guest: {}",
                        r.describe()
                    ));
                }
                runs.push(r.elapsed);
            }
            let q = median(runs);
            (
                ms(q),
                format!("{:.1}x", q.as_secs_f64() / ours.as_secs_f64()),
            )
        }
    };
    let _ = writeln!(
        t,
        "| empty guest, process start to exit (ms) | {} | {} | {} |",
        ms(ours),
        qemu_cell.0,
        qemu_cell.1
    );

    // In process: where our time goes.
    let elf = std::fs::read(empty).map_err(|e| format!("{empty}: {e}"))?;
    let mut setup = Vec::new();
    let mut guest = Vec::new();
    let mut exits = 0;
    for _ in 0..rounds {
        let memory = backends::hostmem::HostMemory::ram(64 << 20, false, false)
            .map_err(|e| e.to_string())?;
        let out = monitor::vm::boot(memory, &elf, "", 0, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        setup.push(out.setup);
        guest.push(out.boot_to_exit);
        exits = out.exits.total();
    }
    let _ = writeln!(
        t,
        "| ours in process: VM set-up + load / first KVM_RUN to exit (ms), exits | {} / {}, {exits} exits | | |",
        ms(median(setup)),
        ms(median(guest.clone()))
    );
    let empty_guest = median(guest);
    let rows = |t: &mut String| -> Result<(), String> {
        rng_rows(t, rounds, empty_guest)?;
        blk_rows(t)?;
        vhost_rows(t, rounds.min(VHOST_MAX_ROUNDS))?;
        net_rows(t)
    };
    match rows(&mut t) {
        Ok(()) => Ok(t),
        // Ctrl-C: what was measured is still worth printing.
        Err(e) if crate::progress::interrupted() => Err(format!("{e}; the rows so far:\n{t}")),
        Err(e) => Err(e),
    }
}

/// Only the vhost-user rows (`virtio-harness bench --vhost-only`), each
/// the median of `rounds` runs of each backend. Our
/// backend is this very binary's `vhost-user` subcommand, so this runs
/// from `virtio-harness` only.
pub fn run_vhost(rounds: usize) -> Result<String, String> {
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return Err(format!("KVM is unavailable: {why}"));
    }
    let mut t = String::new();
    vhost_rows(&mut t, rounds)?;
    Ok(t)
}

/// Only the net rows (`virtio-harness bench --net-only`).
pub fn run_net() -> Result<String, String> {
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return Err(format!("KVM is unavailable: {why}"));
    }
    let mut t = String::new();
    net_rows(&mut t)?;
    Ok(t)
}

/// The median of `v` (not empty), and its range.
fn median_range(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}
