//! The parser's tests: every option family, every mistake named.

use super::*;

fn p(s: &str) -> Result<MachineConfig, OptionError> {
    let args: Vec<&str> = s.split_whitespace().collect();
    parse(&args)
}

#[test]
fn the_issue_example_parses() {
    let c = p("-m 64M -machine microvm,memory-backend=mem0,acpi=off \
               -object memory-backend-memfd,id=mem0,size=64M \
               -object rng-random,id=rng0,filename=/dev/urandom -object rng-builtin,id=rng1 \
               -object rng-egd,id=rng2,chardev=c0 -chardev socket,id=c0,path=/tmp/egd.sock \
               -device virtio-rng-device,rng=rng0 -chardev file,id=c1,path=out.log \
               -device virtio-serial-device -device virtconsole,chardev=c1 \
               -kernel guest.elf -append console=hvc0")
    .unwrap();
    assert_eq!(c.memory, 64 << 20);
    assert_eq!(c.ram_backend().unwrap().kind, MemoryBackendKind::Memfd);
    assert!(c.ram_backend().unwrap().share);
    assert_eq!(c.rngs.len(), 3);
    assert_eq!(c.chardevs.len(), 2);
    assert_eq!(c.devices.len(), 3);
    assert_eq!(c.kernel, Some(PathBuf::from("guest.elf")));
    assert_eq!(c.append, "console=hvc0");
    let ram = c.ram_host_memory();
    assert_eq!(
        ram.kind,
        backends::hostmem::HostMemoryKind::Memfd { seal: true }
    );
    assert_eq!((ram.size, ram.share, ram.prealloc), (64 << 20, true, false));
    let plain = p("-m 32M").unwrap().ram_host_memory();
    assert_eq!(plain.kind, backends::hostmem::HostMemoryKind::Ram);
    assert_eq!(plain.size, 32 << 20);
}

