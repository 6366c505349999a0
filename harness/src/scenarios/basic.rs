//! The rng, console and lifecycle rows of the suite.

use super::*;

pub(super) const MIB: usize = 1 << 20;

/// The console writes 64 KiB of the pattern to a file on port 0.
pub(super) fn console_write(dir: &Workdir, mode: &str, ioeventfd: &str) -> Result<Setup, String> {
    let f = dir.path("out.log");
    let mut s = Setup::new(
        &format!(
            "-chardev file,id=c0,path={} \
             -device virtio-serial-device,max_ports=1,ioeventfd={ioeventfd} \
             -device virtconsole,chardev=c0",
            f.display()
        ),
        format!("console.test=write console.bytes=65536 console.mode={mode}"),
    );
    s.check = Some(file_holds_pattern(f, 65536));
    Ok(s)
}

/// The console echoes what a socket peer sends (16 KiB) on port 0.
pub(super) fn console_echo(dir: &Workdir, mode: &str) -> Result<Setup, String> {
    let sock = dir.path("con.sock");
    let mut s = Setup::new(
        &format!(
            "-chardev socket,id=c0,path={},server=on \
             -device virtio-serial-device,max_ports=1 -device virtconsole,chardev=c0",
            sock.display()
        ),
        format!("console.test=echo console.bytes=16384 console.mode={mode}"),
    );
    s.peer = Some(echo_peer(sock, 16384));
    Ok(s)
}

/// Whether some socket has UDP port `port` bound (`/proc/net/udp`, the
/// local address column: `ADDR:PORT` in hex).
fn udp_port_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&needle))
            })
        })
    })
}

