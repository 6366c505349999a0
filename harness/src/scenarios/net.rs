//! The virtio-net scenarios (§5.1) against the `net` guest: a tap in a
//! network namespace (ping, a 16 MiB TCP echo, the link taken down by the
//! monitor), two guests on one hub in this process, two processes on a
//! stream socket, and the receive filter (§5.1.6.5) against a host peer
//! that speaks the stream framing. Each drives its machines itself
//! (several guests, a child process, a monitor client).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{
    CustomCtx, CustomRun, Peer, Scenario, Setup, Workdir, accept_within, connect_within,
    guest_line, number_before,
};
use crate::netns::{self, Netns};
use monitor::machine::{Hubs, Machine};
use monitor::vm::Outcome;

/// Longest a net scenario's guest may run (the guests bound every wait
/// by `net.ms`, below it).
const NET_TIMEOUT: Duration = Duration::from_secs(240);

/// The guests' own bound on every wait (`net.ms`). Kept short: the serve
/// guest has been seen to notice the link going down only when its wait
/// for it runs out (its idle wait does not end at the configuration
/// interrupt), which then passes.
const NET_MS: u64 = 30_000;

/// Bytes of the tap scenario's TCP echo.
const TAP_BYTES: usize = 16 << 20;

/// The tap's MTU in the namespace (the host's segments are then ~64 KiB).
const TAP_MTU: u32 = 65520;

/// The device's MTU: the largest whose frame fits the backends'
/// `MAX_FRAME` (65536 = MTU + 18 bytes of Ethernet header and VLAN tag).
const DEVICE_MTU: u16 = 65518;

/// What the host peer must see per filter phase (§5.1.6.5.1 promiscuous
/// and all-multicast, §5.1.6.5.2 MAC table): the k of the frames
/// 1 own MAC, 2 table unicast, 3 other unicast, 4 broadcast, 5 table
/// multicast, 6 other multicast.
pub const FILTER_EXPECTED: [(&str, &str); 4] = [
    ("strict", "1,4"),
    ("table", "1,2,4,5"),
    ("allmulti", "1,2,4,5,6"),
    ("promisc", "1,2,3,4,5,6"),
];

/// The destination of the host peer's frame k (1..=6), given the guest's
/// MAC.
fn filter_dst(k: usize, guest: [u8; 6]) -> [u8; 6] {
    match k {
        1 => guest,
        2 => [0x02, 0, 0, 0, 0, 0x01],
        3 => [0x02, 0, 0, 0, 0, 0x99],
        4 => [0xff; 6],
        5 => [0x01, 0, 0x5e, 0, 0, 0x01],
        _ => [0x01, 0, 0x5e, 0, 0, 0x99],
    }
}

/// The host peer's own MAC.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];

/// The experimental ethertype the filter test uses.
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

fn skip(why: String) -> CustomRun {
    CustomRun {
        result: Ok(()),
        outcome: None,
        skipped: Some(why),
    }
}

fn fail(why: String, outcome: Option<Outcome>) -> CustomRun {
    CustomRun {
        result: Err(why),
        outcome,
        skipped: None,
    }
}

/// Builds a machine from `options` + the guest + `append`.
fn build(options: &str, guest: &str, append: &str, hubs: &mut Hubs) -> Result<Machine, String> {
    let mut args: Vec<String> = options.split_whitespace().map(String::from).collect();
    args.extend([
        "-kernel".into(),
        guest.into(),
        "-append".into(),
        append.into(),
    ]);
    let cfg = monitor::options::parse(&args).map_err(|e| format!("options: {e}"))?;
    Machine::with_hubs(&cfg, hubs).map_err(|e| e.to_string())
}

/// A guest's verdict, with its serial output on failure.
fn passed(who: &str, o: &Outcome) -> Result<(), String> {
    if o.verdict.is_pass() {
        Ok(())
    } else {
        Err(format!(
            "{who}: {}\n--- {who} serial ---\n{}",
            o.verdict, o.serial
        ))
    }
}

