//! The TPM rows (`bench --tpm`): TPM2_GetRandom of 32 bytes and
//! TPM2_PCR_Extend, commands per second as the `tpm` guest times them
//! (`tpm.bench=N`, TSC), under our monitor's `tpm-crb` and under QEMU
//! 7.2's (`-M microvm`, KVM), each on a swtpm of its own started the same
//! way. Beside them, swtpm alone: the same commands sent by
//! `backends::tpm::emulator` from this process, which is what a command
//! costs without any monitor; the difference is each monitor's own
//! latency per command (MMIO exits for the buffer and the polls, the
//! hand-off to the backend's thread).

use std::sync::Arc;

use backends::tpm::TpmBackend;
use backends::tpm::emulator::Emulator;

use super::*;
use crate::scenarios::Workdir;
use crate::swtpm::Swtpm;

/// Commands per measurement.
const COMMANDS: u64 = 2000;

/// The commands, as the guest sends them: TPM2_GetRandom(32), and
/// TPM2_PCR_Extend of PCR 16 with one SHA-256 digest of 0x11 bytes under
/// a password session.
fn commands() -> [Vec<u8>; 2] {
    let random = vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 32];
    let mut extend = vec![0x80, 0x02, 0, 0, 0, 0, 0, 0, 0x01, 0x82, 0, 0, 0, 16];
    extend.extend_from_slice(&[0, 0, 0, 9, 0x40, 0, 0, 9, 0, 0, 0, 0, 0]);
    extend.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b]);
    extend.extend_from_slice(&[0x11; 32]);
    let len = extend.len() as u32;
    extend[2..6].copy_from_slice(&len.to_be_bytes());
    [random, extend]
}

/// swtpm alone: microseconds per command for each of [`commands`].
fn alone(dir: &Workdir, round: usize) -> Result<[f64; 2], String> {
    let s = Swtpm::start(
        &dir.path(&format!("alone-{round}")),
        &dir.path("alone.ctrl"),
    )
    .map_err(|e| format!("swtpm: {e}"))?;
    let e = Arc::new(Emulator::connect(&s.ctrl).map_err(|e| e.to_string())?);
    e.startup(4096).map_err(|e| e.to_string())?;
    let mut resp = vec![0u8; 4096];
    let startup = [0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0];
    e.command(0, &startup, &mut resp)
        .map_err(|e| e.to_string())?;
    let mut out = [0.0; 2];
    for (i, c) in commands().iter().enumerate() {
        let t0 = Instant::now();
        for _ in 0..COMMANDS {
            let n = e.command(0, c, &mut resp).map_err(|e| e.to_string())?;
            if resp[6..10] != [0, 0, 0, 0] || n < 10 {
                return Err(format!("swtpm answered {:02x?}", &resp[..n.min(10)]));
            }
        }
        out[i] = t0.elapsed().as_secs_f64() * 1e6 / COMMANDS as f64;
    }
    let _ = e.shutdown();
    Ok(out)
}

/// The guest's two `tpm bench:` lines as microseconds per command.
fn guest_rates(serial: &str) -> Result<[f64; 2], String> {
    let mut out = [0.0; 2];
    for (i, op) in ["get_random", "pcr_extend"].iter().enumerate() {
        let prefix = format!("tpm bench: {op} {COMMANDS} in ");
        let us: f64 = serial
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|r| r.strip_suffix(" us"))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no '{prefix}… us' line in:\n{serial}"))?;
        out[i] = us / COMMANDS as f64;
    }
    Ok(out)
}

fn append() -> String {
    format!("tpm.bench={COMMANDS} tpm.shutdown=none")
}

fn ours(dir: &Workdir, round: usize, guest: &str) -> Result<[f64; 2], String> {
    let ctrl = dir.path("ours.ctrl");
    let _s = Swtpm::start(&dir.path(&format!("ours-{round}")), &ctrl)
        .map_err(|e| format!("swtpm: {e}"))?;
    let mut args: Vec<String> = vec![
        "-m".into(),
        "64M".into(),
        "-kernel".into(),
        guest.into(),
        "-append".into(),
        append(),
    ];
    args.extend(crate::swtpm::tpm_options(&ctrl));
    let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
    let mut m = monitor::Machine::new(&config).map_err(|e| e.to_string())?;
    let out = m.run(Duration::from_secs(120)).map_err(|e| e.to_string())?;
    if !out.verdict.is_pass() {
        return Err(format!("our monitor: {}\n{}", out.verdict, out.serial));
    }
    guest_rates(&out.serial)
}

fn theirs(dir: &Workdir, round: usize, guest: &str) -> Result<[f64; 2], String> {
    let ctrl = dir.path("qemu.ctrl");
    let _s = Swtpm::start(&dir.path(&format!("qemu-{round}")), &ctrl)
        .map_err(|e| format!("swtpm: {e}"))?;
    let run = Qemu::microvm(guest)
        .append(append())
        .args(crate::swtpm::tpm_options(&ctrl))
        .timeout(Duration::from_secs(120))
        .run()
        .map_err(|e| format!("QEMU: {e}"))?;
    run.check_pass().map_err(|e| format!("QEMU: {e}"))?;
    guest_rates(&run.serial)
}

/// The TPM table: median of `rounds` runs of each, alternating.
pub fn run_tpm(rounds: usize) -> Result<String, String> {
    if let Some(why) = crate::swtpm::unavailable() {
        return Err(why);
    }
    if let Some(why) = monitor::vm::kvm_unavailable() {
        return Err(why);
    }
    let guest = option_env!("GUEST_TPM").ok_or("the tpm guest was not built")?;
    let with_qemu = qemu::unavailable().is_none();
    let dir = Workdir::new("bench-tpm").map_err(|e| e.to_string())?;
    let (mut a, mut o, mut q) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        crate::progress::step(format!("bench: tpm round {} of {rounds}", round + 1))?;
        a.push(alone(&dir, round)?);
        o.push(ours(&dir, round, guest)?);
        if with_qemu {
            q.push(theirs(&dir, round, guest)?);
        }
    }
    let med = |v: &[[f64; 2]], i: usize| median_range(v.iter().map(|x| x[i]).collect()).0;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nTPM 2.0 through tpm-crb: the tpm guest's commands per second (TSC), {COMMANDS} commands a run, median of {rounds}; each monitor on its own swtpm; swtpm alone = the same commands from this process through backends::tpm::emulator\n"
    );
    let _ = writeln!(
        t,
        "| command | swtpm alone | ours | QEMU 7.2 | ours / QEMU | our monitor's own latency | QEMU's own latency |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for (i, name) in ["TPM2_GetRandom(32)", "TPM2_PCR_Extend"].iter().enumerate() {
        let (alone_us, ours_us) = (med(&a, i), med(&o, i));
        let (qemu, ratio, qemu_own) = if with_qemu {
            let q_us = med(&q, i);
            (
                format!("{:.0}/s", 1e6 / q_us),
                format!("{:.2}x", q_us / ours_us),
                format!("{:.0} µs", q_us - alone_us),
            )
        } else {
            ("n/a".into(), "n/a".into(), "n/a".into())
        };
        let _ = writeln!(
            t,
            "| {name} | {:.0}/s | {:.0}/s | {qemu} | {ratio} | {:.0} µs | {qemu_own} |",
            1e6 / alone_us,
            1e6 / ours_us,
            ours_us - alone_us
        );
    }
    Ok(t)
}