#[test]
fn vhost_user_devices_take_a_unix_socket_client_chardev() {
    let c = p(
        "-chardev socket,id=vu,path=/tmp/b.sock -device vhost-user-blk,chardev=vu,num-queues=2 \
               -chardev socket,id=vr,path=/tmp/r.sock -device vhost-user-rng,chardev=vr \
               -chardev socket,id=vn,path=/tmp/n.sock -netdev vhost-user,id=n0,chardev=vn \
               -device virtio-net-device,netdev=n0",
    )
    .unwrap();
    assert!(c.uses_vhost_user());
    assert_eq!(c.vhost_user_chardevs(), vec!["vu", "vr", "vn"]);
    assert_eq!(
        c.devices[0],
        DeviceConfig::VhostUser {
            ty: VhostUserType::Blk {
                num_queues: 2,
                queue_size: 128
            },
            chardev: "vu".into(),
            ioeventfd: true,
        }
    );
    assert_eq!(c.devices[0].type_name(), "vhost-user-blk");
    assert_eq!(c.devices[1].type_name(), "vhost-user-rng");
    assert_eq!(
        c.socket_path("vr"),
        Some(std::path::Path::new("/tmp/r.sock"))
    );
    assert!(
        !p("-object rng-builtin,id=r -device virtio-rng-device,rng=r")
            .unwrap()
            .uses_vhost_user()
    );
    for (line, want) in [
        ("-device vhost-user-blk,chardev=nope", "nope"),
        (
            "-chardev socket,id=s,path=/tmp/x,server=on -device vhost-user-rng,chardev=s",
            "unix socket client",
        ),
        (
            "-chardev socket,id=s,host=127.0.0.1,port=1 -netdev vhost-user,id=n,chardev=s",
            "unix socket client",
        ),
        (
            "-chardev socket,id=s,path=/tmp/x -device vhost-user-rng,chardev=s \
             -device vhost-user-blk,chardev=s",
            "already used",
        ),
        (
            "-chardev socket,id=s,path=/tmp/x -device vhost-user-blk,chardev=s,num-queues=0",
            "num-queues",
        ),
        (
            "-chardev socket,id=s,path=/tmp/x -device vhost-user-blk",
            "chardev",
        ),
        ("-netdev vhost-user,id=n", "chardev"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn misbehave_takes_every_mode_on_every_virtio_device_and_refuses_others() {
    for m in Misbehave::ALL {
        let c = p(&format!(
            "-object rng-builtin,id=r -device virtio-rng-device,rng=r,misbehave={m} \
             -device virtio-serial-device,misbehave={m} \
             -netdev hubport,id=n,hubid=0 -device virtio-net-device,netdev=n,misbehave={m} \
             -object cryptodev-backend-builtin,id=c -device virtio-crypto-device,cryptodev=c,misbehave={m}"
        ))
        .unwrap();
        for d in &c.devices {
            let got = match d {
                DeviceConfig::Rng { misbehave, .. }
                | DeviceConfig::Serial { misbehave, .. }
                | DeviceConfig::Net { misbehave, .. }
                | DeviceConfig::Crypto { misbehave, .. }
                | DeviceConfig::Blk { misbehave, .. } => *misbehave,
                DeviceConfig::Port { .. } | DeviceConfig::VhostUser { .. } => None,
            };
            assert_eq!(got, Some(m), "{d:?}");
        }
    }
    let c = p("-object rng-builtin,id=r -device virtio-rng-device,rng=r").unwrap();
    assert!(matches!(
        c.devices[0],
        DeviceConfig::Rng {
            misbehave: None,
            ..
        }
    ));
    let e = p("-object rng-builtin,id=r -device virtio-rng-device,rng=r,misbehave=sulk")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("misbehave='sulk'") && e.contains("interrupt-storm"),
        "{e}"
    );
    let e = p("-chardev null,id=c -device virtconsole,chardev=c,misbehave=used-twice")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown key 'misbehave'"), "{e}");
}

#[test]
fn every_mistake_names_what_is_wrong() {
    let cases = [
        ("-x 1", "unknown option '-x'"),
        ("-m", "option '-m' needs an argument"),
        ("-m 12Q", "-m: size='12Q' is not a RAM size of at least 1M"),
        ("-object rng-foo,id=a", "-object: unknown type 'rng-foo'"),
        (
            "-object rng-builtin,id=a,colour=red",
            "-object rng-builtin: unknown key 'colour'",
        ),
        ("-object rng-builtin", "-object rng-builtin: missing 'id='"),
        (
            "-object rng-builtin,id=a -object rng-builtin,id=a",
            "id 'a' is defined more than once",
        ),
        (
            "-device virtio-rng-device,rng=nope",
            "-device virtio-rng-device: rng='nope' does not name an rng object",
        ),
        (
            "-chardev null,id=c -device virtio-rng-device,rng=c",
            "-device virtio-rng-device: rng='c' does not name an rng object",
        ),
        (
            "-object rng-egd,id=r,chardev=c9",
            "-object rng-egd,id=r: chardev='c9' does not name a chardev",
        ),
        (
            "-chardev socket,id=s",
            "give exactly one of path= or host=/port=",
        ),
        (
            "-chardev socket,id=s,port=99999",
            "-chardev: port='99999' is not a port number",
        ),
        (
            "-object memory-backend-ram,id=m,size=1M,share=maybe",
            "-object: share='maybe' is not on or off",
        ),
        (
            "-m 64M -machine microvm,memory-backend=m -object memory-backend-ram,id=m,size=32M",
            "-m is 67108864 bytes but memory backend 'm' has 33554432 bytes",
        ),
        (
            "-chardev null,id=c -device virtconsole,chardev=c",
            "needs a -device virtio-serial-device before it",
        ),
        (
            "-object rng-builtin,id=a,id=b",
            "-object: key 'id' given more than once",
        ),
        (
            "-kernel a -kernel b",
            "option '-kernel' given more than once",
        ),
        (
            "-chardev null,id=c -object rng-egd,id=r,chardev=c \
             -device virtio-serial-device -device virtconsole,chardev=c",
            "-device virtconsole,chardev=c: chardev 'c' is already used by -object rng-egd,id=r",
        ),
        (
            "-object rng-builtin,id=r -device virtio-rng-device,rng=r \
             -device virtio-rng-device,rng=r",
            "rng 'r' is already used by another device",
        ),
        (
            "-chardev null,id=a -chardev null,id=b -device virtio-serial-device,max_ports=1 \
             -device virtconsole,chardev=a -device virtserialport,chardev=b",
            "virtserialport,chardev=b: the virtio-serial-device has no port left (max_ports)",
        ),
        (
            "-object rng-builtin,id=r -device virtio-rng-device,rng=r,ioeventfd=maybe",
            "-device: ioeventfd='maybe' is not on or off",
        ),
        (
            "-object cryptodev-backend-builtin,id=c,queues=0",
            "-object: queues='0' is not 1 to 64",
        ),
        (
            "-object cryptodev-backend-builtin,id=c,cipher=des",
            "-object cryptodev-backend-builtin: unknown key 'cipher'",
        ),
        (
            "-object rng-builtin,id=r -device virtio-crypto-device,cryptodev=r",
            "-device virtio-crypto-device: cryptodev='r' does not name a cryptodev object",
        ),
        (
            "-object cryptodev-backend-builtin,id=c -device virtio-crypto-device,cryptodev=c \
             -device virtio-crypto-device,cryptodev=c",
            "cryptodev 'c' is already used by another device",
        ),
        (
            "-device virtio-crypto-device",
            "-device virtio-crypto-device: missing 'cryptodev='",
        ),
    ];
    for (line, want) in cases {
        let err = p(line).expect_err(line).to_string();
        assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
    }
}

#[test]
fn drives_and_blk_devices_parse_in_both_styles() {
    let c = p(
        "-drive if=none,id=d0,file=disk.img,format=qcow2,readonly=on,cache=none,discard=unmap,aio=threads \
               -blockdev driver=file,node-name=f1,filename=raw.img,cache.direct=on,aio=io_uring \
               -blockdev driver=raw,node-name=d1,file=f1 \
               -blockdev driver=raw,node-name=d2,file.driver=file,file.filename=b.img,read-only=on \
               -device virtio-blk-device,drive=d0,serial=abc,num-queues=4,queue-size=128 \
               -device virtio-blk-device,drive=d1,discard=off,ioeventfd=off \
               -device virtio-blk-device,drive=d2",
    )
    .unwrap();
    assert_eq!(
        c.drives[0],
        DriveConfig {
            id: "d0".into(),
            path: "disk.img".into(),
            format: DiskFormat::Qcow2,
            read_only: true,
            cache: CacheMode::None,
            discard: true,
            aio: AioMode::Threads,
        }
    );
    assert_eq!(c.drives[1].path, PathBuf::from("raw.img"));
    assert_eq!(c.drives[1].cache, CacheMode::None);
    assert_eq!(c.drives[1].aio, AioMode::IoUring);
    assert_eq!(c.drives[2].aio, AioMode::Default);
    assert_eq!(c.drives[1].format, DiskFormat::Raw);
    assert!(c.drives[2].read_only);
    assert_eq!(
        c.devices[0],
        DeviceConfig::Blk {
            drive: "d0".into(),
            serial: Some("abc".into()),
            num_queues: Some(4),
            queue_size: 128,
            discard: true,
            write_zeroes: true,
            ioeventfd: true,
            misbehave: None,
        }
    );
    assert!(matches!(
        c.devices[1],
        DeviceConfig::Blk {
            discard: false,
            ioeventfd: false,
            ..
        }
    ));
}

#[test]
fn drive_mistakes_name_what_is_wrong() {
    let cases = [
        (
            "-drive if=virtio,id=d,file=x",
            "-drive: if='virtio' is not none",
        ),
        ("-drive if=none,file=x", "-drive drive: missing 'id='"),
        (
            "-drive id=d,file=x,format=vmdk",
            "format='vmdk' is not raw or qcow2",
        ),
        (
            "-drive id=d,file=x,aio=native",
            "aio='native' is not threads or io_uring (aio=native, Linux AIO, is not implemented",
        ),
        (
            "-drive id=d,file=x,cache=unsafe",
            "cache='unsafe' is not writeback",
        ),
        (
            "-drive id=d,file=x,colour=red",
            "-drive drive: unknown key 'colour'",
        ),
        (
            "-drive id=d,file=x -drive id=d,file=y",
            "id 'd' is defined more than once",
        ),
        (
            "-device virtio-blk-device,drive=nope",
            "-device virtio-blk-device: drive='nope' does not name a drive",
        ),
        (
            "-drive id=d,file=x -device virtio-blk-device,drive=d -device virtio-blk-device,drive=d",
            "drive 'd' is already used by another device",
        ),
        (
            "-drive id=d,file=x -device virtio-blk-device,drive=d,serial=123456789012345678901",
            "at most 20 bytes",
        ),
        (
            "-drive id=d,file=x -device virtio-blk-device,drive=d,queue-size=100",
            "a power of two",
        ),
        (
            "-drive id=d,file=x -device virtio-blk-device,drive=d,num-queues=0",
            "1 to 1024",
        ),
        // Issue 16, finding 12: every count is bounded before anything is
        // sized by it (QEMU: at most (VIRTIO_QUEUE_MAX - 2) / 2 ports).
        (
            "-device virtio-serial-device,max_ports=4000000000",
            "max_ports='4000000000' is not 1 to 511",
        ),
        ("-device virtio-serial-device,max_ports=512", "1 to 511"),
        ("-device virtio-serial-device,max_ports=0", "1 to 511"),
        (
            "-blockdev driver=raw,node-name=d,file=nofile",
            "file='nofile' does not name an earlier -blockdev driver=file node",
        ),
        (
            "-blockdev driver=vdi,node-name=d,file.filename=x",
            "driver='vdi' is not file, raw or qcow2",
        ),
    ];
    for (line, want) in cases {
        let err = p(line).expect_err(line).to_string();
        assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
    }
}

/// §2.7: every virtio device takes `queue-size` (a power of two up to
/// 32768) and defaults to 1024, what QEMU's virtio-mmio reports as
/// `QueueNumMax` for every device.
#[test]
fn section_2_7_every_device_takes_a_queue_size_and_defaults_to_1024() {
    let c = p("-object rng-builtin,id=r -device virtio-rng-device,rng=r \
               -device virtio-serial-device -drive id=d,file=x,if=none \
               -device virtio-blk-device,drive=d -netdev loopback,id=n \
               -device virtio-net-device,netdev=n")
    .unwrap();
    let sizes: Vec<u16> = c
        .devices
        .iter()
        .filter_map(|d| match d {
            DeviceConfig::Rng { queue_size, .. }
            | DeviceConfig::Serial { queue_size, .. }
            | DeviceConfig::Blk { queue_size, .. }
            | DeviceConfig::Net { queue_size, .. } => Some(*queue_size),
            _ => None,
        })
        .collect();
    assert_eq!(sizes, [1024; 4]);
    let c = p(
        "-object rng-builtin,id=r -device virtio-rng-device,rng=r,queue-size=32768 \
               -device virtio-serial-device,queue-size=2",
    )
    .unwrap();
    assert!(matches!(
        c.devices[0],
        DeviceConfig::Rng {
            queue_size: 32768,
            ..
        }
    ));
    assert!(matches!(
        c.devices[1],
        DeviceConfig::Serial { queue_size: 2, .. }
    ));
    for bad in ["0", "3", "65536", "4294967296", "x"] {
        let e = p(&format!(
            "-object rng-builtin,id=r -device virtio-rng-device,rng=r,queue-size={bad}"
        ))
        .expect_err(bad)
        .to_string();
        assert!(e.contains("queue-size"), "{bad}: {e}");
    }
}

#[test]
fn netdevs_and_net_devices_parse() {
    let c = p("-netdev loopback,id=l -netdev hubport,id=h,hubid=3 \
               -netdev stream,id=s,server=on,addr.type=unix,addr.path=/tmp/n.sock \
               -netdev stream,id=t,addr.type=inet,addr.host=127.0.0.1,addr.port=5555 \
               -netdev dgram,id=d,local.type=inet,local.host=127.0.0.1,local.port=1,remote.type=inet,remote.host=127.0.0.1,remote.port=2 \
               -netdev tap,id=tp,ifname=tap0,script=no,downscript=no \
               -device virtio-net-device,netdev=l,mac=52:54:00:aa:bb:cc,mq=on,queue-pairs=4 \
               -device virtio-net-device,netdev=h")
    .unwrap();
    assert_eq!(c.netdevs[1].1, NetdevKind::Hubport { hubid: 3 });
    assert_eq!(
        c.netdevs[3].1,
        NetdevKind::Stream {
            server: false,
            path: None,
            inet: Some("127.0.0.1:5555".into())
        }
    );
    assert_eq!(
        c.netdevs[5].1,
        NetdevKind::Tap {
            ifname: Some("tap0".into()),
            fd: None
        }
    );
    assert_eq!(
        c.devices[0],
        DeviceConfig::Net {
            id: None,
            netdev: "l".into(),
            mtu: None,
            mac: Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]),
            queue_pairs: Some(4),
            queue_size: DEFAULT_QUEUE_SIZE,
            ioeventfd: true,
            misbehave: None,
        }
    );
    let cases = [
        ("-netdev tap,id=t", "give exactly one of ifname= or fd="),
        (
            "-netdev tap,id=t,ifname=x,script=/etc/qemu-ifup",
            "scripts are not run",
        ),
        ("-netdev hubport,id=h", "missing 'hubid='"),
        (
            "-netdev stream,id=s,addr.type=vsock",
            "addr.type='vsock' is not unix or inet",
        ),
        ("-netdev slirp,id=u", "-netdev: unknown type 'slirp'"),
        (
            "-netdev loopback,id=l -device virtio-net-device,netdev=l,mac=52:54",
            "is not a MAC address",
        ),
        (
            "-netdev loopback,id=l -device virtio-net-device,netdev=l,queue-pairs=2",
            "1 without mq=on",
        ),
        (
            "-device virtio-net-device,netdev=x",
            "netdev='x' does not name a netdev",
        ),
        (
            "-netdev loopback,id=l -device virtio-net-device,netdev=l -device virtio-net-device,netdev=l",
            "netdev 'l' is already used by another device",
        ),
    ];
    for (line, want) in cases {
        let err = p(line).expect_err(line).to_string();
        assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
    }
}