/// `want` is a line of `who`'s output.
fn said(who: &str, o: &Outcome, prefix: &str) -> Result<(), String> {
    guest_line(o, prefix).map(|_| ()).ok_or_else(|| {
        format!(
            "{who} printed no '{prefix}' line\n--- serial ---\n{}",
            o.serial
        )
    })
}

/// Sends `cmd` over the HMP socket at `path` and returns its output.
fn hmp(path: &Path, cmd: &str) -> Result<String, String> {
    let s = connect_within(path, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let prompt = monitor::protocol::PROMPT.as_bytes();
    let until_prompt = |r: &mut BufReader<UnixStream>| -> Result<String, String> {
        let mut out = Vec::new();
        while !out.ends_with(prompt) {
            let buf = r.fill_buf().map_err(|e| format!("monitor: {e}"))?;
            if buf.is_empty() {
                return Err("monitor closed the connection".into());
            }
            out.push(buf[0]);
            r.consume(1);
        }
        out.truncate(out.len() - prompt.len());
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    until_prompt(&mut r)?;
    w.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("monitor: {e}"))?;
    until_prompt(&mut r)
}

/// `net_tap`: the host side, inside the namespace: ping, TCP echo, then
/// the link down by the monitor.
fn tap_host(ns: &Netns, monitor: PathBuf, bytes: usize) -> Result<String, String> {
    let guest = "10.0.2.15";
    let t0 = Instant::now();
    ns.wait_for_ping(guest, Duration::from_secs(60))?;
    let p = ns.ping(guest, 3)?;
    if p.received != 3 {
        return Err(format!("ping: {} of 3 replies", p.received));
    }
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 15), 7));
    let echo = ns
        .tcp_echo(addr, bytes, Duration::from_secs(60))
        .join()
        .unwrap_or_else(|_| Err("the TCP client panicked".into()))?;
    // The server listens again only once that connection is closed on its
    // side too: a second connection accepted proves it, so taking the link
    // down cannot cut the close short.
    ns.spawn(move || netns::connect_within(addr, Duration::from_secs(30)).map(drop))
        .join()
        .unwrap_or_else(|_| Err("the second TCP client panicked".into()))
        .map_err(|e| format!("the server did not listen again after the echo: {e}"))?;
    let out = hmp(&monitor, "set_link n0 off")?;
    if !out.trim().is_empty() {
        return Err(format!("set_link n0 off: {out}"));
    }
    let t_echo = t0.elapsed();
    Ok(format!(
        "ping 3/3; {echo}; set_link n0 off {:.1} s after the first ping",
        t_echo.as_secs_f64()
    ))
}

/// Runs `m` while [`tap_host`] works from inside `ns`; both results.
fn run_with_tap_host(
    m: &mut Machine,
    ns: &Netns,
    monitor: &Path,
    bytes: usize,
) -> (
    Result<Outcome, monitor::MachineError>,
    Result<String, String>,
) {
    std::thread::scope(|scope| {
        let host = scope.spawn(|| tap_host(ns, monitor.to_path_buf(), bytes));
        let out = m.run(NET_TIMEOUT);
        let host = host
            .join()
            .unwrap_or_else(|_| Err("the host side panicked".into()));
        (out, host)
    })
}

