//! `backends::net::dgram`: one frame per datagram, UDP and unix.

use std::net::UdpSocket;
use std::os::fd::RawFd;
use std::time::Duration;

use backends::net::dgram::DgramNet;
use backends::net::{MAX_FRAME, NetBackend, NetError, Sent};

fn wait_readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded timeout.
    unsafe { libc::poll(&mut p, 1, 10_000) == 1 }
}

#[test]
fn udp_pair_exchanges_whole_frames_both_ways() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut net =
        DgramNet::udp(Some("127.0.0.1:0"), &peer.local_addr().unwrap().to_string()).unwrap();
    let me = net.local_addr().unwrap();
    assert_eq!(net.send(&[b"head", b"body"]).unwrap(), Sent::Done);
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"headbody");
    assert_eq!(from, me);
    let mut got = [0u8; 64];
    assert_eq!(net.recv(&mut got).unwrap(), None);
    peer.send_to(b"reply", me).unwrap();
    peer.send_to(b"", me).unwrap();
    assert!(wait_readable(net.readiness_fd().unwrap()));
    assert_eq!(net.recv(&mut got).unwrap(), Some(5));
    assert_eq!(&got[..5], b"reply");
    assert!(wait_readable(net.readiness_fd().unwrap()));
    assert_eq!(net.recv(&mut got).unwrap(), Some(0));
}

#[test]
fn a_datagram_larger_than_the_buffer_is_too_big_and_consumed() {
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut net = DgramNet::udp(None, &peer.local_addr().unwrap().to_string()).unwrap();
    let me = net.local_addr().unwrap();
    let me = std::net::SocketAddr::from(([127, 0, 0, 1], me.port()));
    peer.send_to(&[1u8; 100], me).unwrap();
    peer.send_to(b"ok", me).unwrap();
    let mut small = [0u8; 10];
    assert!(wait_readable(net.readiness_fd().unwrap()));
    let e = net.recv(&mut small).unwrap_err();
    assert!(matches!(e, NetError::TooBig { len: 100, max: 10 }), "{e}");
    assert!(wait_readable(net.readiness_fd().unwrap()));
    assert_eq!(net.recv(&mut small).unwrap(), Some(2));
}

#[test]
fn sends_to_nobody_are_dropped_not_errors_and_oversize_is_refused() {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let a = dir.join(format!("netback-{pid}-dg-a.sock"));
    let b = dir.join(format!("netback-{pid}-dg-b.sock"));
    let _ = std::fs::remove_file(&b);
    let mut na = DgramNet::unix(&a, &b).unwrap();
    assert_eq!(na.send(&[b"into the void"]).unwrap(), Sent::Done);
    assert_eq!(na.dropped(), 1);
    let big = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(na.send(&[&big]), Err(NetError::TooBig { .. })));
    // Now the other end exists: unix datagrams flow both ways.
    let mut nb = DgramNet::unix(&b, &a).unwrap();
    na.send(&[b"hi"]).unwrap();
    nb.send(&[b"yo", b"!"]).unwrap();
    let mut buf = [0u8; 16];
    assert!(wait_readable(nb.readiness_fd().unwrap()));
    assert_eq!(nb.recv(&mut buf).unwrap(), Some(2));
    assert_eq!(&buf[..2], b"hi");
    assert!(wait_readable(na.readiness_fd().unwrap()));
    assert_eq!(na.recv(&mut buf).unwrap(), Some(3));
    assert_eq!(&buf[..3], b"yo!");
}