/// The console echoes what a UDP peer sends (16 KiB in 1 KiB datagrams)
/// through `-chardev udp`: the chardev is bound to a port the peer knows
/// and sends to the peer's; the peer starts once that port is taken.
pub(super) fn console_echo_udp(_dir: &Workdir) -> Result<Setup, String> {
    use std::net::UdpSocket;
    const N: usize = 16384;
    let peer = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("peer socket: {e}"))?;
    let remote = peer.local_addr().map_err(|e| e.to_string())?;
    // A port for the chardev: free now (a race with other programs the
    // scenario accepts: the machine then fails to bind, naming it). The
    // peer's socket stays open meanwhile, so the two differ.
    let local = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| format!("a free port: {e}"))?;
    let mut s = Setup::new(
        &format!(
            "-chardev udp,id=c0,host=127.0.0.1,port={},localaddr=127.0.0.1,localport={}              -device virtio-serial-device,max_ports=1 -device virtconsole,chardev=c0",
            remote.port(),
            local.port()
        ),
        format!("console.test=echo console.bytes={N} console.mode=irq"),
    );
    s.peer = Some(std::thread::spawn(move || {
        // Wait until the chardev has bound its port (the kernel's table
        // says so; binding it here to find out could steal it).
        let end = std::time::Instant::now() + TIMEOUT;
        while !udp_port_bound(local.port()) {
            if std::time::Instant::now() > end {
                return Err("the chardev never bound its port".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        peer.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let sent: Vec<u8> = (0..N).map(|i| (i * 7 + 3) as u8).collect();
        for chunk in sent.chunks(1024) {
            peer.send_to(chunk, local)
                .map_err(|e| format!("send: {e}"))?;
        }
        let mut back = Vec::with_capacity(N);
        let mut buf = vec![0u8; 65536];
        while back.len() < N {
            let (n, from) = peer
                .recv_from(&mut buf)
                .map_err(|e| format!("reading the echo ({} of {N} bytes back): {e}", back.len()))?;
            if from != local {
                return Err(format!("a datagram from {from}, not the chardev's {local}"));
            }
            back.extend_from_slice(&buf[..n]);
        }
        if back != sent {
            let at = back.iter().zip(&sent).position(|(a, b)| a != b);
            return Err(format!("echo differs at byte {at:?}"));
        }
        Ok(format!("UDP peer got its {N} bytes back"))
    }));
    Ok(s)
}

/// The console echoes 16 KiB through `-chardev serial`, a host terminal:
/// the slave side of a pty pair stands in for a serial port (these
/// machines have none), the peer writes and reads the master side.
pub(super) fn console_echo_serial(_dir: &Workdir) -> Result<Setup, String> {
    use backends::chardev::Chardev;
    use backends::chardev::os::PtyChardev;
    const N: usize = 16384;
    let mut pty = PtyChardev::open().map_err(|e| format!("pty: {e}"))?;
    let mut s = Setup::new(
        &format!(
            "-chardev serial,id=c0,path={} \
             -device virtio-serial-device,max_ports=1 -device virtconsole,chardev=c0",
            pty.slave_path().display()
        ),
        format!("console.test=echo console.bytes={N} console.mode=irq"),
    );
    s.peer = Some(std::thread::spawn(move || {
        let sent: Vec<u8> = (0..N).map(|i| (i * 7 + 3) as u8).collect();
        let end = std::time::Instant::now() + TIMEOUT;
        let (mut put, mut back) = (0, Vec::with_capacity(N));
        let mut buf = [0u8; 4096];
        while back.len() < N {
            if std::time::Instant::now() > end {
                return Err(format!("{} of {N} bytes back in time", back.len()));
            }
            if put < N {
                put += pty
                    .write(&sent[put..(put + 512).min(N)])
                    .map_err(|e| format!("pty write: {e}"))?;
            }
            let n = pty.read(&mut buf).map_err(|e| format!("pty read: {e}"))?;
            back.extend_from_slice(&buf[..n]);
            if n == 0 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if back != sent {
            let at = back.iter().zip(&sent).position(|(a, b)| a != b);
            return Err(format!("echo differs at byte {at:?}"));
        }
        Ok(format!(
            "pty peer got its {N} bytes back through the terminal"
        ))
    }));
    Ok(s)
}

/// `mux=on` with two frontends: the virtconsole echoes what the peer types
/// while it has the focus, through QEMU's escapes (`C-a h` answered with
/// the list of escapes, `C-a C-a` a literal `C-a`), and the second port
/// (a virtserialport the guest never opens) takes nothing meanwhile.
pub(super) fn console_echo_mux(dir: &Workdir) -> Result<Setup, String> {
    const N: usize = 8192;
    let sock = dir.path("mux.sock");
    let mut s = Setup::new(
        &format!(
            "-chardev socket,id=c0,path={},server=on,mux=on \
             -device virtio-serial-device,max_ports=2 -device virtconsole,chardev=c0 \
             -device virtserialport,chardev=c0,name=org.test.idle",
            sock.display()
        ),
        format!("console.test=echo console.bytes={N} console.mode=irq"),
    );
    s.peer = Some(std::thread::spawn(move || {
        let mut c = connect_within(&sock, TIMEOUT)?;
        c.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        // The data, C-a (0x01) written as the escape pair C-a C-a.
        let data: Vec<u8> = (0..N).map(|i| (i * 7 + 3) as u8).collect();
        let mut typed = b"\x01h".to_vec();
        for &b in &data {
            if b == 0x01 {
                typed.push(0x01);
            }
            typed.push(b);
        }
        c.write_all(&typed).map_err(|e| format!("send: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // The list's last line, then the echo.
        let last = b"C-a C-a  send C-a\r\n";
        loop {
            if let Some(at) = got.windows(last.len()).position(|w| w == last) {
                let body = &got[at + last.len()..];
                if body.len() >= N {
                    if body[..N] != data[..] {
                        let d = body.iter().zip(&data).position(|(a, b)| a != b);
                        return Err(format!("echo differs at byte {d:?}"));
                    }
                    return Ok(format!(
                        "mux peer got the escape list and its {N} bytes back"
                    ));
                }
            }
            let n = c
                .read(&mut buf)
                .map_err(|e| format!("reading ({} bytes so far): {e}", got.len()))?;
            if n == 0 {
                return Err(format!("closed after {} bytes", got.len()));
            }
            got.extend_from_slice(&buf[..n]);
        }
    }));
    Ok(s)
}

/// `-serial null -serial chardev:c0`: COM2, a 16550A on a socket chardev;
/// the `uart` guest echoes 4 KiB a socket peer sends, polling the line
/// status.
pub(super) fn uart_com2_echo(dir: &Workdir) -> Result<Setup, String> {
    const N: usize = 4096;
    let sock = dir.path("com2.sock");
    let mut s = Setup::new(
        &format!(
            "-chardev socket,id=c0,path={},server=on -serial null -serial chardev:c0",
            sock.display()
        ),
        format!("uart.bytes={N}"),
    );
    s.peer = Some(echo_peer(sock, N));
    s.check = Some(guest_reported("uart: echoed "));
    Ok(s)
}

/// `-serial chardev:f`: COM1's output also goes to a file chardev (and
/// stays in the run's log, where the verdict is read).
pub(super) fn uart_com1_to_file(dir: &Workdir) -> Result<Setup, String> {
    let f = dir.path("com1.log");
    let mut s = Setup::new(
        &format!("-chardev file,id=f,path={} -serial chardev:f", f.display()),
        "",
    );
    s.check = Some(Box::new(move |o| {
        let text = std::fs::read_to_string(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        if text.replace("\r\n", "\n") != o.serial {
            return Err(format!(
                "the file has {} bytes, the log {}",
                text.len(),
                o.serial.len()
            ));
        }
        if !text.contains("verdict: pass") {
            return Err("the file lacks the verdict line".into());
        }
        Ok(())
    }));
    Ok(s)
}

/// The deterministic source, every byte checked by the guest against the
/// SplitMix64 stream. `bytes`: 1 MiB in one mode (the scenario);
/// the other modes read 256 KiB, since guest instructions are what costs
/// here (the kvm_pvm host emulates them) and the check is per word.
pub(super) fn rng_deterministic(notify: &str, mode: &str, bytes: usize) -> Result<Setup, String> {
    Ok(Setup {
        check: Some(guest_reported("rng: ")),
        ..Setup::new(
            &format!(
                "-object rng-deterministic,id=r0,seed=42 -device virtio-rng-device,rng=r0,ioeventfd={notify}"
            ),
            format!("rng.bytes={bytes} rng.seed=42 rng.mode={mode}"),
        )
    })
}

/// The crypto guest's vectors (`harness/guests/src/bin/crypto.rs`).
pub const CRYPTO_VECTORS: u64 = 10;

/// The crypto guest's known answers against our device over the builtin
/// cryptodev: every algorithm it has a vector for must be advertised and
/// pass (§5.9), with `queues` data queues.
pub(super) fn crypto_builtin(notify: &str, mode: &str, queues: u16) -> Result<Setup, String> {
    Ok(Setup {
        check: Some(Box::new(|o| match guest_line(o, "crypto: ") {
            Some(l) if number_before(l, "vectors") == Some(CRYPTO_VECTORS) => Ok(()),
            Some(l) => Err(format!("not {CRYPTO_VECTORS} vectors passed: {l}")),
            None => Err("the guest printed no 'crypto: ' line".into()),
        })),
        ..Setup::new(
            &format!(
                "-object cryptodev-backend-builtin,id=c0,queues={queues} \
                 -device virtio-crypto-device,cryptodev=c0,ioeventfd={notify}"
            ),
            format!("crypto.mode={mode} crypto.require=all"),
        )
    })
}

/// The TPM: a swtpm on the scenario's directory behind `-tpmdev emulator`
/// and `-device tpm-crb`; the guest checks locality arbitration, starts
/// the TPM, measures and keeps an NV value; the PCR values it prints must
/// be the host's SHA-256 chain (`crate::swtpm::expected_pcrs`).
pub(super) fn tpm_crb(dir: &Workdir) -> Result<Setup, String> {
    let ctrl = dir.path("swtpm.ctrl");
    let swtpm = crate::swtpm::Swtpm::start(&dir.path("tpmstate"), &ctrl)
        .map_err(|e| format!("swtpm: {e}"))?;
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (pcr8, pcr9) = crate::swtpm::expected_pcrs();
    let (pcr8, pcr9) = (hex(&pcr8), hex(&pcr9));
    Ok(Setup {
        check: Some(Box::new(move |o| {
            // swtpm lives until the run is checked.
            let _swtpm = swtpm;
            for (what, want) in [("tpm: pcr8 ", &pcr8), ("tpm: pcr9 ", &pcr9)] {
                match guest_line(o, what) {
                    Some(l) if l.strip_prefix(what) == Some(want.as_str()) => {}
                    Some(l) => return Err(format!("{l}, want {want}")),
                    None => return Err(format!("the guest printed no '{what}' line")),
                }
            }
            Ok(())
        })),
        ..Setup::new(
            &crate::swtpm::tpm_options(&ctrl).join(" "),
            "tpm.arbitration=on tpm.nv=define",
        )
    })
}

pub(super) fn scenario_list() -> Vec<Scenario> {
    let crypto = option_env!("GUEST_CRYPTO");
    let rng = option_env!("GUEST_RNG");
    let console = option_env!("GUEST_CONSOLE");
    let lifecycle = option_env!("GUEST_LIFECYCLE");
    vec![
        Scenario {
            name: "tpm_crb_swtpm",
            device: "tpm-crb, five localities",
            backend: "tpm-emulator (swtpm), PCRs = host SHA-256",
            guest: option_env!("GUEST_TPM"),
            setup: tpm_crb,
        },
        Scenario {
            name: "crypto_builtin_irq_ioeventfd",
            device: "virtio-crypto, ioeventfd+irq",
            backend: "cryptodev-backend-builtin, 10 known-answer vectors",
            guest: crypto,
            setup: |_| crypto_builtin("on", "irq", 1),
        },
        Scenario {
            name: "crypto_builtin_poll_inline_2q",
            device: "virtio-crypto, inline+poll, 2 data queues",
            backend: "cryptodev-backend-builtin, 10 known-answer vectors",
            guest: crypto,
            setup: |_| crypto_builtin("off", "poll", 2),
        },
        Scenario {
            name: "rng_deterministic_irq_ioeventfd",
            device: "virtio-rng, ioeventfd+irq",
            backend: "rng-deterministic, 1 MiB",
            guest: rng,
            setup: |_| rng_deterministic("on", "irq", MIB),
        },
        Scenario {
            name: "rng_deterministic_poll_inline",
            device: "virtio-rng, inline+poll",
            backend: "rng-deterministic, 256 KiB",
            guest: rng,
            setup: |_| rng_deterministic("off", "poll", MIB / 4),
        },
        Scenario {
            name: "rng_deterministic_irq_inline",
            device: "virtio-rng, inline+irq",
            backend: "rng-deterministic, 256 KiB",
            guest: rng,
            setup: |_| rng_deterministic("off", "irq", MIB / 4),
        },
        Scenario {
            name: "rng_deterministic_poll_ioeventfd",
            device: "virtio-rng, ioeventfd+poll",
            backend: "rng-deterministic, 256 KiB",
            guest: rng,
            setup: |_| rng_deterministic("on", "poll", MIB / 4),
        },
        Scenario {
            name: "rng_builtin",
            device: "virtio-rng",
            backend: "rng-builtin (getrandom)",
            guest: rng,
            setup: |_| {
                Ok(Setup::new(
                    "-object rng-builtin,id=r0 -device virtio-rng-device,rng=r0",
                    format!("rng.bytes={MIB}"),
                ))
            },
        },
        Scenario {
            name: "rng_random_urandom",
            device: "virtio-rng",
            backend: "rng-random /dev/urandom",
            guest: rng,
            setup: |_| {
                Ok(Setup::new(
                    "-object rng-random,id=r0,filename=/dev/urandom -device virtio-rng-device,rng=r0",
                    format!("rng.bytes={MIB}"),
                ))
            },
        },
        Scenario {
            name: "rng_guest_ram_memfd",
            device: "virtio-rng (RAM: memfd, shared)",
            backend: "rng-deterministic, 64 KiB",
            guest: rng,
            setup: |_| {
                Ok(Setup::new(
                    "-m 64M -object memory-backend-memfd,id=m0,size=64M,share=on \
                     -machine microvm,memory-backend=m0 \
                     -object rng-deterministic,id=r0,seed=9 -device virtio-rng-device,rng=r0",
                    "rng.bytes=65536 rng.seed=9",
                ))
            },
        },
        Scenario {
            name: "rng_guest_ram_file",
            device: "virtio-rng (RAM: file, share=on)",
            backend: "rng-deterministic, 64 KiB",
            guest: rng,
            setup: |dir| {
                let ram = dir.path("ram.img");
                let mut s = Setup::new(
                    &format!(
                        "-m 64M -object memory-backend-file,id=m0,size=64M,share=on,mem-path={} \
                         -machine microvm,memory-backend=m0 \
                         -object rng-deterministic,id=r0,seed=9 -device virtio-rng-device,rng=r0",
                        ram.display()
                    ),
                    "rng.bytes=65536 rng.seed=9",
                );
                // share=on: the guest's writes reach the file.
                s.check = Some(Box::new(move |_| {
                    let len = std::fs::metadata(&ram).map_err(|e| e.to_string())?.len();
                    if len != 64 << 20 {
                        return Err(format!("RAM file is {len} bytes, want 64 MiB"));
                    }
                    let image = std::fs::read(&ram).map_err(|e| e.to_string())?;
                    let start = 0x10_0000;
                    if image.get(start..start + 4) != Some(&[0x04, 0, 0, 0][..]) {
                        return Err("the guest image is not in the shared RAM file".into());
                    }
                    Ok(())
                }));
                Ok(s)
            },
        },
        Scenario {
            name: "rng_random_short_file",
            device: "virtio-rng",
            backend: "rng-random, 10000-byte file",
            guest: rng,
            setup: |dir| {
                let f = dir.path("short.bin");
                std::fs::write(&f, pattern(10_000)).map_err(|e| e.to_string())?;
                Ok(Setup::new(
                    &format!(
                        "-object rng-random,id=r0,filename={} -device virtio-rng-device,rng=r0",
                        f.display()
                    ),
                    "rng.bytes=1048576 rng.available=10000 rng.wait_ms=100",
                ))
            },
        },
        Scenario {
            name: "rng_egd_socket",
            device: "virtio-rng",
            backend: "rng-egd <- unix socket daemon",
            guest: rng,
            setup: |dir| {
                let sock = dir.path("egd.sock");
                let listener = UnixListener::bind(&sock).map_err(|e| e.to_string())?;
                let mut s = Setup::new(
                    &format!(
                        "-chardev socket,id=c0,path={} -object rng-egd,id=r0,chardev=c0 \
                         -device virtio-rng-device,rng=r0",
                        sock.display()
                    ),
                    format!("rng.bytes={} rng.seed=7", 64 * 1024),
                );
                s.peer = Some(egd_daemon(listener, 7));
                s.check = Some(guest_reported("rng: "));
                Ok(s)
            },
        },
        Scenario {
            name: "console_write_64k_file_irq",
            device: "virtio-console port 0, irq",
            backend: "chardev file",
            guest: console,
            setup: |dir| console_write(dir, "irq", "on"),
        },
        Scenario {
            name: "console_write_64k_file_poll",
            device: "virtio-console port 0, poll+inline",
            backend: "chardev file",
            guest: console,
            setup: |dir| console_write(dir, "poll", "off"),
        },
        Scenario {
            name: "console_echo_socket_irq",
            device: "virtio-console port 0, irq",
            backend: "chardev socket (server)",
            guest: console,
            setup: |dir| console_echo(dir, "irq"),
        },
        Scenario {
            name: "console_echo_socket_poll",
            device: "virtio-console port 0, poll",
            backend: "chardev socket (server)",
            guest: console,
            setup: |dir| console_echo(dir, "poll"),
        },
        Scenario {
            name: "console_echo_udp",
            device: "virtio-console port 0, irq",
            backend: "chardev udp (datagrams both ways)",
            guest: console,
            setup: console_echo_udp,
        },
        Scenario {
            name: "console_echo_serial_tty",
            device: "virtio-console port 0, irq",
            backend: "chardev serial (a pty's slave as the terminal)",
            guest: console,
            setup: console_echo_serial,
        },
        Scenario {
            name: "console_echo_mux",
            device: "virtio-console MULTIPORT, 2 ports on one chardev",
            backend: "chardev socket, mux=on (C-a escapes)",
            guest: console,
            setup: console_echo_mux,
        },
        Scenario {
            name: "uart_com2_echo_socket",
            device: "16550A on COM2, polled",
            backend: "chardev socket (server), -serial chardev:",
            guest: option_env!("GUEST_UART"),
            setup: uart_com2_echo,
        },
        Scenario {
            name: "uart_com1_to_file",
            device: "16550A on COM1 (the run's log)",
            backend: "chardev file, -serial chardev:",
            guest: option_env!("GUEST_EMPTY"),
            setup: uart_com1_to_file,
        },
        Scenario {
            name: "console_multiport_two_files",
            device: "virtio-console MULTIPORT, 2 ports",
            backend: "chardev file x2",
            guest: console,
            setup: |dir| {
                let f0 = dir.path("port0.log");
                let f1 = dir.path("port1.log");
                let mut s = Setup::new(
                    &format!(
                        "-chardev file,id=c0,path={} -chardev file,id=c1,path={} \
                         -device virtio-serial-device,max_ports=2 -device virtconsole,chardev=c0 \
                         -device virtserialport,chardev=c1,name=org.test.port1",
                        f0.display(),
                        f1.display()
                    ),
                    "console.test=multiport console.bytes=4096 console.name1=org.test.port1",
                );
                let c0 = file_holds_pattern(f0, 4096);
                let c1 = file_holds_pattern(f1, 4096);
                s.check = Some(Box::new(move |o| {
                    c0(o)?;
                    c1(o)
                }));
                Ok(s)
            },
        },
        Scenario {
            name: "lifecycle_reset_and_refusals",
            device: "virtio-rng (status machine)",
            backend: "rng-deterministic",
            guest: lifecycle,
            setup: |_| {
                let mut s = Setup::new(
                    "-object rng-deterministic,id=r0,seed=1 -device virtio-rng-device,rng=r0",
                    "lifecycle.strict=1",
                );
                s.check = Some(Box::new(lifecycle_steps));
                Ok(s)
            },
        },
    ]
}