fn net_tap(dir: &Workdir) -> Result<Setup, String> {
    let monitor = dir.path("hmp.sock");
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        if let Some(why) = netns::unavailable() {
            if netns::required() {
                return fail(format!("network namespaces: {why}"), None);
            }
            return skip(why);
        }
        let ns = match Netns::new("tap") {
            Ok(ns) => ns,
            Err(e) => return fail(format!("netns: {e}"), None),
        };
        let ifname = format!("vht{}", std::process::id() % 1_000_000);
        let options = format!(
            "-netdev tap,id=n0,ifname={ifname},script=no,downscript=no \
             -device virtio-net-device,netdev=n0,host_mtu={DEVICE_MTU} \
             -monitor unix:{},server=on,wait=off",
            monitor.display()
        );
        let append = format!("net.test=serve net.bytes={TAP_BYTES} net.link=down net.ms={NET_MS}");
        let mut m = match build(&options, ctx.guest, &append, &mut Hubs::default()) {
            Ok(m) => m,
            Err(e) => return fail(e, None),
        };
        if let Err(e) = ns.adopt(&ifname, "10.0.2.2/24", TAP_MTU) {
            return fail(format!("tap into the namespace: {e}"), None);
        }
        let (out, host) = run_with_tap_host(&mut m, &ns, &monitor, TAP_BYTES);
        let o = match out {
            Ok(o) => o,
            Err(e) => return fail(e.to_string(), None),
        };
        for d in &o.devices {
            ctx.notes.push(format!(
                "{d}; InterruptStatus {:#x} at the end",
                d.interrupt_status
            ));
        }
        let host = host.map(|note| ctx.notes.push(note));
        let result = match (passed("guest", &o), host) {
            (Err(e), Err(h)) => Err(format!("{e}\nhost side: {h}")),
            (Err(e), Ok(())) => Err(e),
            (Ok(()), host) => host,
        }
        .and_then(|()| said("guest", &o, "net: link down"))
        .and_then(|()| {
            let line = guest_line(&o, "net: tcp echoed ").unwrap_or("");
            match number_before(line, "bytes") {
                Some(n) if n >= TAP_BYTES as u64 => Ok(()),
                _ => Err(format!("the guest echoed no {TAP_BYTES}-byte connection")),
            }
        });
        CustomRun {
            result,
            outcome: Some(o),
            skipped: None,
        }
    }))
}

/// The bridge the `net_bridge` scenario makes in its namespace (the
/// helper's ACL, `/etc/qemu/bridge.conf`, must allow it: `.ci/setup` adds
/// `allow vhbr0`).
pub const BRIDGE: &str = "vhbr0";

/// The `net_bridge` scenario's TCP echo (the link is 1500 bytes: what
/// is tested is the helper's tap on the bridge, not throughput).
const BRIDGE_BYTES: usize = 1 << 20;

/// `net_bridge`: `-netdev bridge` with QEMU's own `qemu-bridge-helper`,
/// run inside a network namespace (through a wrapper given as `helper=`)
/// where the scenario made bridge `vhbr0` with 10.0.2.2/24: the helper
/// makes the tap, adds it to the bridge and hands it over; then the same
/// host side as `net_tap` (ping, TCP echo, link down).
fn net_bridge(dir: &Workdir) -> Result<Setup, String> {
    let monitor = dir.path("hmp.sock");
    let wrapper = dir.path("bridge-helper");
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        if let Some(why) = netns::unavailable() {
            if netns::required() {
                return fail(format!("network namespaces: {why}"), None);
            }
            return skip(why);
        }
        let helper = std::path::Path::new("/usr/lib/qemu/qemu-bridge-helper");
        if !helper.exists() {
            let why = format!("{} is not installed (qemu-system-common)", helper.display());
            if netns::required() {
                return fail(why, None);
            }
            return skip(why);
        }
        let acl = std::fs::read_to_string("/etc/qemu/bridge.conf").unwrap_or_default();
        if !acl
            .lines()
            .any(|l| l.trim() == format!("allow {BRIDGE}") || l.trim() == "allow all")
        {
            let why = format!("/etc/qemu/bridge.conf does not allow {BRIDGE} (.ci/setup adds it)");
            if netns::required() {
                return fail(why, None);
            }
            return skip(why);
        }
        let ns = match Netns::new("br") {
            Ok(ns) => ns,
            Err(e) => return fail(format!("netns: {e}"), None),
        };
        let made = ns
            .ip(&["link", "add", BRIDGE, "type", "bridge"])
            .and_then(|_| ns.ip(&["addr", "add", "10.0.2.2/24", "dev", BRIDGE]))
            .and_then(|_| ns.ip(&["link", "set", BRIDGE, "up"]));
        if let Err(e) = made {
            return fail(format!("bridge in the namespace: {e}"), None);
        }
        let script = format!(
            "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
            ns.name(),
            helper.display()
        );
        let written = std::fs::write(&wrapper, script).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        });
        if let Err(e) = written {
            return fail(format!("{}: {e}", wrapper.display()), None);
        }
        let options = format!(
            "-netdev bridge,id=n0,br={BRIDGE},helper={} \
             -device virtio-net-device,netdev=n0 \
             -monitor unix:{},server=on,wait=off",
            wrapper.display(),
            monitor.display()
        );
        let append =
            format!("net.test=serve net.bytes={BRIDGE_BYTES} net.link=down net.ms={NET_MS}");
        let mut m = match build(&options, ctx.guest, &append, &mut Hubs::default()) {
            Ok(m) => m,
            Err(e) => return fail(e, None),
        };
        let ports = ns
            .ip(&["link", "show", "master", BRIDGE])
            .unwrap_or_default();
        ctx.notes.push(format!(
            "bridge {BRIDGE} ports: {}",
            ports.lines().filter(|l| !l.starts_with(' ')).count()
        ));
        let (out, host) = run_with_tap_host(&mut m, &ns, &monitor, BRIDGE_BYTES);
        let o = match out {
            Ok(o) => o,
            Err(e) => return fail(e.to_string(), None),
        };
        let host = host.map(|note| ctx.notes.push(note));
        let result = match (passed("guest", &o), host) {
            (Err(e), Err(h)) => Err(format!("{e}\nhost side: {h}")),
            (Err(e), Ok(())) => Err(e),
            (Ok(()), host) => host,
        }
        .and_then(|()| said("guest", &o, "net: link down"));
        CustomRun {
            result,
            outcome: Some(o),
            skipped: None,
        }
    }))
}

