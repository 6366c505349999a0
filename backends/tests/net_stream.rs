//! `backends::net::stream`: QEMU's length-prefixed stream framing against
//! a raw socket peer and against itself.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use backends::net::stream::{SocketAddr, StreamNet};
use backends::net::{MAX_FRAME, NetBackend, NetError, Sent};

fn sock(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("netback-{}-{name}.sock", std::process::id()))
}

/// Waits (bounded, for liveness only) until `fd` is readable.
fn wait_readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded timeout.
    unsafe { libc::poll(&mut p, 1, 10_000) == 1 }
}

/// Receives the next frame, waiting on the readiness fd (bounded).
fn recv_wait(n: &mut StreamNet, buf: &mut [u8]) -> Result<usize, NetError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(len) = n.recv(buf)? {
            return Ok(len);
        }
        assert!(Instant::now() < deadline, "no frame came");
        wait_readable(n.readiness_fd().unwrap());
    }
}

fn server_with_raw_peer(name: &str) -> (StreamNet, UnixStream) {
    let path = sock(name);
    let mut s = StreamNet::server(SocketAddr::Unix(path.clone())).unwrap();
    assert!(!s.link_up());
    let peer = UnixStream::connect(&path).unwrap();
    assert!(wait_readable(s.readiness_fd().unwrap()));
    assert!(s.is_connected());
    assert!(s.link_up());
    (s, peer)
}

#[test]
fn frames_carry_a_four_byte_big_endian_length() {
    let (mut s, mut peer) = server_with_raw_peer("prefix");
    assert_eq!(s.send(&[b"abc", b"de"]).unwrap(), Sent::Done);
    let mut got = [0u8; 9];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\0\0\0\x05abcde");
    peer.write_all(b"\0\0\0\x03xyz\0\0\0\x01q").unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(recv_wait(&mut s, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"xyz");
    // The second frame came in the same read: it is there without waiting.
    assert_eq!(s.recv(&mut buf).unwrap(), Some(1));
    assert_eq!(buf[0], b'q');
    assert_eq!(s.recv(&mut buf).unwrap(), None);
}

#[test]
fn split_reads_are_buffered_until_the_frame_is_whole() {
    let (mut s, mut peer) = server_with_raw_peer("split");
    let mut buf = [0u8; 64];
    let wire = b"\0\0\0\x06split!";
    for (i, b) in wire.iter().enumerate() {
        peer.write_all(&[*b]).unwrap();
        peer.flush().unwrap();
        if i + 1 < wire.len() {
            // Let the byte arrive, then check nothing whole is reported.
            wait_readable(s.readiness_fd().unwrap());
            assert_eq!(s.recv(&mut buf).unwrap(), None, "after byte {i}");
        }
    }
    assert_eq!(recv_wait(&mut s, &mut buf).unwrap(), 6);
    assert_eq!(&buf[..6], b"split!");
}

#[test]
fn an_oversize_length_is_malformed_and_drops_the_peer_then_the_next_is_accepted() {
    let path = sock("oversize");
    let (mut s, mut peer) = {
        let mut s = StreamNet::server(SocketAddr::Unix(path.clone())).unwrap();
        let peer = UnixStream::connect(&path).unwrap();
        wait_readable(s.readiness_fd().unwrap());
        assert!(s.is_connected());
        (s, peer)
    };
    peer.write_all(&((MAX_FRAME as u32) + 1).to_be_bytes())
        .unwrap();
    let mut buf = vec![0u8; MAX_FRAME];
    let e = recv_wait(&mut s, &mut buf).unwrap_err();
    assert!(matches!(e, NetError::Malformed(_)), "{e}");
    assert!(!s.link_up());
    // The dropped peer sees end of file.
    let mut one = [0u8; 1];
    assert_eq!(peer.read(&mut one).unwrap(), 0);
    // A new peer is accepted and served.
    let mut peer2 = UnixStream::connect(&path).unwrap();
    peer2.write_all(b"\0\0\0\x02ok").unwrap();
    assert_eq!(recv_wait(&mut s, &mut buf).unwrap(), 2);
    assert!(s.link_up());
}

#[test]
fn a_maximal_frame_passes_and_a_small_buffer_is_too_big_then_the_stream_continues() {
    let (mut s, mut peer) = server_with_raw_peer("max");
    let big = vec![0x5au8; MAX_FRAME];
    let w = std::thread::spawn(move || {
        peer.write_all(&(MAX_FRAME as u32).to_be_bytes()).unwrap();
        peer.write_all(&big).unwrap();
        peer.write_all(b"\0\0\0\x0a0123456789\0\0\0\x01z").unwrap();
        peer
    });
    let mut buf = vec![0u8; MAX_FRAME];
    assert_eq!(recv_wait(&mut s, &mut buf).unwrap(), MAX_FRAME);
    assert!(buf.iter().all(|&b| b == 0x5a));
    let mut small = [0u8; 4];
    let e = recv_wait(&mut s, &mut small).unwrap_err();
    assert!(matches!(e, NetError::TooBig { len: 10, max: 4 }), "{e}");
    assert_eq!(recv_wait(&mut s, &mut small).unwrap(), 1);
    assert_eq!(small[0], b'z');
    drop(w.join().unwrap());
}

#[test]
fn with_no_peer_sends_are_dropped_and_counted_and_the_link_is_down() {
    let mut s = StreamNet::server(SocketAddr::Unix(sock("nopeer"))).unwrap();
    assert_eq!(s.send(&[b"lost"]).unwrap(), Sent::Done);
    assert_eq!(s.dropped(), 1);
    assert!(!s.link_up());
    let mut buf = [0u8; 8];
    assert_eq!(s.recv(&mut buf).unwrap(), None);
    let too_big = vec![0u8; MAX_FRAME + 1];
    assert!(matches!(s.send(&[&too_big]), Err(NetError::TooBig { .. })));
}

#[test]
fn peer_loss_then_a_client_with_reconnect_comes_back() {
    let path = sock("reconnect");
    let mut server = StreamNet::server(SocketAddr::Unix(path.clone())).unwrap();
    let mut client = StreamNet::client(
        SocketAddr::Unix(path.clone()),
        Some(Duration::from_millis(20)),
    )
    .unwrap();
    assert!(client.link_up());
    wait_readable(server.readiness_fd().unwrap());
    assert!(server.is_connected());
    client.send(&[b"one"]).unwrap();
    let mut buf = [0u8; 16];
    let n = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(n) = server.recv(&mut buf).unwrap() {
                break n;
            }
            assert!(Instant::now() < deadline);
            wait_readable(server.readiness_fd().unwrap());
        }
    };
    assert_eq!(&buf[..n], b"one");
    // The server goes away: the client sees the hang-up and goes down.
    drop(server);
    assert!(wait_readable(client.readiness_fd().unwrap()));
    assert_eq!(client.recv(&mut buf).unwrap(), None);
    assert!(!client.link_up());
    assert_eq!(client.send(&[b"void"]).unwrap(), Sent::Done);
    // A new server: the client redials when its timer fires.
    let mut server = StreamNet::server(SocketAddr::Unix(path)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.is_connected() {
        assert!(Instant::now() < deadline, "client never redialled");
        wait_readable(client.readiness_fd().unwrap());
    }
    client.send(&[b"two"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let n = loop {
        if let Some(n) = server.recv(&mut buf).unwrap() {
            break n;
        }
        assert!(Instant::now() < deadline);
        wait_readable(server.readiness_fd().unwrap());
    };
    assert_eq!(&buf[..n], b"two");
}

#[test]
fn busy_while_a_rest_is_pending_then_resume_when_the_peer_reads() {
    let (mut s, mut peer) = server_with_raw_peer("busy");
    let frame = vec![0xa5u8; 60_000];
    let mut sent = 0usize;
    // Fill the socket until a rest stays pending.
    while s.send(&[&frame[..1000], &frame[1000..]]).unwrap() == Sent::Done {
        sent += 1;
        assert!(sent < 10_000, "never busy");
    }
    // Busy is stable while nobody reads.
    assert_eq!(s.send(&[b"x"]).unwrap(), Sent::Busy);
    // The peer reads everything sent so far (whole frames, intact).
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut frame = vec![0u8; 60_000];
        for _ in 0..sent {
            let mut p = [0u8; 4];
            peer.read_exact(&mut p).unwrap();
            assert_eq!(u32::from_be_bytes(p), 60_000);
            peer.read_exact(&mut frame).unwrap();
            assert!(frame.iter().all(|&b| b == 0xa5));
        }
        let mut p = [0u8; 4];
        peer.read_exact(&mut p).unwrap();
        let mut x = vec![0u8; u32::from_be_bytes(p) as usize];
        peer.read_exact(&mut x).unwrap();
        x
    });
    // The readiness fd reports writability; the retried frame goes out.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(wait_readable(s.readiness_fd().unwrap()));
        if s.send(&[b"x"]).unwrap() == Sent::Done {
            break;
        }
        assert!(Instant::now() < deadline, "never resumed");
    }
    assert_eq!(reader.join().unwrap(), b"x");
}

