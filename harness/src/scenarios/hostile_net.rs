//! The hostile scenarios (issue 6): the `hostile` guest against one
//! machine with all four devices (rng, console, blk on a read-only disk,
//! net on a loopback netdev), one suite row per device (`hostile_rng`,
//! `hostile_console`, `hostile_blk`, `hostile_net`: that device's cases,
//! with the other three checked to still serve), judged from the guest's
//! verdict lines by [`crate::verdict`]; and a starved virtio-net receive
//! queue (`starve` guest, spec §5.1.6.4) fed by a host peer over `-netdev
//! stream`. A child of [`crate::scenarios`] (it builds [`Scenario`]s);
//! [`starve_peer`] is public for the QEMU tests, which run the same guest.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::net::recv_frame;
use super::{CustomRun, Scenario, Setup, TIMEOUT, Workdir, accept_within, guest_line};
use crate::verdict::{self, RunEnd, Verdict, VerdictKind};
use monitor::machine::Machine;
use monitor::vm::Outcome;

/// Net cases of the `hostile` guest (`hostile.case=` names: `NET_CASES`
/// in `guests/src/bin/hostile/net.rs` and the generic ring cases on
/// transmitq1) after which our device keeps the traffic going (verdict
/// PASS): each is followed by a frame that comes back on loopback. The
/// QEMU tests run the same list.
pub const NET_CASES_CONTINUING: &[&str] = &[
    "net-tx-short-header",
    "net-tx-csum-beyond-frame",
    "net-tx-gso-not-negotiated",
    "net-tx-longer-than-mtu",
    "net-tx-wrong-direction",
    "net-tx-desc-loop",
    "net-tx-next-out-of-range",
    "net-tx-buffer-outside-ram",
    "net-rx-device-readable",
    "net-rx-smaller-than-header",
    "net-rx-buffer-outside-ram",
    "net-ctrl-short-ack",
    "net-ctrl-ack-readable",
];

/// The net cases after which our device must ask for a reset (§2.7.6: no
/// chain to return; verdict REJECT).
pub const NET_CASES_NEEDING_RESET: &[&str] = &["net-tx-head-out-of-range"];

/// Cases the `hostile` guest runs per device (generic ring cases, register
/// cases, the device's own): a guest that plans fewer fails the row.
pub const HOSTILE_MIN_CASES: &[(&str, usize)] =
    &[("rng", 19), ("console", 19), ("blk", 27), ("net", 28)];

/// Verdicts our devices must give (regression checks beyond "PASS or
/// REJECT"): no chain to return means a reset (§2.7.6); the blk requests
/// §5.2.6.1 names get IOERR; the net cases of [`NET_CASES_CONTINUING`]
/// keep the traffic going.
pub const HOSTILE_EXPECTED: &[(&str, &str, VerdictKind)] = &[
    ("rng", "head-out-of-range", VerdictKind::Reject),
    ("rng", "avail-index-jump", VerdictKind::Reject),
    ("blk", "beyond-capacity", VerdictKind::Reject),
    ("blk", "write-read-only", VerdictKind::Reject),
    ("blk", "data-not-sector-multiple", VerdictKind::Reject),
    ("net", "tx-head-out-of-range", VerdictKind::Reject),
];

/// Checks [`HOSTILE_EXPECTED`] and [`NET_CASES_CONTINUING`] (PASS) for
/// `device`'s verdicts.
fn expected_verdicts(device: &str, verdicts: &[Verdict]) -> Result<(), String> {
    let continuing = NET_CASES_CONTINUING
        .iter()
        .filter_map(|c| c.strip_prefix("net-"))
        .map(|c| ("net", c, VerdictKind::Pass));
    let wanted = HOSTILE_EXPECTED.iter().copied().chain(continuing);
    for (d, case, kind) in wanted.filter(|(d, _, _)| *d == device) {
        match verdicts.iter().find(|v| v.device == d && v.case == case) {
            Some(v) if v.kind == kind => {}
            Some(v) => {
                return Err(format!(
                    "{d} {case}: want {kind}, got {} ({})",
                    v.kind, v.detail
                ));
            }
            None => return Err(format!("{d} {case}: no verdict")),
        }
    }
    Ok(())
}

/// The machine of the hostile rows: all four devices, a read-only disk in
/// `dir` (so the blk write case has a read-only disk to break).
pub fn hostile_machine_options(dir: &Workdir) -> Result<String, String> {
    let img = dir.path("disk.img");
    super::sparse_image(&img, super::DISK)?;
    Ok(format!(
        "-object rng-deterministic,id=r0,seed=1 -device virtio-rng-device,rng=r0 \
         -chardev null,id=c0 -device virtio-serial-device,max_ports=1 \
         -device virtconsole,chardev=c0 \
         -drive if=none,id=d0,file={},format=raw,readonly=on \
         -device virtio-blk-device,drive=d0,queue-size=128 \
         -netdev loopback,id=n0 -device virtio-net-device,netdev=n0",
        img.display()
    ))
}