/// The serve guest's and the client guest's `-append`, for a pair.
fn pair_appends(udp: u32, bytes: u32) -> (String, String) {
    (
        format!("net.test=serve net.ip=10.0.2.15 net.udp={udp} net.bytes={bytes} net.ms={NET_MS}"),
        format!(
            "net.test=client net.ip=10.0.2.16 net.peer=10.0.2.15 net.udp={udp} net.bytes={bytes} net.ms={NET_MS}"
        ),
    )
}

/// The checks of a pair: both pass, each said what it did.
fn pair_checks(server: &Outcome, client: &Outcome, udp: u32, bytes: u32) -> Result<(), String> {
    passed("server", server)?;
    passed("client", client)?;
    said("server", server, &format!("net: udp echoed {udp}"))?;
    said("server", server, &format!("net: tcp echoed {bytes} bytes"))?;
    said("client", client, &format!("net: udp {udp}/{udp} echoed"))?;
    said(
        "client",
        client,
        &format!("net: tcp {bytes} bytes echoed ok"),
    )
}

const PAIR_UDP: u32 = 8;
const PAIR_BYTES: u32 = 262_144;

fn net_hub_pair(_dir: &Workdir) -> Result<Setup, String> {
    Ok(Setup::custom(|ctx: CustomCtx<'_>| {
        let (serve, client) = pair_appends(PAIR_UDP, PAIR_BYTES);
        let mut hubs = Hubs::default();
        let nic = |mac: &str| {
            format!("-netdev hubport,id=n0,hubid=1 -device virtio-net-device,netdev=n0,mac={mac}")
        };
        let machines =
            build(&nic("52:54:00:12:34:56"), ctx.guest, &serve, &mut hubs).and_then(|s| {
                build(&nic("52:54:00:12:34:57"), ctx.guest, &client, &mut hubs).map(|c| (s, c))
            });
        let (mut s, mut c) = match machines {
            Ok(m) => m,
            Err(e) => return fail(e, None),
        };
        let (so, co) = std::thread::scope(|scope| {
            let client = scope.spawn(|| c.run(NET_TIMEOUT));
            let server = s.run(NET_TIMEOUT);
            let client = client
                .join()
                .unwrap_or(Err(monitor::machine::MachineError::Unsupported(
                    "the client machine's thread panicked",
                )));
            (server, client)
        });
        let (so, co) = match (so, co) {
            (Ok(s), Ok(c)) => (s, c),
            (Err(e), _) => return fail(format!("server: {e}"), None),
            (Ok(s), Err(e)) => return fail(format!("client: {e}"), Some(s)),
        };
        ctx.notes
            .push(format!("client: {} | {}", co.verdict, co.exits));
        CustomRun {
            result: pair_checks(&so, &co, PAIR_UDP, PAIR_BYTES),
            outcome: Some(so),
            skipped: None,
        }
    }))
}

