//! The hostile-device rows (issue 6): `misbehave_<device>` boots the
//! `misbehave` guest once per mode of [`Misbehave`] against a device of that
//! type made hostile by `misbehave=<mode>`, and checks what the driver
//! said against what the device did (the slot's report): a used-ring lie
//! must end in a driver error or timeout, a device that never resets must
//! fail the re-initialisation, an interrupt storm must not stop correct
//! completion, and a churning `ConfigGeneration` either fails a
//! configuration read (§2.5.1) or is never read.

use std::path::PathBuf;
use std::time::Duration;

use super::{CustomCtx, CustomRun, Scenario, Setup, Workdir, guest_line};
use monitor::machine::Machine;
use monitor::misbehave::Misbehave;
use monitor::vm::Outcome;

/// Longest one mode's VM may run (a hang is the failure this catches).
const VM_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of the block scenario's disk.
const DISK_BYTES: u64 = 64 * 1024;

/// The `misbehave` guest, if the build script built it.
pub fn misbehave_guest() -> Option<&'static str> {
    option_env!("GUEST_MISBEHAVE")
}

/// What the driver said in one run, from the guest's verdict line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    /// An error, with its text.
    Error(String),
    /// A bounded wait ran out.
    Timeout(String),
    /// Every operation completed.
    Completed,
}

/// Reads the verdict line `misbehave: <device> <mode>: …` of `outcome`.
pub fn said(outcome: &Outcome, device: &str, mode: Misbehave) -> Option<Said> {
    let prefix = format!("misbehave: {device} {mode}: ");
    let rest = guest_line(outcome, &prefix)?.strip_prefix(&prefix)?;
    if rest == "completed" {
        Some(Said::Completed)
    } else if let Some(e) = rest.strip_prefix("error: ") {
        Some(Said::Error(e.to_string()))
    } else {
        rest.strip_prefix("timeout: ")
            .map(|t| Said::Timeout(t.to_string()))
    }
}

/// Whether `said` is the right answer to `mode`, given the slot's report
/// line `report` (its `misbehave=` part); `Err` says why not.
pub fn judge(mode: Misbehave, said: &Said, report: &str) -> Result<(), String> {
    let lie_told = report.contains("told as");
    match (mode, said) {
        (m, _) if m.is_ring_lie() && !lie_told => Err(format!(
            "the device told no used-ring lie ({report}); the run proves nothing"
        )),
        (m, Said::Completed) if m.is_ring_lie() => Err(format!(
            "the driver completed every operation although the device lied ({report})"
        )),
        (m, _) if m.is_ring_lie() => Ok(()),
        (Misbehave::ConfigGenerationChurn, Said::Completed) => Ok(()),
        (Misbehave::ConfigGenerationChurn, Said::Error(e)) if e.contains("§2.5.1") => Ok(()),
        (Misbehave::ResetNeverClears, Said::Error(e)) if e.contains("re-init") => Ok(()),
        (Misbehave::InterruptStorm, Said::Completed) if !report.contains(" 0 register lies") => {
            Ok(())
        }
        (m, s) => Err(format!(
            "{m} ({}): unexpected answer {s:?} ({report})",
            m.rule()
        )),
    }
}

/// The options of one run of `device` misbehaving as `mode`.
fn options(device: &str, mode: Misbehave, disk: &std::path::Path) -> String {
    match device {
        "rng" => {
            format!("-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0,misbehave={mode}")
        }
        // Input for the guest to read: used elements of chains the device
        // wrote (a length is only a lie where there are writable bytes).
        "console" => format!(
            "-chardev file,id=c0,path={},input-path={} \
             -device virtio-serial-device,misbehave={mode} -device virtconsole,chardev=c0",
            disk.with_file_name("console.out").display(),
            disk.with_file_name("console.in").display()
        ),
        "blk" => format!(
            "-drive if=none,id=d0,file={},format=raw \
             -device virtio-blk-device,drive=d0,misbehave={mode}",
            disk.display()
        ),
        // A length is only a lie on a chain the device wrote: a loopback
        // brings the frames back for the guest to receive. The other lies
        // go on the transmit queue, which a receive queue kept busy would
        // overwrite (the device publishes over an element it did not
        // write): a hub port with no peer.
        _ if mode == Misbehave::UsedLenTooLarge => {
            format!("-netdev loopback,id=n0 -device virtio-net-device,netdev=n0,misbehave={mode}")
        }
        _ => format!(
            "-netdev hubport,id=n0,hubid=0 -device virtio-net-device,netdev=n0,misbehave={mode}"
        ),
    }
}

/// One mode: boots, reads the verdict line, judges it. Returns the answer
/// and the outcome.
fn run_mode(
    guest: &str,
    device: &str,
    mode: Misbehave,
    disk: &std::path::Path,
) -> (Result<Said, String>, Option<Outcome>) {
    let mut args: Vec<String> = options(device, mode, disk)
        .split_whitespace()
        .map(String::from)
        .collect();
    args.extend([
        "-kernel".into(),
        guest.into(),
        "-append".into(),
        format!(
            "misbehave.device={device} misbehave.mode={mode} misbehave.rx={}",
            if device == "net" && mode == Misbehave::UsedLenTooLarge {
                "on"
            } else {
                "off"
            }
        ),
    ]);
    let outcome = monitor::options::parse(&args)
        .map_err(|e| format!("options: {e}"))
        .and_then(|cfg| Machine::new(&cfg).map_err(|e| e.to_string()))
        .and_then(|mut m| m.run(VM_TIMEOUT).map_err(|e| e.to_string()));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return (Err(e), None),
    };
    if !outcome.verdict.is_pass() {
        return (Err(format!("guest: {}", outcome.verdict)), Some(outcome));
    }
    let Some(s) = said(&outcome, device, mode) else {
        return (
            Err("the guest printed no verdict line".into()),
            Some(outcome),
        );
    };
    let report = outcome
        .devices
        .first()
        .and_then(|r| r.misbehave.clone())
        .unwrap_or_else(|| "no misbehave= in the slot's report".into());
    let judged = judge(mode, &s, &report).map(|()| s);
    (judged, Some(outcome))
}