#[test]
fn commas_escape_and_sizes_parse() {
    let c = p("-chardev file,id=c,path=/tmp/a,,b").unwrap();
    assert_eq!(
        c.chardevs[0].1,
        ChardevKind::File {
            path: "/tmp/a,b".into(),
            input_path: None
        }
    );
    assert_eq!(parse_size("4K"), Some(4096));
    assert_eq!(parse_size("0x1000"), Some(4096));
    assert_eq!(parse_size("1G"), Some(1 << 30));
    assert_eq!(parse_size("99999999999T"), None);
    assert_eq!(parse_size(""), None);
    assert_eq!(p("-m 128").unwrap().memory, 128 << 20);
}

#[test]
fn monitors_parse_in_both_spellings() {
    let c = p("-monitor unix:/tmp/m.sock,server=on,wait=off -qmp unix:/tmp/q.sock,server,nowait")
        .unwrap();
    assert_eq!(
        c.monitors,
        [
            MonitorConfig {
                protocol: MonitorProtocol::Hmp,
                path: "/tmp/m.sock".into()
            },
            MonitorConfig {
                protocol: MonitorProtocol::Qmp,
                path: "/tmp/q.sock".into()
            }
        ]
    );
    for (line, want) in [
        ("-monitor stdio", "unix:PATH"),
        ("-monitor unix:/tmp/m", "only server=on"),
        ("-qmp unix:/tmp/m,server=on", "only wait=off"),
        (
            "-qmp unix:/tmp/m,server,nowait,colour=red",
            "unknown key 'colour'",
        ),
        ("-monitor unix:,server,nowait", "a socket path"),
        (
            "-monitor unix:/tmp/m,server,nowait -qmp unix:/tmp/m,server,nowait",
            "used twice",
        ),
    ] {
        let err = p(line).expect_err(line).to_string();
        assert!(err.contains(want), "{line}: got '{err}', want '{want}'");
    }
}

