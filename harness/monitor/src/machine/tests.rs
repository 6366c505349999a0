//! Realizing machines from options: every backend, every device, every
//! mistake named.

use super::*;
use crate::options;

fn mem() -> GuestRam {
    GuestRam::default()
}

fn realize(line: &str) -> Result<Vec<RealizedDevice>, MachineError> {
    let args: Vec<&str> = line.split_whitespace().collect();
    let cfg = options::parse(&args).expect(line);
    realize_devices(&cfg, &mem())
}

#[test]
fn devices_come_in_command_line_order_with_their_backends() {
    let dir = std::env::temp_dir().join(format!("machine-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("out.log");
    let line = format!(
        "-object rng-deterministic,id=r0,seed=7 -device virtio-rng-device,rng=r0 \
         -chardev file,id=c0,path={} -chardev null,id=c1 \
         -device virtio-serial-device,max_ports=2,ioeventfd=off \
         -device virtconsole,chardev=c0 -device virtserialport,chardev=c1,name=p1 \
         -object rng-builtin,id=r1 -device virtio-rng-device,rng=r1",
        out.display()
    );
    let devs = realize(&line).unwrap();
    let kinds: Vec<_> = devs.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            "virtio-rng-device",
            "virtio-serial-device",
            "virtio-rng-device"
        ]
    );
    assert_eq!(devs[0].backend, "rng-deterministic:7");
    assert_eq!(devs[0].notify, NotifyMode::Worker);
    assert_eq!(devs[1].notify, NotifyMode::Inline);
    assert!(devs[1].backend.starts_with("virtconsole<-file:"));
    assert!(devs[1].backend.ends_with("virtserialport<-null"));
    // max_ports=2 with MULTIPORT: 2 + 2 * 2 queues (§5.3.2).
    assert_eq!(devs[1].device.queue_max_sizes().len(), 6);
    assert_eq!(devs[2].backend, "rng-builtin");
    assert!(out.exists(), "the file chardev was created");
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(not(feature = "misbehave"))]
#[test]
fn misbehave_is_refused_without_the_feature() {
    let e =
        realize("-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0,misbehave=used-twice")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
    assert!(e.contains("misbehave"), "{e}");
}

#[cfg(feature = "misbehave")]
#[test]
fn misbehave_wraps_the_device_and_says_so() {
    let devs = realize(
        "-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0,misbehave=used-twice \
         -chardev null,id=c0 -device virtio-serial-device,misbehave=interrupt-storm \
         -device virtconsole,chardev=c0 \
         -netdev hubport,id=n0,hubid=0 \
         -device virtio-net-device,netdev=n0,misbehave=reset-never-clears \
         -object rng-builtin,id=r1 -device virtio-rng-device,rng=r1",
    )
    .unwrap();
    let modes: Vec<_> = devs
        .iter()
        .map(|d| match &d.device {
            DeviceBox::Misbehaving(m) => Some(m.mode()),
            _ => None,
        })
        .collect();
    assert_eq!(
        modes,
        [
            Some(Misbehave::UsedTwice),
            Some(Misbehave::InterruptStorm),
            Some(Misbehave::ResetNeverClears),
            None
        ]
    );
    assert_eq!(devs[0].backend, "rng-builtin, misbehave=used-twice");
    assert!(devs[1].backend.ends_with(", misbehave=interrupt-storm"));
    // The wrapper is the device as the slot sees it.
    use virtio_core::features::DeviceType;
    assert_eq!(devs[1].device.device_type(), DeviceType::Console);
    assert_eq!(devs[2].device.device_type(), DeviceType::Net);
    assert_eq!(devs[3].backend, "rng-builtin");
}