/// The row of `device`: the hostile guest with `hostile.device=<device>`
/// on [`hostile_machine_options`], judged by [`verdict::check_device`];
/// the verdicts are recorded for the suite's verdict table and the
/// summary (`12 PASS, 7 REJECT`) is the row's note.
fn hostile_device(dir: &Workdir, device: &'static str) -> Result<Setup, String> {
    let options = hostile_machine_options(dir)?;
    let min = HOSTILE_MIN_CASES
        .iter()
        .find(|(d, _)| *d == device)
        .map_or(1, |(_, n)| *n);
    Ok(Setup::custom(move |ctx| {
        let mut args: Vec<String> = options.split_whitespace().map(String::from).collect();
        args.extend([
            "-kernel".into(),
            ctx.guest.into(),
            "-append".into(),
            format!("hostile.device={device}"),
        ]);
        let run = monitor::options::parse(&args)
            .map_err(|e| format!("options: {e}"))
            .and_then(|config| Machine::new(&config).map_err(|e| e.to_string()))
            .and_then(|mut m| m.run(TIMEOUT).map_err(|e| e.to_string()));
        let outcome = match run {
            Ok(o) => o,
            Err(e) => {
                // The monitor itself failed (a device thread panicked, KVM
                // gave up): every case of the row is a crash.
                verdict::record(&[Verdict {
                    device: device.into(),
                    case: "(run)".into(),
                    kind: VerdictKind::Crash,
                    detail: e.clone(),
                }]);
                return CustomRun {
                    result: Err(e),
                    outcome: None,
                    skipped: None,
                };
            }
        };
        let end = RunEnd::of(&outcome);
        let verdicts: Vec<Verdict> = verdict::parse(&outcome.serial, &end)
            .into_iter()
            .filter(|v| v.device == device)
            .collect();
        verdict::record(&verdicts);
        let others = verdict::DEVICES.len() - 1;
        let checked = verdict::check_device(&verdicts, &outcome.serial, device, min, others)
            .and_then(|sum| expected_verdicts(device, &verdicts).map(|()| sum));
        let result = match (&end, checked) {
            (RunEnd::Finished, Ok(sum)) => {
                ctx.notes.push(format!("{device}: {sum}"));
                Ok(())
            }
            (RunEnd::Finished, Err(e)) => Err(e),
            (_, Ok(sum)) => Err(format!("{}; {device}: {sum}", outcome.verdict)),
            (_, Err(e)) => Err(format!("{}; {e}", outcome.verdict)),
        };
        CustomRun {
            result,
            outcome: Some(outcome),
            skipped: None,
        }
    }))
}

/// Frames the starve peer sends as soon as it connects.
pub const STARVE_BATCH: u32 = 500;
/// Frames it sends when the guest says `more` (`starve.more`).
pub const STARVE_MORE: u32 = 16;
/// First sequence number of the `more` batch (the guest's contract).
pub const STARVE_MORE_BASE: u32 = 1_000_000;
/// How much the process's anonymous memory may grow while the guest
/// starves (the device buffers a bounded number of frames; 500 small
/// frames are 30 KiB, so anything near this means unbounded queueing).
pub const STARVE_RSS_SLACK: u64 = 16 << 20;

/// The guest's MAC (the device's default, [`virtio_devices::net::NetConfig`]).
fn guest_mac() -> [u8; 6] {
    virtio_devices::net::NetConfig::default().mac
}

/// A peer frame: to `mac`, ethertype 0x88b5, payload `seq ` and `seq`
/// little-endian, padded to 60 bytes; with the stream length prefix.
fn seq_frame(mac: &[u8; 6], seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(mac);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x03]);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    f[14..18].copy_from_slice(b"seq ");
    f[18..22].copy_from_slice(&seq.to_le_bytes());
    let mut out = (f.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&f);
    out
}