#[test]
fn net_devices_take_an_id_and_an_mtu() {
    let c = p("-netdev loopback,id=l -device virtio-net-device,netdev=l,id=nic0,host_mtu=9000")
        .unwrap();
    let DeviceConfig::Net { id, mtu, .. } = &c.devices[0] else {
        panic!("not a net device");
    };
    assert_eq!(id.as_deref(), Some("nic0"));
    assert_eq!(*mtu, Some(9000));
    let err = p("-netdev loopback,id=l -device virtio-net-device,netdev=l,host_mtu=70000")
        .unwrap_err()
        .to_string();
    assert!(err.contains("68 to 65535"), "{err}");
}

/// QEMU's spelling of the builtin cryptodev and the crypto device.
#[test]
fn cryptodev_objects_and_crypto_devices_parse() {
    let c = p("-object cryptodev-backend-builtin,id=c0,queues=4 \
               -device virtio-crypto-device,cryptodev=c0,queue-size=128")
    .unwrap();
    assert_eq!(
        c.cryptodevs,
        vec![(
            "c0".to_string(),
            CryptodevConfig {
                queues: 4,
                backend: CryptodevBackend::Builtin
            }
        )]
    );
    assert_eq!(
        c.devices,
        vec![DeviceConfig::Crypto {
            cryptodev: "c0".into(),
            queue_size: 128,
            ioeventfd: true,
            misbehave: None,
        }]
    );
    let c = p("-object cryptodev-backend-builtin,id=c1 -device virtio-crypto-device,cryptodev=c1")
        .unwrap();
    assert_eq!(c.cryptodevs[0].1.queues, 1);
}