#[test]
fn tcp_server_and_client_exchange_frames_both_ways() {
    let mut server = StreamNet::server(SocketAddr::Tcp("127.0.0.1:0".into())).unwrap();
    let port = server.local_port().unwrap();
    let mut client = StreamNet::client(SocketAddr::Tcp(format!("127.0.0.1:{port}")), None).unwrap();
    wait_readable(server.readiness_fd().unwrap());
    assert!(server.is_connected());
    let mut buf = [0u8; 64];
    for i in 0..20u8 {
        client.send(&[&[i; 20]]).unwrap();
        server.send(&[&[i; 30]]).unwrap();
    }
    for i in 0..20u8 {
        assert_eq!(recv_wait(&mut server, &mut buf).unwrap(), 20);
        assert_eq!(buf[0], i);
        assert_eq!(recv_wait(&mut client, &mut buf).unwrap(), 30);
        assert_eq!(buf[0], i);
    }
}

#[test]
fn a_client_without_reconnect_fails_when_nobody_listens() {
    let e = StreamNet::client(SocketAddr::Unix(sock("nobody")), None).unwrap_err();
    assert!(matches!(e, NetError::Io { .. }), "{e}");
}

#[test]
fn poll_link_accepts_a_waiting_peer_without_a_send_or_recv() {
    // A device does not send or receive while the link is down; poll_link
    // is what lets a server's link come up (and stops a pending connection
    // from keeping the readiness fd readable).
    let path = sock("poll-link");
    let mut n = StreamNet::server(SocketAddr::Unix(path.clone())).unwrap();
    assert!(!n.link_up());
    let _peer = UnixStream::connect(&path).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !n.link_up() && Instant::now() < deadline {
        wait_readable(n.readiness_fd().unwrap());
        n.poll_link();
    }
    assert!(n.link_up(), "the waiting peer was never accepted");
}
