//! Interop with QEMU's own framings: a QEMU (no guest, `-machine none`)
//! joins a `-netdev stream` client (to our [`StreamNet`] server) and a
//! `-netdev dgram` (to our [`DgramNet`]) on one hub, so a frame we send on
//! one comes back to us on the other, framed by QEMU.
//!
//! Skips (saying why) without `qemu-system-x86_64`; with
//! `HARNESS_REQUIRE_QEMU=1` it fails instead.

use std::os::fd::RawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backends::net::dgram::DgramNet;
use backends::net::stream::{SocketAddr, StreamNet};
use backends::net::{NetBackend, Sent};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded timeout.
    unsafe { libc::poll(&mut p, 1, 500) == 1 }
}

fn recv_until(net: &mut dyn NetBackend, buf: &mut [u8], want: &[u8], deadline: Instant) -> bool {
    while Instant::now() < deadline {
        wait_readable(net.readiness_fd().unwrap());
        while let Ok(Some(n)) = net.recv(buf) {
            if &buf[..n] == want {
                return true;
            }
        }
    }
    false
}

#[test]
fn qemu_hub_bridges_our_stream_and_dgram_backends() {
    let name = "net_qemu_interop";
    let require = std::env::var("HARNESS_REQUIRE_QEMU").as_deref() == Ok("1");
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(!require, "{name}: qemu-system-x86_64 missing");
        eprintln!("skipping {name}: qemu-system-x86_64 missing");
        return;
    }
    let pid = std::process::id();
    let path = std::env::temp_dir().join(format!("netback-{pid}-qemu.sock"));
    let mut stream = StreamNet::server(SocketAddr::Unix(path.clone())).unwrap();
    let mut dgram = DgramNet::udp(Some("127.0.0.1:0"), "127.0.0.1:9").unwrap();
    let ours = dgram.local_addr().unwrap().port();
    // QEMU's dgram end: a free port we learn by binding and releasing it.
    let qport = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    dgram = {
        drop(dgram);
        DgramNet::udp(
            Some(&format!("127.0.0.1:{ours}")),
            &format!("127.0.0.1:{qport}"),
        )
        .unwrap()
    };
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "none", "-nodefaults", "-nographic"])
        .args([
            "-netdev",
            &format!(
                "stream,id=s0,server=off,addr.type=unix,addr.path={}",
                path.display()
            ),
            "-netdev",
            &format!(
                "dgram,id=d0,local.type=inet,local.host=127.0.0.1,local.port={qport},\
                 remote.type=inet,remote.host=127.0.0.1,remote.port={ours}"
            ),
            "-netdev",
            "hubport,id=h0,hubid=0,netdev=s0",
            "-netdev",
            "hubport,id=h1,hubid=0,netdev=d0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => Kill(c),
        Err(e) => {
            assert!(!require, "{name}: cannot start QEMU: {e}");
            eprintln!("skipping {name}: cannot start QEMU: {e}");
            return;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stream.is_connected() {
        if let Ok(Some(st)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("QEMU exited ({st}) before connecting: {err}");
        }
        assert!(Instant::now() < deadline, "QEMU never connected");
        wait_readable(stream.readiness_fd().unwrap());
    }
    assert!(stream.link_up());
    let mut buf = vec![0u8; 4096];
    // Ours (stream, length-prefixed) -> QEMU hub -> ours (one datagram).
    let a: Vec<u8> = (0..100u8).collect();
    assert_eq!(stream.send(&[&a[..14], &a[14..]]).unwrap(), Sent::Done);
    let got_a = recv_until(&mut dgram, &mut buf, &a, deadline);
    assert!(
        got_a,
        "frame sent on the stream never came out of QEMU's dgram"
    );
    // And back: datagram -> QEMU hub -> stream framing.
    let b: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(dgram.send(&[&b]).unwrap(), Sent::Done);
    let got_b = recv_until(&mut stream, &mut buf, &b, deadline);
    assert!(
        got_b,
        "frame sent by datagram never came out of QEMU's stream"
    );
}
