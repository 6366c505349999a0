//! The hostile virtio-net scenarios (spec §5.1): malformed chains from the
//! `hostile` guest against our device on a loopback netdev, and a starved
//! receive queue (`starve` guest) fed by a host peer over `-netdev
//! stream`. A child of [`crate::scenarios`] (it builds [`Scenario`]s);
//! [`starve_peer`] is public for the QEMU tests, which run the same guest.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use super::net::recv_frame;
use super::{Scenario, Setup, TIMEOUT, accept_within, guest_line};
use crate::vm::Outcome;

/// The net cases of the `hostile` guest (`NET_CASES` in
/// `guests/src/bin/hostile.rs`) that must keep the traffic going: each is
/// followed by a frame that comes back on loopback.
pub const NET_CASES_CONTINUING: &[&str] = &[
    "net-tx-short-header",
    "net-tx-csum-beyond-frame",
    "net-tx-gso-not-negotiated",
    "net-tx-longer-than-mtu",
    "net-tx-device-writable",
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
/// chain to return).
pub const NET_CASES_NEEDING_RESET: &[&str] = &["net-tx-head-out-of-range"];

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

/// The `hostile_net` check: every continuing case survived with its
/// follow-up back, the reset cases asked for one.
pub fn hostile_net_outcomes(o: &Outcome) -> Result<(), String> {
    let lines: Vec<&str> = o.serial.lines().collect();
    let has = |case: &str, what: &str| {
        let prefix = format!("hostile: {case}: ");
        lines
            .iter()
            .any(|l| l.starts_with(&prefix) && l[prefix.len()..].starts_with(what))
    };
    for case in NET_CASES_CONTINUING {
        if !has(case, "follow-up frame came back") {
            return Err(format!("{case}: the follow-up frame did not come back"));
        }
        if !has(case, "survived") {
            return Err(format!("{case}: not survived"));
        }
    }
    for case in NET_CASES_NEEDING_RESET {
        if !has(case, "needs_reset") {
            return Err(format!("{case}: want needs_reset"));
        }
        if !has(case, "survived") {
            return Err(format!("{case}: not survived"));
        }
    }
    if let Some(l) = lines
        .iter()
        .find(|l| l.starts_with("hostile: net-") && l.contains(": skipped"))
    {
        return Err(format!("a net case was skipped: '{l}'"));
    }
    Ok(())
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
            name: "hostile_net",
            device: "virtio-net (raw rings)",
            backend: "netdev loopback",
            guest: option_env!("GUEST_HOSTILE"),
            setup: |_| {
                let mut s = Setup::new(
                    "-netdev loopback,id=n0 -device virtio-net-device,netdev=n0",
                    "",
                );
                s.check = Some(Box::new(hostile_net_outcomes));
                Ok(s)
            },
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