#[test]
fn egd_takes_its_chardev_and_waits_on_it() {
    let dir = std::env::temp_dir().join(format!("machine-egd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("egd.sock");
    let line = format!(
        "-chardev socket,id=e,path={},server=on -object rng-egd,id=r,chardev=e \
         -device virtio-rng-device,rng=r",
        sock.display()
    );
    let devs = realize(&line).unwrap();
    assert_eq!(devs.len(), 1);
    assert!(devs[0].backend.starts_with("rng-egd<-socket:unix:"));
    assert_eq!(devs[0].ready_fds.len(), 1, "the EGD socket is watched");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_chardev_kind_realizes_behind_a_port() {
    let dir = std::env::temp_dir().join(format!("machine-kinds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pipe = dir.join("p");
    for end in ["p.in", "p.out"] {
        let path = std::ffi::CString::new(dir.join(end).to_str().unwrap()).unwrap();
        // SAFETY: a valid C string; mkfifo creates a file, nothing else.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    }
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let line = format!(
        "-chardev null,id=a -chardev ringbuf,id=b -chardev pty,id=c \
         -chardev pipe,id=d,path={} -chardev socket,id=e,host=127.0.0.1,port={port} \
         -chardev socket,id=f,host=127.0.0.1,port=1,reconnect=5 \
         -chardev socket,id=g,path={},server=on \
         -device virtio-serial-device,max_ports=8 -device virtconsole,chardev=a \
         -device virtserialport,chardev=b -device virtserialport,chardev=c \
         -device virtserialport,chardev=d -device virtserialport,chardev=e \
         -device virtserialport,chardev=f -device virtserialport,chardev=g",
        pipe.display(),
        dir.join("g.sock").display()
    );
    let devs = realize(&line).unwrap();
    assert_eq!(devs.len(), 1);
    let b = &devs[0].backend;
    for want in [
        "virtconsole<-null",
        "virtserialport<-ringbuf",
        "virtserialport<-pty:/dev/pts/",
        "virtserialport<-pipe:",
        "virtserialport<-socket:tcp:127.0.0.1:",
        ",server",
    ] {
        assert!(b.contains(want), "{want} not in {b}");
    }
    // Sockets, the pty and the pipe can wake the device.
    assert!(devs[0].ready_fds.len() >= 4, "{:?}", devs[0].ready_fds);
    drop(devs);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn drives_become_blk_devices() {
    let dir = std::env::temp_dir().join(format!("machine-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let line = format!(
        "-drive if=none,id=d0,file={},format=raw,readonly=on \
         -device virtio-blk-device,drive=d0,serial=abc,num-queues=2,queue-size=64",
        img.display()
    );
    let devs = realize(&line).unwrap();
    assert_eq!(devs[0].kind, "virtio-blk-device");
    assert!(
        devs[0]
            .backend
            .contains("cache=writeback, aio=io_uring, readonly"),
        "{}",
        devs[0].backend
    );
    assert_eq!(devs[0].device.queue_max_sizes(), &[64, 64]);
    // The io_uring's completions wake the device.
    assert_eq!(devs[0].ready_fds.len(), 1);
    drop(devs);
    let devs = realize(&format!(
        "-drive if=none,id=d1,file={},format=raw,aio=threads \
         -device virtio-blk-device,drive=d1",
        img.display()
    ))
    .unwrap();
    assert!(
        devs[0].backend.ends_with("cache=writeback, aio=threads"),
        "{}",
        devs[0].backend
    );
    assert!(devs[0].ready_fds.is_empty());
    // A missing image names the drive.
    let err =
        realize("-drive if=none,id=dx,file=/nonexistent/d.img -device virtio-blk-device,drive=dx")
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("id=dx") && err.contains("/nonexistent/d.img"),
        "{err}"
    );
    // qcow2 cannot bypass the page cache.
    let err = realize(&format!(
        "-drive if=none,id=dq,file={},format=qcow2,cache=none",
        img.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("cache=none with format=qcow2"), "{err}");
    let err = realize(&format!(
        "-drive if=none,id=dq,file={},format=qcow2,aio=io_uring",
        img.display()
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("aio=io_uring with format=qcow2"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn netdevs_open_and_hub_ports_share_a_hub() {
    use backends::net::{NetBackend, Sent};
    let mut hubs = Hubs::default();
    let kind = NetdevKind::Hubport { hubid: 1 };
    let (mut a, what) = open_netdev("a", &kind, &mut hubs).unwrap();
    let (mut b, _) = open_netdev("b", &kind, &mut hubs).unwrap();
    assert_eq!(what, "hubport, hub 1");
    assert_eq!(a.send(&[b"frame"]).unwrap(), Sent::Done);
    let mut buf = [0u8; 64];
    assert_eq!(b.recv(&mut buf).unwrap(), Some(5));
    let (mut l, _) = open_netdev("l", &NetdevKind::Loopback, &mut hubs).unwrap();
    l.send(&[b"x", b"y"]).unwrap();
    assert_eq!(l.recv(&mut buf).unwrap(), Some(2));
    let Err(err) = open_netdev(
        "s",
        &NetdevKind::Stream {
            server: true,
            path: Some("/nonexistent/dir/n.sock".into()),
            inet: None,
        },
        &mut hubs,
    ) else {
        panic!("a socket in a missing directory opened");
    };
    let err = err.to_string();
    assert!(
        err.contains("id=s") && err.contains("/nonexistent/dir/n.sock"),
        "{err}"
    );
}

#[test]
fn net_devices_realize_with_default_macs() {
    let devs = realize(
        "-netdev loopback,id=l -netdev hubport,id=h,hubid=0 \
         -device virtio-net-device,netdev=l -device virtio-net-device,netdev=h,mq=on,queue-pairs=2",
    )
    .unwrap();
    assert_eq!(devs[0].kind, "virtio-net-device");
    assert_eq!(devs[0].backend, "loopback");
    // rx/tx pair + control queue; two pairs + control with mq.
    assert_eq!(devs[0].device.queue_max_sizes().len(), 3);
    assert_eq!(devs[1].device.queue_max_sizes().len(), 5);
    let mut mac = [0u8; 6];
    devs[1].device.read_config(0, &mut mac);
    assert_eq!(
        mac,
        [0x52, 0x54, 0, 0x12, 0x34, 0x57],
        "second NIC, next MAC"
    );
    assert_eq!(devs[1].ready_fds.len(), 1, "a hub port wakes its device");
}

#[test]
fn a_backend_that_cannot_open_is_an_error_naming_its_id() {
    let err = realize(
        "-object rng-random,id=rr,filename=/nonexistent/random -device virtio-rng-device,rng=rr",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("id=rr") && err.contains("/nonexistent/random"),
        "{err}"
    );
    let err = realize("-chardev file,id=cf,path=/nonexistent/dir/x.log")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("id=cf") && err.contains("/nonexistent/dir/x.log"),
        "{err}"
    );
}

/// Issue 16, finding 11: `-netdev tap,fd=N` with a descriptor that is not
/// a tap (here a file the test holds, standing in for the KVM fd or guest
/// RAM) is an error, and the descriptor stays open: the backend owns a
/// duplicate, never the caller's N.
#[test]
fn tap_fd_that_is_not_a_tap_is_refused_and_stays_open() {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open("/dev/null").unwrap();
    let fd = file.as_raw_fd();
    let err = realize(&format!(
        "-netdev tap,id=t,fd={fd} -device virtio-net-device,netdev=t"
    ))
    .unwrap_err()
    .to_string();
    assert!(err.contains("id=t"), "{err}");
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    assert!(flags >= 0, "fd {fd} was closed by the failed netdev");
    let again = realize("-netdev tap,id=t,fd=1000000 -device virtio-net-device,netdev=t")
        .unwrap_err()
        .to_string();
    assert!(again.contains("id=t"), "{again}");
    drop(file);
}
