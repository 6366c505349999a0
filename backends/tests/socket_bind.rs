//! `socket::bind_unix`: what a socket path may replace. QEMU replaces a
//! socket file left behind; we also refuse to delete anything else, or a
//! socket something still listens on.

use std::os::unix::net::UnixListener;

use backends::socket::bind_unix;

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sock");
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists(), "the socket file stays after its listener");
    let l = bind_unix(&path).expect("the stale socket is replaced");
    drop(l);
}

#[test]
fn a_live_listener_is_not_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.sock");
    let _live = UnixListener::bind(&path).expect("bind");
    let e = bind_unix(&path).expect_err("in use");
    assert!(e.to_string().contains("something is listening"), "{e}");
    assert!(e.to_string().contains("s.sock"), "{e}");
}

#[test]
fn another_kind_of_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("disk.img");
    std::fs::write(&path, b"data").expect("write");
    let e = bind_unix(&path).expect_err("not a socket");
    assert!(e.to_string().contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).expect("kept"), b"data");
}

#[test]
fn a_missing_directory_is_named() {
    let e = bind_unix(std::path::Path::new("/nonexistent-dir-for-test/s.sock"))
        .expect_err("no directory");
    assert!(
        e.to_string()
            .contains("the directory /nonexistent-dir-for-test does not exist"),
        "{e}"
    );
}