/// QEMU's `cryptodev-vhost-user`: the chardev must be a unix socket
/// client, used once; guest RAM must then be shareable.
#[test]
fn cryptodev_vhost_user_takes_a_socket_chardev() {
    let c = p("-chardev socket,id=vu,path=/tmp/c.sock \
               -object cryptodev-vhost-user,id=c0,chardev=vu,queues=2 \
               -device virtio-crypto-device,cryptodev=c0")
    .unwrap();
    assert_eq!(
        c.cryptodevs[0].1,
        CryptodevConfig {
            queues: 2,
            backend: CryptodevBackend::VhostUser {
                chardev: "vu".into()
            }
        }
    );
    assert!(c.uses_vhost_user());
    assert_eq!(c.vhost_user_chardevs(), vec!["vu"]);
    let err = p("-object cryptodev-vhost-user,id=c0 -device virtio-crypto-device,cryptodev=c0")
        .unwrap_err()
        .to_string();
    assert!(err.contains("chardev"), "{err}");
    let err = p("-chardev socket,id=vu,path=/tmp/c.sock,server=on,wait=off \
                 -object cryptodev-vhost-user,id=c0,chardev=vu \
                 -device virtio-crypto-device,cryptodev=c0")
    .unwrap_err()
    .to_string();
    assert!(err.contains("unix socket client"), "{err}");
    let err = p("-chardev socket,id=vu,path=/tmp/c.sock \
                 -object cryptodev-vhost-user,id=c0,chardev=vu \
                 -object cryptodev-vhost-user,id=c1,chardev=vu \
                 -device virtio-crypto-device,cryptodev=c0")
    .unwrap_err()
    .to_string();
    assert!(err.contains("vu"), "{err}");
}

#[test]
fn a_tpm_crb_in_front_of_swtpm_or_a_host_tpm_parses_as_qemu_spells_it() {
    let c = p("-chardev socket,id=chrtpm,path=/tmp/swtpm.ctrl \
               -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-crb,tpmdev=tpm0")
    .unwrap();
    assert_eq!(
        c.tpmdevs,
        vec![(
            "tpm0".to_string(),
            TpmdevKind::Emulator {
                chardev: "chrtpm".into()
            }
        )]
    );
    assert_eq!(
        c.tpm,
        Some(TpmConfig {
            tpmdev: "tpm0".into()
        })
    );
    assert!(c.devices.is_empty());
    // swtpm's socket is the backend's, not a chardev to open.
    assert_eq!(c.vhost_user_chardevs(), vec!["chrtpm"]);
    let c = p(
        "-tpmdev passthrough,id=tpm0,path=/dev/tpm1,cancel-path=/tmp/cancel \
               -device tpm-crb,tpmdev=tpm0,ppi=off,id=crb",
    )
    .unwrap();
    assert_eq!(
        c.tpmdevs[0].1,
        TpmdevKind::Passthrough {
            path: "/dev/tpm1".into(),
            cancel_path: Some("/tmp/cancel".into())
        }
    );
    let c = p("-tpmdev passthrough,id=t -device tpm-crb,tpmdev=t").unwrap();
    assert_eq!(
        c.tpmdevs[0].1,
        TpmdevKind::Passthrough {
            path: "/dev/tpm0".into(),
            cancel_path: None
        }
    );
}