fn net_stream_pair(dir: &Workdir) -> Result<Setup, String> {
    let sock = dir.path("net.sock");
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        let Some(bin) = ctx.env.harness_bin.clone() else {
            return fail(
                "no virtio-harness binary to run the client machine (RunEnv::harness_bin)".into(),
                None,
            );
        };
        let (serve, client) = pair_appends(PAIR_UDP, PAIR_BYTES);
        let options = format!(
            "-netdev stream,id=n0,server=on,addr.type=unix,addr.path={} \
             -device virtio-net-device,netdev=n0",
            sock.display()
        );
        let mut m = match build(&options, ctx.guest, &serve, &mut Hubs::default()) {
            Ok(m) => m,
            Err(e) => return fail(e, None),
        };
        // The server socket is bound: the child can dial it.
        let child = Command::new(&bin)
            .args(["run", "--timeout", &NET_TIMEOUT.as_secs().to_string()])
            .args(stream_client_args(&sock, ",mac=52:54:00:12:34:57"))
            .args(["-kernel", ctx.guest, "-append", &client])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return fail(format!("{}: {e}", bin.display()), None),
        };
        let so = m.run(NET_TIMEOUT);
        let out = child.wait_with_output();
        let so = match so {
            Ok(o) => o,
            Err(e) => return fail(e.to_string(), None),
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => return fail(format!("client process: {e}"), Some(so)),
        };
        let serial = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let result = passed("server", &so).and_then(|()| {
            if !out.status.success() {
                return Err(format!(
                    "client process: {}\n{stderr}\n--- client serial ---\n{serial}",
                    out.status
                ));
            }
            said("server", &so, &format!("net: udp echoed {PAIR_UDP}"))?;
            said(
                "server",
                &so,
                &format!("net: tcp echoed {PAIR_BYTES} bytes"),
            )?;
            let want = format!("net: tcp {PAIR_BYTES} bytes echoed ok");
            if !serial.lines().any(|l| l.starts_with(&want)) {
                return Err(format!("the client printed no '{want}'\n{serial}"));
            }
            Ok(())
        });
        if let Some(v) = stderr.lines().find(|l| l.starts_with("verdict:")) {
            ctx.notes.push(format!("client process {v}"));
        }
        CustomRun {
            result,
            outcome: Some(so),
            skipped: None,
        }
    }))
}

/// The options of a virtio-net device `n0` whose `-netdev stream` dials
/// the unix socket `path`: the same words for our monitor and for QEMU.
/// `device_extra` is appended to the `-device` properties (`,mac=…`).
pub fn stream_client_args(path: &Path, device_extra: &str) -> Vec<String> {
    vec![
        "-netdev".into(),
        format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            path.display()
        ),
        "-device".into(),
        format!("virtio-net-device,netdev=n0{device_extra}"),
    ]
}

/// Writes one frame with QEMU's stream framing (4-byte big-endian length).
pub fn send_frame(s: &mut UnixStream, frame: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    s.write_all(&len.to_be_bytes())?;
    s.write_all(frame)
}