/// The guest's interrupt count line (`misbehave: N interrupts (M empty)`).
fn interrupts(outcome: &Outcome) -> String {
    guest_line(outcome, "misbehave: ")
        .into_iter()
        .chain(outcome.serial.lines().filter(|l| l.ends_with(" empty)")))
        .find(|l| l.contains(" interrupts ("))
        .and_then(|l| l.strip_prefix("misbehave: "))
        .unwrap_or("no interrupt count")
        .to_string()
}

fn setup(device: &'static str, dir: &Workdir) -> Result<Setup, String> {
    let disk = dir.path("disk.img");
    if device == "blk" {
        let f = std::fs::File::create(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
        f.set_len(DISK_BYTES)
            .map_err(|e| format!("{}: {e}", disk.display()))?;
    }
    if device == "console" {
        let input = disk.with_file_name("console.in");
        std::fs::write(&input, [b'x'; 4096]).map_err(|e| format!("{}: {e}", input.display()))?;
    }
    let disk: PathBuf = disk;
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        let (mut errors, mut timeouts, mut completed) = (0, 0, 0);
        let mut last = None;
        for mode in Misbehave::ALL {
            let (r, outcome) = run_mode(ctx.guest, device, mode, &disk);
            match r {
                Ok(s) => {
                    match &s {
                        Said::Error(_) => errors += 1,
                        Said::Timeout(_) => timeouts += 1,
                        Said::Completed => completed += 1,
                    }
                    let (took, slot) = outcome.as_ref().map_or_else(
                        || (String::new(), String::new()),
                        |o| {
                            let slot = o.devices.first().and_then(|r| r.misbehave.clone());
                            (interrupts(o), slot.unwrap_or_default())
                        },
                    );
                    ctx.notes
                        .push(format!("{mode}: {s:?}; guest: {took}; slot: {slot}"));
                }
                Err(e) => {
                    return CustomRun {
                        result: Err(format!("{device} {mode}: {e}")),
                        outcome,
                        skipped: None,
                    };
                }
            }
            last = outcome;
        }
        ctx.notes.insert(
            0,
            format!(
                "{n}/{n} modes: driver error {errors}, timeout {timeouts}, completed {completed}",
                n = Misbehave::ALL.len()
            ),
        );
        CustomRun {
            result: Ok(()),
            outcome: last,
            skipped: None,
        }
    }))
}

macro_rules! row {
    ($name:literal, $device:literal, $kind:literal, $backend:literal) => {
        Scenario {
            name: $name,
            device: concat!($kind, ",misbehave=<each of 8 modes>"),
            backend: $backend,
            guest: misbehave_guest(),
            setup: |dir| setup($device, dir),
        }
    };
}

/// The four rows, one per device type.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        row!("misbehave_rng", "rng", "virtio-rng-device", "rng-builtin"),
        row!(
            "misbehave_console",
            "console",
            "virtio-serial-device + virtconsole",
            "null chardev"
        ),
        row!(
            "misbehave_blk",
            "blk",
            "virtio-blk-device",
            "raw file, 64 KiB"
        ),
        row!(
            "misbehave_net",
            "net",
            "virtio-net-device",
            "hubport alone on its hub"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_lies_need_a_lie_told_and_an_error() {
        let told = "used-twice (§2.7.8): used element 0 (id 0, len 4) told as (id 0, len 4)";
        let e = Said::Error("read: queue 0: …".into());
        assert!(judge(Misbehave::UsedTwice, &e, told).is_ok());
        assert!(judge(Misbehave::UsedTwice, &Said::Timeout("t".into()), told).is_ok());
        assert!(judge(Misbehave::UsedTwice, &Said::Completed, told).is_err());
        let none = "used-twice (§2.7.8): no used-ring lie told";
        assert!(judge(Misbehave::UsedTwice, &e, none).is_err());
    }

    #[test]
    fn register_lies_have_their_own_answers() {
        let r = "x (§2.4): 3 register lies told";
        let reinit = Said::Error("re-init: virtio-mmio transport: …".into());
        assert!(judge(Misbehave::ResetNeverClears, &reinit, r).is_ok());
        assert!(judge(Misbehave::ResetNeverClears, &Said::Completed, r).is_err());
        assert!(judge(Misbehave::InterruptStorm, &Said::Completed, r).is_ok());
        assert!(judge(Misbehave::InterruptStorm, &reinit, r).is_err());
        let quiet = "x (§4.2.2): 0 register lies told";
        assert!(judge(Misbehave::InterruptStorm, &Said::Completed, quiet).is_err());
        let churn = Said::Error("init: … (§2.5.1)".into());
        assert!(judge(Misbehave::ConfigGenerationChurn, &churn, r).is_ok());
        assert!(judge(Misbehave::ConfigGenerationChurn, &Said::Completed, r).is_ok());
    }
}