/// `RssAnon` of this process in bytes (the machine runs in it), if
/// `/proc` says.
fn rss_anon() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("RssAnon:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The starve peer on a connected stream (QEMU's framing): waits for the
/// guest's `ready` frame, sends [`STARVE_BATCH`] numbered frames at once, waits for the guest's `more`
/// frame, sends [`STARVE_MORE`] frames numbered from
/// [`STARVE_MORE_BASE`], then reads until the other side hangs up.
/// Returns a note (with the memory growth seen), or fails if the
/// process's anonymous memory grew by more than `rss_slack` (`None`: not
/// checked, e.g. when the device is another process).
pub fn starve_peer(mut s: UnixStream, rss_slack: Option<u64>) -> Result<String, String> {
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mac = guest_mac();
    // The guest says `ready` once its device is live.
    loop {
        match recv_frame(&mut s)? {
            None => return Err("the guest hung up before `ready`".into()),
            Some(f) if f.len() >= 19 && f[12..14] == [0x88, 0xb5] && &f[14..19] == b"ready" => {
                break;
            }
            Some(_) => {}
        }
    }
    let before = rss_anon();
    let batch: Vec<u8> = (0..STARVE_BATCH).flat_map(|i| seq_frame(&mac, i)).collect();
    s.write_all(&batch)
        .map_err(|e| format!("sending the first batch: {e}"))?;
    let mut peak = before;
    let mut more = false;
    while let Some(f) = recv_frame(&mut s)? {
        peak = peak.max(rss_anon());
        if f.len() >= 18 && f[12..14] == [0x88, 0xb5] && &f[14..18] == b"more" && !more {
            more = true;
            let m: Vec<u8> = (0..STARVE_MORE)
                .flat_map(|i| seq_frame(&mac, STARVE_MORE_BASE + i))
                .collect();
            s.write_all(&m)
                .map_err(|e| format!("sending the second batch: {e}"))?;
        }
    }
    if !more {
        return Err("the guest never sent `more`".into());
    }
    let grew = match (before, peak) {
        (Some(b), Some(p)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    if let (Some(g), Some(slack)) = (grew, rss_slack)
        && g > slack
    {
        return Err(format!(
            "anonymous memory grew by {g} bytes while the guest starved (more than {slack})"
        ));
    }
    Ok(format!(
        "starve peer sent {STARVE_BATCH} + {STARVE_MORE} frames; anonymous memory grew by {} bytes",
        grew.map_or("?".to_string(), |g| g.to_string())
    ))
}

/// The `starve` check against our device: exactly the first `rx_pending`
/// frames were kept (the device drops what arrives once its bounded ring
/// is full), in order, and the whole `more` batch arrived.
pub fn starve_outcome(o: &Outcome) -> Result<(), String> {
    let pending = u32::from(virtio_devices::net::NetConfig::default().rx_pending);
    let want = format!(
        "starve: got {pending} frames (seq 0..={}, in order)",
        pending - 1
    );
    let got = guest_line(o, "starve: got ").ok_or("the guest printed no 'starve: got' line")?;
    if got != want {
        return Err(format!("want '{want}', got '{got}'"));
    }
    let want = format!(
        "starve: more got {STARVE_MORE} frames (seq {STARVE_MORE_BASE}..={}, in order)",
        STARVE_MORE_BASE + STARVE_MORE - 1
    );
    let got =
        guest_line(o, "starve: more got ").ok_or("the guest printed no 'starve: more got' line")?;
    if got != want {
        return Err(format!("want '{want}', got '{got}'"));
    }
    Ok(())
}

/// The scenarios of this module, in suite order.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "hostile_rng",
            device: "virtio-rng raw rings, +3 devs",
            backend: "all four devices, verdicts",
            guest: option_env!("GUEST_HOSTILE"),
            setup: |dir| hostile_device(dir, "rng"),
        },
        Scenario {
            name: "hostile_console",
            device: "virtio-console raw rings, +3 devs",
            backend: "all four devices, verdicts",
            guest: option_env!("GUEST_HOSTILE"),
            setup: |dir| hostile_device(dir, "console"),
        },
        Scenario {
            name: "hostile_blk",
            device: "virtio-blk raw rings, +3 devs",
            backend: "all four devices, verdicts",
            guest: option_env!("GUEST_HOSTILE"),
            setup: |dir| hostile_device(dir, "blk"),
        },
        Scenario {
            name: "hostile_net",
            device: "virtio-net raw rings, +3 devs",
            backend: "all four devices, verdicts",
            guest: option_env!("GUEST_HOSTILE"),
            setup: |dir| hostile_device(dir, "net"),
        },
        Scenario {
            name: "net_starved_rx",
            device: "virtio-net (raw rings)",
            backend: "netdev stream (unix, host peer)",
            guest: option_env!("GUEST_STARVE"),
            setup: |dir| {
                // The peer listens and the machine dials (`server=off`): a
                // `server=on` stream accepts its peer only from inside
                // `recv`/`send`, which the device does not call while the
                // link is down (no peer yet), so it would never connect.
                let path = dir.path("net.sock");
                let listener =
                    UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut s = Setup::new(
                    &super::net::stream_client_args(&path, "").join(" "),
                    format!("starve.ms=500 starve.more={STARVE_MORE}"),
                );
                s.peer = Some(std::thread::spawn(move || {
                    let stream = accept_within(&listener, Duration::from_secs(10))?;
                    starve_peer(stream, Some(STARVE_RSS_SLACK))
                }));
                s.check = Some(Box::new(starve_outcome));
                Ok(s)
            },
        },
    ]
}