/// Reads one frame with QEMU's stream framing; `None` at the end of the
/// stream.
pub fn recv_frame(s: &mut UnixStream) -> Result<Option<Vec<u8>>, String> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(format!("reading a frame length: {e}")),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > backends::net::MAX_FRAME {
        return Err(format!("a {len}-byte frame"));
    }
    let mut f = vec![0u8; len];
    s.read_exact(&mut f)
        .map_err(|e| format!("reading a {len}-byte frame: {e}"))?;
    Ok(Some(f))
}

fn text_frame(dst: [u8; 6], text: &str) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + text.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&ETHERTYPE);
    f.extend_from_slice(text.as_bytes());
    f
}

/// The filter test's host peer, serving the stream socket `listener` (the
/// guest's netdev dials it): per `READY <phase>` from the guest, the six
/// frames and `DONE <phase>`. Returns the phases it answered.
pub fn filter_peer(listener: UnixListener) -> Peer {
    std::thread::spawn(move || {
        let mut s = accept_within(&listener, NET_TIMEOUT)?;
        s.set_read_timeout(Some(NET_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + NET_TIMEOUT;
        let mut answered = Vec::new();
        while let Some(f) = recv_frame(&mut s)? {
            if Instant::now() > deadline {
                return Err("the filter test took too long".into());
            }
            if f.len() < 14 || f[12..14] != ETHERTYPE {
                continue;
            }
            let body = &f[14..];
            let end = body.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            let Ok(text) = std::str::from_utf8(&body[..end]) else {
                continue;
            };
            let Some(phase) = text.strip_prefix("READY ") else {
                continue;
            };
            let mut guest = [0u8; 6];
            guest.copy_from_slice(&f[6..12]);
            for k in 1..=6 {
                send_frame(
                    &mut s,
                    &text_frame(filter_dst(k, guest), &format!("{phase} {k}")),
                )
                .map_err(|e| format!("sending {phase} {k}: {e}"))?;
            }
            send_frame(&mut s, &text_frame(guest, &format!("DONE {phase}")))
                .map_err(|e| format!("sending DONE {phase}: {e}"))?;
            answered.push(phase.to_string());
        }
        Ok(format!("filter peer answered {}", answered.join(", ")))
    })
}

/// The guest's `net: filter <phase> got …` lines against
/// [`FILTER_EXPECTED`].
fn filter_outcome(o: &Outcome) -> Result<(), String> {
    for (phase, want) in FILTER_EXPECTED {
        let prefix = format!("net: filter {phase} got ");
        let got = guest_line(o, &prefix)
            .map(|l| l[prefix.len()..].trim())
            .ok_or_else(|| format!("no '{prefix}' line"))?;
        if got != want {
            return Err(format!("filter {phase}: got {got}, want {want} (§5.1.6.5)"));
        }
    }
    Ok(())
}

fn net_filter(dir: &Workdir) -> Result<Setup, String> {
    let sock = dir.path("filter.sock");
    // The host peer listens and the guest's netdev dials it, so the link
    // is up from the start.
    let listener = UnixListener::bind(&sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    let mut s = Setup::new(
        &stream_client_args(&sock, "").join(" "),
        format!("net.test=filter net.ms={NET_MS}"),
    );
    s.peer = Some(filter_peer(listener));
    s.check = Some(Box::new(filter_outcome));
    Ok(s)
}

/// The `net_user` scenario's UDP datagrams and TCP echo.
const USER_UDP: u32 = 16;
const USER_BYTES: usize = 1 << 20;

/// Host echo services on 127.0.0.1, TCP and UDP on one port number (the
/// `net` guest's client uses one `net.port` for both); the port.
fn host_echo_services() -> Result<u16, String> {
    for _ in 0..20 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
        let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) else {
            continue;
        };
        std::thread::spawn(move || {
            let mut b = [0u8; 65536];
            while let Ok((n, from)) = udp.recv_from(&mut b) {
                let _ = udp.send_to(&b[..n], from);
            }
        });
        std::thread::spawn(move || {
            while let Ok((mut c, _)) = tcp.accept() {
                std::thread::spawn(move || {
                    let mut r = match c.try_clone() {
                        Ok(r) => r,
                        Err(_) => return,
                    };
                    let _ = std::io::copy(&mut r, &mut c);
                });
            }
        });
        return Ok(port);
    }
    Err("no port free for both TCP and UDP on 127.0.0.1".into())
}

/// Connects to a `hostfwd` port until the guest behind it listens: our
/// NAT accepts at once and closes again when the guest answers its SYN
/// with a RST, so a connection still open after a short wait is the
/// guest's.
fn connect_forwarded(addr: SocketAddr, limit: Duration) -> Result<std::net::TcpStream, String> {
    let deadline = Instant::now() + limit;
    loop {
        let s = netns::connect_within(addr, limit)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(|e| e.to_string())?;
        let mut one = [0u8; 1];
        match (&s).read(&mut one) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(s);
            }
            Ok(n) if n > 0 => return Err("the guest spoke first".into()),
            _ if Instant::now() >= deadline => {
                return Err(format!("{addr}: the guest never listened"));
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `net_user`: `-netdev user` (QEMU's user-mode network) with no
/// privileges: the guest gets its address by DHCP, sends UDP datagrams
/// and a 1 MiB TCP echo to services on the host's 127.0.0.1 through the
/// gateway 10.0.2.2; then, as a server, is reached from the host through
/// `hostfwd=tcp:127.0.0.1:PORT-:7`.
fn net_user(_dir: &Workdir) -> Result<Setup, String> {
    Ok(Setup::custom(move |ctx: CustomCtx<'_>| {
        let port = match host_echo_services() {
            Ok(p) => p,
            Err(e) => return fail(e, None),
        };
        let nic = "-device virtio-net-device,netdev=n0";
        let client = format!(
            "net.test=client net.ip=dhcp net.peer=10.0.2.2 net.port={port} \
             net.udp={USER_UDP} net.bytes={USER_BYTES} net.ms={NET_MS}"
        );
        let mut m = match build(
            &format!("-netdev user,id=n0 {nic}"),
            ctx.guest,
            &client,
            &mut Hubs::default(),
        ) {
            Ok(m) => m,
            Err(e) => return fail(e, None),
        };
        let co = match m.run(NET_TIMEOUT) {
            Ok(o) => o,
            Err(e) => return fail(format!("client: {e}"), None),
        };
        let checked = passed("client", &co)
            .and_then(|()| {
                said(
                    "client",
                    &co,
                    "net: dhcp 10.0.2.15/24 router 10.0.2.2 dns 10.0.2.3",
                )
            })
            .and_then(|()| {
                said(
                    "client",
                    &co,
                    &format!("net: udp {USER_UDP}/{USER_UDP} echoed"),
                )
            })
            .and_then(|()| {
                said(
                    "client",
                    &co,
                    &format!("net: tcp {USER_BYTES} bytes echoed ok"),
                )
            });
        if let Err(e) = checked {
            return fail(e, Some(co));
        }
        ctx.notes
            .push(format!("client: {} | {}", co.verdict, co.exits));
        // The guest as a server behind hostfwd.
        let fwd = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(a) => a,
            Err(e) => return fail(format!("a free port: {e}"), None),
        };
        let serve = format!("net.test=serve net.ip=dhcp net.bytes={USER_BYTES} net.ms={NET_MS}");
        let options = format!("-netdev user,id=n0,hostfwd=tcp:{fwd}-:7 {nic}");
        let mut m = match build(&options, ctx.guest, &serve, &mut Hubs::default()) {
            Ok(m) => m,
            Err(e) => return fail(e, None),
        };
        let (out, host) = std::thread::scope(|scope| {
            let host = scope.spawn(|| {
                let s = connect_forwarded(fwd, Duration::from_secs(60))?;
                netns::tcp_echo_on(s, USER_BYTES, Duration::from_secs(60))
            });
            let out = m.run(NET_TIMEOUT);
            (
                out,
                host.join()
                    .unwrap_or_else(|_| Err("the host side panicked".into())),
            )
        });
        let o = match out {
            Ok(o) => o,
            Err(e) => return fail(format!("server: {e}"), None),
        };
        let result = match (passed("server", &o), host) {
            (Err(e), Err(h)) => Err(format!("{e}\nhost side: {h}")),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Err(h)) => Err(format!("host side through hostfwd {fwd}: {h}")),
            (Ok(()), Ok(note)) => {
                ctx.notes
                    .push(format!("hostfwd {fwd} -> guest port 7: {note}"));
                said("server", &o, "net: dhcp 10.0.2.15/24")
            }
        };
        CustomRun {
            result,
            outcome: Some(o),
            skipped: None,
        }
    }))
}

/// The `net` guest's ELF: `GUEST_NET`, or `net` in the guests' output
/// directory (a directory bin, `src/bin/net/main.rs`, is not exported by
/// name by the build script).
pub fn net_guest() -> Option<&'static str> {
    option_env!("GUEST_NET")
        .or(Some(concat!(env!("GUEST_DIR"), "/net")))
        .filter(|p| Path::new(p).is_file())
}

