//! `backends::net::tap` against the Linux kernel: a tap moved into a
//! network namespace of its own, given an address there and brought up;
//! an ARP request written through the backend is answered by the kernel,
//! and the reply comes back through the backend.
//!
//! Skips (saying why) without `/dev/net/tun`, `ip` or network namespaces;
//! with `HARNESS_REQUIRE_QEMU=1` (CI, where `/dev/kvm` exists) it fails
//! instead.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::{Duration, Instant};

use backends::net::tap::{TAP_VNET_HDR_LEN, Tap};
use backends::net::{NetBackend, Offloads, Sent};

fn skip_or_fail(name: &str, why: &str) {
    if std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{name}: {why} (HARNESS_REQUIRE_QEMU=1)");
    }
    eprintln!("skipping {name}: {why}");
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn wait_readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded timeout.
    unsafe { libc::poll(&mut p, 1, 1_000) == 1 }
}

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0x77, 0, 2];
const OUR_IP: [u8; 4] = [10, 77, 0, 2];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];

fn arp_request() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&OUR_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

fn is_arp_reply_to_us(frame: &[u8]) -> bool {
    frame.len() >= 42
        && frame[..6] == OUR_MAC
        && frame[12..14] == [0x08, 0x06]
        && frame[20..22] == [0, 2]
        && frame[28..32] == HOST_IP
        && frame[32..38] == OUR_MAC
        && frame[38..42] == OUR_IP
}

#[test]
fn arp_through_a_tap_in_a_netns_is_answered_by_the_kernel() {
    let name = "net_tap_arp";
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip_or_fail(name, "no /dev/net/tun");
    }
    let pid = std::process::id();
    let ns = Netns(format!("netback-{pid}"));
    if let Err(e) = ip(&["netns", "add", &ns.0]) {
        return skip_or_fail(name, &format!("no network namespaces: {e}"));
    }
    let ifname = format!("nbt{}", pid % 100_000);
    let mut tap = match Tap::open(&ifname) {
        Ok(t) => t,
        Err(e) => return skip_or_fail(name, &format!("cannot create a tap: {e}")),
    };
    assert_eq!(tap.name(), ifname);
    assert_eq!(tap.vnet_hdr_len(), TAP_VNET_HDR_LEN);
    tap.set_offloads(Offloads {
        csum: true,
        tso4: true,
        tso6: true,
        ufo: true,
    })
    .unwrap();
    tap.set_offloads(Offloads::default()).unwrap();
    ip(&["link", "set", &ifname, "netns", &ns.0]).unwrap();
    let exec = |args: &[&str]| {
        let mut all = vec!["netns", "exec", &ns.0, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    };
    exec(&["addr", "add", "10.77.0.1/24", "dev", &ifname]).unwrap();
    exec(&["link", "set", &ifname, "up"]).unwrap();

    // A zero virtio-net header (no offload: §5.1.6.2 flags 0, GSO_NONE).
    let hdr = [0u8; TAP_VNET_HDR_LEN];
    let req = arp_request();
    let mut buf = vec![0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(20);
    'outer: loop {
        assert!(Instant::now() < deadline, "no ARP reply from the kernel");
        assert_eq!(tap.send(&[&hdr, &req]).unwrap(), Sent::Done);
        while wait_readable(tap.readiness_fd().unwrap()) {
            while let Some(n) = tap.recv(&mut buf).unwrap() {
                assert!(n >= TAP_VNET_HDR_LEN);
                if is_arp_reply_to_us(&buf[TAP_VNET_HDR_LEN..n]) {
                    break 'outer;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
    }
}

#[test]
fn an_existing_tap_fd_is_taken_over_with_its_name_and_header() {
    let name = "net_tap_from_fd";
    if !std::path::Path::new("/dev/net/tun").exists() {
        return skip_or_fail(name, "no /dev/net/tun");
    }
    let ifname = format!("nbf{}", std::process::id() % 100_000);
    let tap = match Tap::open(&ifname) {
        Ok(t) => t,
        Err(e) => return skip_or_fail(name, &format!("cannot create a tap: {e}")),
    };
    // SAFETY: dup of an open fd returns a new fd or -1.
    let dup = unsafe { libc::dup(tap.as_raw_fd()) };
    assert!(dup >= 0);
    // SAFETY: `dup` is a fresh fd that nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(dup) };
    let mut other = Tap::from_fd(owned).unwrap();
    assert_eq!(other.name(), ifname);
    assert_eq!(other.vnet_hdr_len(), TAP_VNET_HDR_LEN);
    // The interface is down: a write is dropped and counted, not an error.
    let hdr = [0u8; TAP_VNET_HDR_LEN];
    assert_eq!(other.send(&[&hdr, &arp_request()]).unwrap(), Sent::Done);
    assert_eq!(other.dropped(), 1);
    let mut buf = [0u8; 64];
    assert_eq!(other.recv(&mut buf).unwrap(), None);
    // Not a tun fd at all.
    let null = std::fs::File::open("/dev/null").unwrap();
    assert!(Tap::from_fd(null.into()).is_err());
}
