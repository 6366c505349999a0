//! virtio-user against our own vhost-user backend, served in this process
//! (`monitor::serve`, the code behind `virtio-harness vhost-user`): the
//! guest drivers run unchanged over the register file and the frontend.
//! Third-party backends (qemu-storage-daemon, vhost-device-rng) are the
//! harness's tests.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_driver::transport::Completion;
use virtio_user::blk::{self, BlkJob, BlkPattern};
use virtio_user::{Error, UserDevice, UserRam, VhostUserKind};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("virtio-user-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Serves `options` on a socket in `dir` from a thread; returns the path
/// once it listens.
fn serve(dir: &Path, options: &[String]) -> PathBuf {
    let socket = dir.join("backend.sock");
    let (s, o) = (socket.clone(), options.to_vec());
    std::thread::spawn(move || {
        monitor::serve::serve_options(&s, &o, false, vhost_user::backend::DEFAULT_POLL_MAX)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "backend did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    // That probe connection was the first frontend; it is gone, and the
    // backend serves the next one.
    socket
}

fn opts(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn blk_backend(name: &str, mib: u64, queues: u16) -> (PathBuf, PathBuf) {
    let dir = tmp(name);
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let socket = serve(
        &dir,
        &opts(&format!(
            "-drive file={},id=d0,format=raw -device virtio-blk-device,drive=d0,num-queues={queues}",
            disk.display()
        )),
    );
    (dir, socket)
}

fn blk_kind(queues: u16) -> VhostUserKind {
    VhostUserKind::Blk {
        num_queues: queues,
        queue_size: 128,
    }
}

#[test]
fn blk_data_written_is_read_back_5_2_6() {
    let (dir, socket) = blk_backend("check", 16, 1);
    let ram = UserRam::new(16 << 20).unwrap();
    let dev = UserDevice::connect(&socket, blk_kind(1), &ram).unwrap();
    let r = blk::check(&dev, ram.hal().unwrap(), 256, 7).unwrap();
    assert_eq!(r.capacity, 16 << 11);
    assert_eq!(r.blocks, 256);
    assert!(r.flush);
    // What the backend wrote reached the file.
    let disk = std::fs::read(dir.join("disk.img")).unwrap();
    assert!(disk.iter().any(|b| *b != 0));
    assert_eq!(dev.dead(), None);
}

#[test]
fn blk_workloads_at_depth_on_two_queues_2_7() {
    let (_dir, socket) = blk_backend("jobs", 16, 2);
    let ram = UserRam::new(32 << 20).unwrap();
    for (pattern, depth, queues, completion) in [
        (BlkPattern::RandRead, 1, 1, Completion::Interrupt),
        (BlkPattern::RandRead, 128, 1, Completion::Interrupt),
        (BlkPattern::RandRead, 32, 2, Completion::Polling),
        (
            BlkPattern::RandWrite { flush_every: 32 },
            32,
            1,
            Completion::Interrupt,
        ),
        (BlkPattern::SeqRead, 8, 1, Completion::Polling),
    ] {
        let dev = UserDevice::connect(&socket, blk_kind(2), &ram).unwrap();
        let job = BlkJob {
            pattern,
            block: if pattern == BlkPattern::SeqRead {
                128 << 10
            } else {
                4096
            },
            depth,
            queues,
            requests: 3000,
            completion,
            ..BlkJob::default()
        };
        let r = blk::run(&dev, ram.hal().unwrap(), &job).unwrap();
        assert_eq!(r.requests, 3000, "{job:?}");
        assert_eq!((r.depth, r.queues), (depth, queues), "{job:?}");
        if let BlkPattern::RandWrite { flush_every } = pattern {
            assert_eq!(r.flushes, 3000 / u64::from(flush_every), "{job:?}");
        }
        assert!(r.latency.p50 <= r.latency.p99);
        assert!(r.kicks > 0);
        // Interrupts were asked for only when waiting on them.
        if completion == Completion::Polling {
            assert!(r.calls < r.requests / 4, "{r:?}");
        }
    }
}

#[test]
fn rng_bytes_arrive_5_4() {
    let dir = tmp("rng");
    let socket = serve(
        &dir,
        &opts("-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0"),
    );
    let ram = UserRam::new(4 << 20).unwrap();
    for completion in [Completion::Interrupt, Completion::Polling] {
        let dev = UserDevice::connect(&socket, VhostUserKind::Rng, &ram).unwrap();
        let job = virtio_user::rng::RngJob {
            completion,
            ..Default::default()
        };
        let r = virtio_user::rng::run(&dev, ram.hal().unwrap(), &job).unwrap();
        assert_eq!(r.bytes, 1 << 20);
        // Random bytes: about 4096 zeroes in a MiB, far from all of them.
        assert!(r.zeroes < 1 << 14, "{r:?}");
    }
}

#[test]
fn a_backend_that_hangs_up_is_a_clear_error_not_a_hang() {
    let dir = tmp("hangup");
    let socket = dir.join("gone.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let ram = UserRam::new(1 << 20).unwrap();
    let e = UserDevice::connect(&socket, VhostUserKind::Rng, &ram).unwrap_err();
    assert!(matches!(e, Error::Frontend(_)), "{e}");
    assert!(e.to_string().contains("closed"), "{e}");
}

#[test]
fn net_frames_come_back_from_a_loopback_netdev_5_1_6() {
    let dir = tmp("net");
    let socket = serve(
        &dir,
        &opts("-netdev loopback,id=n0 -device virtio-net-device,netdev=n0"),
    );
    let ram = UserRam::new(16 << 20).unwrap();
    for (size, completion) in [(64, Completion::Interrupt), (1514, Completion::Polling)] {
        let kind = VhostUserKind::Net {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            queue_size: 256,
        };
        let dev = UserDevice::connect(&socket, kind, &ram).unwrap();
        let job = virtio_user::net::NetJob {
            size,
            frames: 5000,
            completion,
            ..Default::default()
        };
        let r = virtio_user::net::run(&dev, ram.hal().unwrap(), &job).unwrap();
        assert_eq!((r.sent, r.received, r.lost()), (5000, 5000, 0), "{r:?}");
        // Batched: far fewer kicks than frames.
        assert!(r.kicks < r.sent / 4, "{r:?}");
    }
}

#[test]
fn console_output_reaches_the_backends_chardev_5_3_6() {
    let dir = tmp("console");
    let out = dir.join("out.txt");
    let socket = serve(
        &dir,
        &opts(&format!(
            "-chardev file,id=c0,path={} -device virtio-serial-device -device virtconsole,chardev=c0",
            out.display()
        )),
    );
    let ram = UserRam::new(4 << 20).unwrap();
    let kind = VhostUserKind::Generic {
        device_type: virtio_core::features::DeviceType::Console,
        num_vqs: 4,
        vq_size: 128,
        config_size: 12,
    };
    let dev = UserDevice::connect(&socket, kind, &ram).unwrap();
    let job = virtio_user::console::ConsoleJob {
        bytes: 256 << 10,
        ..Default::default()
    };
    let r = virtio_user::console::run(&dev, ram.hal().unwrap(), &job).unwrap();
    assert_eq!(r.bytes, 256 << 10);
    assert!(r.multiport, "our virtio-serial-device offers MULTIPORT");
    drop(dev);
    let written = std::fs::read(&out).unwrap();
    let want: Vec<u8> = (0..r.bytes).map(virtio_user::console::pattern).collect();
    assert_eq!(written.len(), want.len());
    assert!(written == want, "the chardev holds the pattern");
}

#[test]
fn bad_workload_options_are_refused_before_any_request() {
    let (_dir, socket) = blk_backend("badjob", 1, 1);
    let ram = UserRam::new(4 << 20).unwrap();
    for job in [
        BlkJob {
            block: 1000,
            ..BlkJob::default()
        },
        BlkJob {
            depth: 0,
            ..BlkJob::default()
        },
        // Larger than the 1 MiB disk.
        BlkJob {
            block: 2 << 20,
            ..BlkJob::default()
        },
    ] {
        let dev = UserDevice::connect(&socket, blk_kind(1), &ram).unwrap();
        let e = blk::run(&dev, ram.hal().unwrap(), &job).unwrap_err();
        assert!(matches!(e, Error::BadJob(_)), "{job:?}: {e}");
        assert_eq!(dev.stats().kicks, 0, "{job:?}");
    }
    let dev = UserDevice::connect(&socket, blk_kind(1), &ram).unwrap();
    let net = virtio_user::net::NetJob {
        size: 20,
        ..Default::default()
    };
    let e = virtio_user::net::run(&dev, ram.hal().unwrap(), &net).unwrap_err();
    assert!(matches!(e, Error::BadJob(_)), "{e}");
}
