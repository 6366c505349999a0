//! The rng rows: the `rng` guest reads 1 MiB in each notify and completion
//! mode, ours and QEMU's.

use super::*;

/// Bytes the rng guest reads per run.
pub(super) const RNG_BYTES: u64 = 1 << 20;

/// The rng rows: ours in each notify/completion mode, and QEMU's
/// virtio-rng-device (rng-builtin) with the same guest.
pub(super) fn rng_rows(t: &mut String, rounds: usize, empty_guest: Duration) -> Result<(), String> {
    // Each run takes about a second of emulated guest instructions here.
    let rounds = rounds.min(3);
    let Some(rng) = option_env!("GUEST_RNG") else {
        return Ok(());
    };
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "| rng guest, 1 MiB (median of {rounds}) | MiB/s | requests | exits to us / request | KVM exits / request |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: |");
    for (label, ioeventfd, mode) in [
        ("ours, ioeventfd + interrupts", "on", "irq"),
        ("ours, ioeventfd + polling", "on", "poll"),
        ("ours, inline notify + interrupts", "off", "irq"),
        ("ours, inline notify + polling", "off", "poll"),
    ] {
        crate::progress::step(format!("bench: rng guest, {label}"))?;
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..rounds {
            let args: Vec<String> = format!(
                "-object rng-deterministic,id=r0,seed=3 \
                 -device virtio-rng-device,rng=r0,ioeventfd={ioeventfd} -kernel {rng}"
            )
            .split_whitespace()
            .map(String::from)
            .chain([
                "-append".into(),
                // No rng.seed: the guest's stream check would dominate.
                format!("rng.bytes={RNG_BYTES} rng.mode={mode}"),
            ])
            .collect();
            let config = monitor::options::parse(&args).map_err(|e| e.to_string())?;
            let mut m = monitor::machine::Machine::new(&config).map_err(|e| e.to_string())?;
            let out = m.run(Duration::from_secs(30)).map_err(|e| e.to_string())?;
            if !out.verdict.is_pass() {
                return Err(format!("rng guest ({label}): {}", out.verdict));
            }
            times.push(out.boot_to_exit.saturating_sub(empty_guest));
            last = Some(out);
        }
        let Some(out) = last else { continue };
        let requests = crate::scenarios::guest_line(&out, "rng: ")
            .and_then(|l| crate::scenarios::number_before(l, "requests"))
            .unwrap_or(0)
            .max(1);
        let ours = out.exits.total() as f64 / requests as f64;
        let kvm = out.kvm.as_ref().map_or("n/a".to_string(), |k| {
            format!("{:.2}", k.exits() as f64 / requests as f64)
        });
        let _ = writeln!(
            t,
            "| {label} | {} | {requests} | {ours:.2} | {kvm} |",
            mib_per_s(median(times))
        );
    }
    if qemu::unavailable().is_none() {
        let empty = option_env!("GUEST_EMPTY").unwrap_or_default();
        let mut base = Vec::new();
        for _ in 0..rounds {
            base.push(
                Qemu::microvm(empty)
                    .run()
                    .map_err(|e| e.to_string())?
                    .elapsed,
            );
        }
        let base = median(base);
        for (label, mode) in [
            ("QEMU microvm, rng-builtin, interrupts", "irq"),
            ("QEMU microvm, rng-builtin, polling", "poll"),
        ] {
            let mut times = Vec::new();
            let mut requests = 0;
            for _ in 0..rounds {
                let r = Qemu::microvm(rng)
                    .modern()
                    .args([
                        "-object",
                        "rng-builtin,id=r0",
                        "-device",
                        "virtio-rng-device,rng=r0",
                    ])
                    .append(format!("rng.bytes={RNG_BYTES} rng.mode={mode}"))
                    .run()
                    .map_err(|e| e.to_string())?;
                if !r.passed() {
                    return Err(format!("rng guest under QEMU ({label}): {}", r.describe()));
                }
                requests = r
                    .serial
                    .lines()
                    .rev()
                    .find(|l| l.starts_with("rng: "))
                    .and_then(|l| crate::scenarios::number_before(l, "requests"))
                    .unwrap_or(0);
                times.push(r.elapsed.saturating_sub(base));
            }
            let _ = writeln!(
                t,
                "| {label} | {} | {requests} | n/a | n/a |",
                mib_per_s(median(times))
            );
        }
    }
    Ok(())
}

/// `RNG_BYTES` over `d`, as text.
pub(super) fn mib_per_s(d: Duration) -> String {
    if d.is_zero() {
        return "n/a".into();
    }
    format!(
        "{:.1}",
        RNG_BYTES as f64 / (1 << 20) as f64 / d.as_secs_f64()
    )
}