/// The net scenarios, in suite order.
pub(super) fn scenarios() -> Vec<Scenario> {
    let net = net_guest();
    vec![
        Scenario {
            name: "net_bridge",
            device: "virtio-net, irq",
            backend: "bridge via qemu-bridge-helper, in a netns",
            guest: net,
            setup: net_bridge,
        },
        Scenario {
            name: "net_tap",
            device: "virtio-net (mtu 65518), HMP set_link",
            backend: "tap in a netns (mtu 65520)",
            guest: net,
            setup: net_tap,
        },
        Scenario {
            name: "net_user",
            device: "virtio-net, DHCP",
            backend: "user (NAT to 127.0.0.1, hostfwd)",
            guest: net,
            setup: net_user,
        },
        Scenario {
            name: "net_hub_pair",
            device: "2 x virtio-net, 2 machines",
            backend: "hubport, hub 1 (one process)",
            guest: net,
            setup: net_hub_pair,
        },
        Scenario {
            name: "net_stream_pair",
            device: "2 x virtio-net, 2 processes",
            backend: "stream unix (server + client)",
            guest: net,
            setup: net_stream_pair,
        },
        Scenario {
            name: "net_filter",
            device: "virtio-net ctrl rx filter",
            backend: "stream unix, host peer",
            guest: net,
            setup: net_filter,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_frames_go_where_the_contract_says() {
        let g = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        assert_eq!(filter_dst(1, g), g);
        assert_eq!(filter_dst(4, g), [0xff; 6]);
        let f = text_frame(filter_dst(5, g), "table 5");
        assert_eq!(&f[..6], &[1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(&f[12..14], &ETHERTYPE);
        assert_eq!(&f[14..], b"table 5");
    }

    #[test]
    fn the_filter_peer_answers_each_ready_with_six_frames_and_done() {
        let dir = Workdir::new("filter-peer").unwrap();
        let path = dir.path("f.sock");
        let peer = filter_peer(UnixListener::bind(&path).unwrap());
        let mut g = UnixStream::connect(&path).unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut ready = Vec::new();
        ready.extend_from_slice(&[0xff; 6]);
        ready.extend_from_slice(&mac);
        ready.extend_from_slice(&ETHERTYPE);
        ready.extend_from_slice(b"READY strict");
        ready.resize(60, 0);
        send_frame(&mut g, &ready).unwrap();
        for k in 1..=6 {
            let f = recv_frame(&mut g).unwrap().unwrap();
            assert_eq!(f[..6], filter_dst(k, mac));
            assert_eq!(&f[14..], format!("strict {k}").as_bytes());
        }
        let done = recv_frame(&mut g).unwrap().unwrap();
        assert_eq!(done[..6], mac);
        assert_eq!(&done[14..], b"DONE strict");
        drop(g);
        let note = peer.join().unwrap().unwrap();
        assert!(note.ends_with("answered strict"), "{note}");
    }
}