#[test]
fn tpm_mistakes_are_named() {
    for (line, want) in [
        ("-tpmdev emulator,id=t", "chardev"),
        ("-tpmdev cuse,id=t", "cuse"),
        (
            "-tpmdev passthrough,id=t,path=/dev/tpm0,colour=red",
            "colour",
        ),
        ("-tpmdev passthrough,path=/dev/tpm0", "id"),
        ("-device tpm-crb", "tpmdev"),
        ("-device tpm-crb,tpmdev=nope", "nope"),
        (
            "-tpmdev passthrough,id=t -device tpm-crb,tpmdev=t,ppi=on",
            "ppi",
        ),
        (
            "-tpmdev passthrough,id=t -tpmdev passthrough,id=u \
             -device tpm-crb,tpmdev=t -device tpm-crb,tpmdev=u",
            "at most one TPM",
        ),
        ("-tpmdev passthrough,id=t -tpmdev passthrough,id=t", "t"),
        ("-tpmdev emulator,id=t,chardev=c", "'c'"),
        (
            "-chardev socket,id=c,path=/tmp/s,server=on -tpmdev emulator,id=t,chardev=c",
            "unix socket client",
        ),
        (
            "-chardev socket,id=c,path=/tmp/s -tpmdev emulator,id=t,chardev=c \
             -tpmdev emulator,id=u,chardev=c",
            "already used",
        ),
        (
            "-object rng-builtin,id=r -device tpm-crb,tpmdev=r",
            "a tpmdev",
        ),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn udp_memory_and_serial_chardevs_parse_as_qemu_spells_them() {
    let c = p(
        "-chardev udp,id=u,host=127.0.0.1,port=4555,localaddr=127.0.0.1,localport=4556 \
               -chardev udp,id=v,port=9 -chardev udp,id=w,host=::1,port=9,ipv6=on \
               -chardev memory,id=m,size=8K",
    )
    .unwrap();
    assert_eq!(
        c.chardevs[0].1,
        ChardevKind::Udp {
            remote: "127.0.0.1:4555".into(),
            local: Some("127.0.0.1:4556".into()),
            family: None,
        }
    );
    assert_eq!(
        c.chardevs[1].1,
        ChardevKind::Udp {
            remote: "localhost:9".into(),
            local: None,
            family: None,
        }
    );
    assert_eq!(
        c.chardevs[2].1,
        ChardevKind::Udp {
            remote: "[::1]:9".into(),
            local: None,
            family: Some(false),
        }
    );
    assert_eq!(c.chardevs[3].1, ChardevKind::Ringbuf { size: 8 << 10 });
    let c = p("-chardev serial,id=s,path=/dev/ttyS0 -chardev tty,id=t,path=/dev/pts/3").unwrap();
    assert_eq!(
        c.chardevs[1].1,
        ChardevKind::Serial {
            path: "/dev/pts/3".into()
        }
    );
    let e = p("-chardev parallel,id=p,path=/dev/parport0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("no /dev/parport"), "{e}");
    assert!(
        p("-chardev serial,id=s")
            .unwrap_err()
            .to_string()
            .contains("path")
    );
    for (line, want) in [
        ("-chardev udp,id=u", "port"),
        ("-chardev udp,id=u,port=70000", "70000"),
        ("-chardev udp,id=u,port=9,localport=65536", "localport"),
        ("-chardev udp,id=u,port=9,colour=red", "colour"),
        ("-chardev udp,id=u,port=0", "1 to 65535"),
        ("-chardev udp,id=u,port=9,ipv4=on,ipv6=on", "together"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn a_mux_chardev_is_shared_by_ports_and_by_nothing_else() {
    let c = p("-chardev stdio,id=s,mux=on -device virtio-serial-device \
               -device virtconsole,chardev=s -device virtserialport,chardev=s,name=b")
    .unwrap();
    assert_eq!(c.mux_chardevs, vec!["s".to_string()]);
    for (line, want) in [
        (
            "-chardev socket,id=s,path=/tmp/x,mux=on -object rng-egd,id=r,chardev=s",
            "mux=on",
        ),
        (
            "-chardev socket,id=s,path=/tmp/x,mux=on -device vhost-user-rng,chardev=s",
            "mux=on",
        ),
        (
            "-chardev stdio,id=s -device virtio-serial-device \
             -device virtconsole,chardev=s -device virtserialport,chardev=s",
            "already used",
        ),
        ("-chardev null,id=n,mux=maybe", "mux"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn l2tpv3_parses_as_qemu_spells_it_and_names_mistakes() {
    let c = p(
        "-netdev l2tpv3,id=n,src=127.0.0.1,dst=10.0.0.2,udp=on,srcport=1701,dstport=1702,\
               txsession=5,rxsession=6,cookie64=on,txcookie=18446744073709551615,rxcookie=1,\
               counter=on,offset=4",
    )
    .unwrap();
    assert_eq!(
        c.netdevs[0].1,
        NetdevKind::L2tpv3(backends::net::l2tpv3::L2tpv3Config {
            src: "127.0.0.1".into(),
            dst: "10.0.0.2".into(),
            udp: Some((1701, 1702)),
            ipv6: false,
            tx_session: 5,
            rx_session: Some(6),
            cookies: Some((u64::MAX, 1)),
            cookie64: true,
            counter: true,
            pin_counter: false,
            offset: 4,
        })
    );
    // cookie64=off still means 64-bit cookies, as in QEMU 7.2.
    let off = p("-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,cookie64=off,txcookie=1,rxcookie=2")
        .unwrap();
    assert!(matches!(&off.netdevs[0].1, NetdevKind::L2tpv3(c) if c.cookie64));
    let ip = p("-netdev l2tpv3,id=n,src=::1,dst=::1,ipv6=on,txsession=1").unwrap();
    assert!(matches!(&ip.netdevs[0].1, NetdevKind::L2tpv3(c) if c.udp.is_none() && c.ipv6));
    for (line, want) in [
        ("-netdev l2tpv3,id=n,src=a,dst=b", "txsession"),
        ("-netdev l2tpv3,id=n,dst=b,txsession=1", "src"),
        (
            "-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,udp=on,srcport=1",
            "both srcport",
        ),
        (
            "-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,dstport=1",
            "udp=on",
        ),
        (
            "-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,txcookie=1",
            "rxcookie",
        ),
        (
            "-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,txcookie=4294967296,rxcookie=1",
            "cookie64",
        ),
        (
            "-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,offset=257",
            "offset",
        ),
        ("-netdev l2tpv3,id=n,src=a,dst=b,txsession=x", "txsession"),
        (
            "-netdev l2tpv3,id=n,src=a,dst=b,txsession=1,udp=on,srcport=1,dstport=70000",
            "dstport",
        ),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn bridge_takes_qemus_defaults() {
    let c = p("-netdev bridge,id=n -netdev bridge,id=m,br=vhbr0,helper=/tmp/h").unwrap();
    assert_eq!(
        c.netdevs[0].1,
        NetdevKind::Bridge {
            br: "br0".into(),
            helper: "/usr/lib/qemu/qemu-bridge-helper".into()
        }
    );
    assert_eq!(
        c.netdevs[1].1,
        NetdevKind::Bridge {
            br: "vhbr0".into(),
            helper: "/tmp/h".into()
        }
    );
    let e = p("-netdev bridge,id=n,bridge=x").unwrap_err().to_string();
    assert!(e.contains("bridge"), "{e}");
}

#[test]
fn what_cannot_work_here_says_why() {
    for (line, want) in [
        ("-chardev vc,id=v", "display"),
        ("-chardev qemu-vdagent,id=v", "SPICE"),
        (
            "-netdev vhost-vdpa,id=n,vhostdev=/dev/vhost-vdpa-0",
            "/dev/vhost-vdpa-0 does not exist",
        ),
        ("-netdev vhost-vdpa,id=n", "vDPA"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn serial_ports_take_a_chardev_or_qemus_shorthands() {
    let c = p("-chardev null,id=n -serial chardev:n -serial file:/tmp/com2.log").unwrap();
    assert_eq!(
        c.serials,
        vec![Some("n".to_string()), Some("serial1".to_string())]
    );
    assert_eq!(
        c.chardevs[1],
        (
            "serial1".to_string(),
            ChardevKind::File {
                path: "/tmp/com2.log".into(),
                input_path: None
            }
        )
    );
    let c = p("-serial none -serial pty").unwrap();
    assert_eq!(c.serials, vec![None, Some("serial1".to_string())]);
    assert_eq!(c.chardevs[0].1, ChardevKind::Pty);
    for (line, want) in [
        ("-serial tcp-ish:localhost:4444", "chardev:ID"),
        ("-serial chardev:", "chardev:ID"),
        ("-serial null -serial null -serial null", "two UARTs"),
        ("-serial chardev:nope", "nope"),
        (
            "-chardev null,id=n -serial chardev:n -device virtio-serial-device -device virtconsole,chardev=n",
            "already used",
        ),
        ("-chardev null,id=serial0 -serial stdio", "serial0"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn user_netdev_takes_qemus_keys_and_repeats_forwards() {
    use backends::net::user::{GuestFwdTarget, Proto};
    let c = p(
        "-netdev user,id=n,net=192.168.5.0/24,restrict=on,hostname=vm1,\
               hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-:53,\
               guestfwd=tcp:192.168.5.100:80-cmd:cat,ipv6=off",
    )
    .unwrap();
    let NetdevKind::User(u) = &c.netdevs[0].1 else {
        panic!("{:?}", c.netdevs[0].1);
    };
    assert_eq!(u.host.to_string(), "192.168.5.2");
    assert_eq!(u.dns.to_string(), "192.168.5.3");
    assert_eq!(u.dhcp_start.to_string(), "192.168.5.15");
    assert!(u.restrict);
    assert_eq!(u.hostname.as_deref(), Some("vm1"));
    assert_eq!(u.hostfwd.len(), 2);
    assert_eq!(u.hostfwd[1].proto, Proto::Udp);
    assert_eq!(u.guestfwd[0].target, GuestFwdTarget::Cmd("cat".into()));
    // QEMU's defaults.
    let c = p("-netdev user,id=n").unwrap();
    let NetdevKind::User(u) = &c.netdevs[0].1 else {
        panic!();
    };
    assert_eq!(*u, backends::net::user::UserConfig::default());
    for (line, want) in [
        ("-netdev user,id=n,hostfwd=tcp::x-:22", "hostfwd"),
        ("-netdev user,id=n,guestfwd=10.0.2.9:1-cmd:x", "guestfwd"),
        ("-netdev user,id=n,net=10.0.2.0/31", "net"),
        ("-netdev user,id=n,dns=10.9.9.9", "dns"),
        ("-netdev user,id=n,host=x", "host"),
        ("-netdev user,id=n,tftp=/srv", "tftp"),
        ("-netdev user,id=n,ipv4=off", "IPv4 only"),
        ("-netdev user,id=n,restrict=maybe", "restrict"),
        ("-netdev user,id=n,smb=/x", "smb"),
        ("-netdev user,id=n,nonsense=1", "nonsense"),
        ("-netdev loopback,id=n,hostfwd=tcp::1-:2", "hostfwd"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn legacy_socket_netdev_maps_to_stream_and_dgram() {
    let c = p(
        "-netdev socket,id=a,listen=:1234 -netdev socket,id=b,connect=127.0.0.1:1234 \
               -netdev socket,id=c,udp=127.0.0.1:5000,localaddr=127.0.0.1:5001",
    )
    .unwrap();
    assert_eq!(
        c.netdevs[0].1,
        NetdevKind::Stream {
            server: true,
            path: None,
            inet: Some("0.0.0.0:1234".into())
        }
    );
    assert_eq!(
        c.netdevs[1].1,
        NetdevKind::Stream {
            server: false,
            path: None,
            inet: Some("127.0.0.1:1234".into())
        }
    );
    assert_eq!(
        c.netdevs[2].1,
        NetdevKind::Dgram {
            local: "127.0.0.1:5001".into(),
            remote: "127.0.0.1:5000".into()
        }
    );
    for (line, want) in [
        ("-netdev socket,id=n,mcast=230.0.0.1:1234", "multicast"),
        ("-netdev socket,id=n,fd=3", "fd="),
        ("-netdev socket,id=n", "exactly one"),
        ("-netdev socket,id=n,listen=:1,connect=h:2", "exactly one"),
        ("-netdev socket,id=n,connect=:1", "connect"),
        ("-netdev socket,id=n,listen=x", "listen"),
        ("-netdev socket,id=n,udp=h:1", "localaddr"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn serial_takes_qemus_older_chardev_spellings() {
    let c = p("-serial tcp::4444,server,nowait -serial unix:/tmp/a,,b.sock,server=on").unwrap();
    assert_eq!(
        c.chardevs[0].1,
        ChardevKind::Socket {
            path: None,
            tcp: Some("0.0.0.0:4444".into()),
            server: true,
            reconnect: None
        }
    );
    assert_eq!(
        c.chardevs[1].1,
        ChardevKind::Socket {
            path: Some("/tmp/a,b.sock".into()),
            tcp: None,
            server: true,
            reconnect: None
        }
    );
    let c = p("-serial udp:127.0.0.1:5000@:5001 -serial msmouse").unwrap();
    assert_eq!(
        c.chardevs[0].1,
        ChardevKind::Udp {
            remote: "127.0.0.1:5000".into(),
            local: Some("0.0.0.0:5001".into()),
            family: None
        }
    );
    assert_eq!(c.chardevs[1].1, ChardevKind::Msmouse);
    assert_eq!(
        c.serials,
        vec![Some("serial0".into()), Some("serial1".into())]
    );
    let c = p("-serial /dev/ttyS9 -serial pipe:/tmp/p,x").unwrap();
    assert_eq!(
        c.chardevs[0].1,
        ChardevKind::Serial {
            path: "/dev/ttyS9".into()
        }
    );
    assert_eq!(
        c.chardevs[1].1,
        ChardevKind::Pipe {
            path: "/tmp/p,x".into()
        }
    );
    for (line, want) in [
        ("-serial telnet::4444,server", "tcp:[HOST]:PORT"),
        ("-serial tcp:nohost", "tcp:[HOST]:PORT"),
        ("-serial tcp::70000", "port"),
        ("-serial unix:", "unix:PATH"),
        ("-serial udp:h:1@nolocal", "udp:"),
        ("-serial tcp::1,bogus=1", "bogus"),
        ("-serial vc", "msmouse"),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}

/// A plausible value for `prop`, so the parser gets as far as it can.
fn sample(prop: &registry::Prop) -> &'static str {
    match prop.name {
        "addr.type" => "unix",
        "local.type" | "remote.type" => "inet",
        "addr.path" | "path" | "mem-path" | "filename" | "input-path" | "cancel-path" => "/tmp/x",
        "mac" => "52:54:00:12:34:56",
        "virtio-id" => "4",
        "net" => "10.0.2.0/24",
        "dns" => "10.0.2.3",
        "dhcpstart" => "10.0.2.15",
        "hostfwd" => "tcp::1-:2",
        "guestfwd" => "tcp:10.0.2.100:1-cmd:true",
        "src" | "dst" | "local.host" | "remote.host" | "addr.host" => "127.0.0.1",
        "listen" | "connect" | "udp" | "localaddr" => "127.0.0.1:1",
        "script" | "downscript" => "no",
        "misbehave" => "used-twice",
        "seed" => "1",
        _ => match prop.ty {
            "bool" => "on",
            "size" => "1M",
            "str" | "string" => "x",
            _ => "1",
        },
    }
}

/// Every key the registry lists reaches the parser (which, under test,
/// asserts that every key it asks for is registered): for each type
/// built here, each key with the required ones and plausible values is
/// never an unknown key; a refused type says why.
#[test]
fn the_registry_and_the_parser_agree_on_every_key() {
    for t in registry::TYPES {
        let required: Vec<String> = t
            .all_props()
            .filter(|p| p.required)
            .map(|p| format!("{}={}", p.name, sample(p)))
            .collect();
        let base = if required.iter().any(|r| r.starts_with("id=")) {
            format!("{},{}", t.name, required.join(","))
        } else if required.is_empty() {
            t.name.to_string()
        } else {
            format!("{},{}", t.name, required.join(","))
        };
        let r = p(&format!("{} {base}", t.kind.option()));
        if let Some(why) = t.refused {
            let e = r.unwrap_err().to_string();
            assert!(
                e.contains("not available here") && e.contains(&why[..20]),
                "{e}"
            );
            continue;
        }
        for prop in t.all_props().filter(|p| !p.required) {
            let line = format!("{} {base},{}={}", t.kind.option(), prop.name, sample(prop));
            if let Err(OptionError::UnknownKey { key, .. }) = p(&line) {
                assert_ne!(key, prop.name, "{line}: the parser does not take it");
            }
        }
        // Help for each name it answers to.
        for name in std::iter::once(&t.name).chain(t.aliases) {
            let line = format!("{} {name},help", t.kind.option());
            match p(&line) {
                Err(OptionError::Help(text)) => {
                    assert!(text.starts_with(&format!("{} options:", t.name)), "{text}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }
    for (option, first) in [
        ("-device", "Storage devices:"),
        ("-netdev", "Available netdev backend types:"),
        ("-chardev", "Available chardev backend types: "),
        ("-object", "List of user creatable objects:"),
    ] {
        for q in ["help", "?"] {
            match p(&format!("{option} {q}")) {
                Err(OptionError::Help(text)) => assert!(text.starts_with(first), "{text}"),
                other => panic!("{option} {q}: {other:?}"),
            }
        }
    }
    let e = p("-netdev nope,help").unwrap_err().to_string();
    assert!(e.contains("unknown type 'nope' (see -netdev help)"), "{e}");
    let e = p("-netdev user,id=n,frob=1").unwrap_err().to_string();
    assert!(e.contains("(it takes: net, host, dns,"), "{e}");
    let e = p("-netdev vde,id=n").unwrap_err().to_string();
    assert!(e.contains("libvdeplug"), "{e}");
}

#[test]
fn parallel_takes_one_port_and_qemus_spellings() {
    assert_eq!(p("-parallel none").unwrap().parallel, None);
    assert_eq!(p("-parallel null").unwrap().parallel, Some(None));
    let c = p("-parallel file:/tmp/lpt.txt").unwrap();
    assert_eq!(c.parallel, Some(Some("parallel0".into())));
    assert_eq!(
        c.chardevs[0].1,
        ChardevKind::File {
            path: "/tmp/lpt.txt".into(),
            input_path: None
        }
    );
    let c = p("-chardev null,id=l -parallel chardev:l").unwrap();
    assert_eq!(c.parallel, Some(Some("l".into())));
    for (line, want) in [
        ("-parallel null -parallel none", "one parallel port"),
        ("-parallel chardev:nope", "nope"),
        ("-parallel bogus", "chardev:ID"),
        (
            "-chardev null,id=l -parallel chardev:l -serial chardev:l",
            "already used",
        ),
    ] {
        let e = p(line).unwrap_err().to_string();
        assert!(e.contains(want), "{line}: {e}");
    }
}
