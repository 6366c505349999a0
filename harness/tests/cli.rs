//! The `virtio-harness` command line as a user runs it: `run` boots one
//! machine from QEMU-style options; every mistake in them is a clear error
//! naming what is wrong (exit status 2), never a panic.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_virtio-harness");

fn harness(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{BIN}: {e}"))
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_refuses_bad_options_naming_them() {
    let rng = env!("GUEST_RNG");
    let cases: &[(&[&str], &str)] = &[
        (&["run", "-bogus"], "unknown option '-bogus'"),
        (
            &["run", "-object", "rng-builtin,id=r0,colour=red"],
            "unknown key 'colour'",
        ),
        (
            &[
                "run",
                "-object",
                "rng-builtin,id=a",
                "-object",
                "rng-builtin,id=a",
            ],
            "id 'a' is defined more than once",
        ),
        (
            &["run", "-device", "virtio-rng-device,rng=nope"],
            "rng='nope' does not name an rng object",
        ),
        (&["run", "-m", "64M"], "no -kernel given"),
        (
            &["run", "-kernel", "/nonexistent/guest.elf"],
            "-kernel /nonexistent/guest.elf",
        ),
        (
            &[
                "run",
                "-object",
                "rng-random,id=rr,filename=/nonexistent/random",
                "-device",
                "virtio-rng-device,rng=rr",
                "-kernel",
                rng,
            ],
            "id=rr",
        ),
        (
            &[
                "run",
                "-chardev",
                "file,id=cf,path=/nonexistent/dir/out.log",
                "-kernel",
                rng,
            ],
            "/nonexistent/dir/out.log",
        ),
        (
            &["run", "-monitor", "stdio", "-kernel", rng],
            "-monitor: chardev='stdio' is not unix:PATH",
        ),
        (
            &["run", "-qmp", "unix:/tmp/q.sock,server=on", "-kernel", rng],
            "only wait=off",
        ),
        (
            &[
                "run",
                "-monitor",
                "unix:/nonexistent/dir/m.sock,server,nowait",
                "-kernel",
                rng,
            ],
            "the directory /nonexistent/dir does not exist",
        ),
        (
            &["run", "-kernel", "no-such-guest"],
            "nor a guest this binary carries",
        ),
    ];
    for (args, want) in cases {
        let o = harness(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: got '{err}', want '{want}'");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn run_boots_a_machine_and_reports_the_guest_verdict() {
    if !monitor::vm::kvm_or_skip("run_boots_a_machine_and_reports_the_guest_verdict") {
        return;
    }
    let rng = env!("GUEST_RNG");
    let base = [
        "run",
        "-m",
        "32M",
        "-object",
        "memory-backend-memfd,id=mem0,size=32M",
        "-machine",
        "microvm,memory-backend=mem0",
        "-object",
        "rng-deterministic,id=r0,seed=5",
        "-device",
        "virtio-rng-device,rng=r0",
        "-kernel",
        rng,
        "-append",
    ];
    let mut pass = base.to_vec();
    pass.push("rng.bytes=4096 rng.seed=5");
    let o = harness(&pass);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("rng: 4096 bytes in "), "{out}");
    assert!(stderr(&o).contains("slot 0: virtio-rng-device (rng-deterministic:5)"));

    // The wrong seed: the guest fails, and says where.
    let mut fail = base.to_vec();
    fail.push("rng.bytes=4096 rng.seed=6");
    let o = harness(&fail);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("verdict: fail"), "{}", stderr(&o));
}

#[test]
fn run_serves_a_monitor_socket_while_the_guest_runs() {
    if !monitor::vm::kvm_or_skip("run_serves_a_monitor_socket_while_the_guest_runs") {
        return;
    }
    let dir = harness::scenarios::Workdir::new("cli-monitor").unwrap();
    let sock = dir.path("m.sock");
    let spec = format!("unix:{},server=on,wait=off", sock.display());
    let o = harness(&[
        "run",
        "-netdev",
        "loopback,id=n0",
        "-device",
        "virtio-net-device,netdev=n0",
        "-monitor",
        &spec,
        "-kernel",
        env!("GUEST_EMPTY"),
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("monitor: Hmp on "), "{err}");
    assert!(
        err.contains("slot 0: virtio-net-device (loopback)"),
        "{err}"
    );
    assert!(!sock.exists(), "the socket is removed with the machine");
}

/// `-chardev testdev` (QEMU's test-suite control channel, what
/// kvm-unit-tests' `chr_testdev_exit` writes `"%dq"` to): `5q` written to
/// COM2 ends the run with verdict `quit 5` and the exit status QEMU gives,
/// (5 << 1) | 1 = 11; through a virtconsole port (the way kvm-unit-tests
/// reach it) the console guest's text stream quits at its first `q`
/// (status 0, exit status 1), from the device's worker thread.
#[test]
fn run_ends_with_a_testdev_quit_and_qemus_exit_status() {
    if !monitor::vm::kvm_or_skip("run_ends_with_a_testdev_quit_and_qemus_exit_status") {
        return;
    }
    let o = harness(&[
        "run",
        "-chardev",
        "testdev,id=t",
        "-serial",
        "null",
        "-serial",
        "chardev:t",
        "-kernel",
        env!("GUEST_UART"),
        "-append",
        "uart.bytes=0 uart.quit=5 uart.ms=20000",
    ]);
    assert_eq!(o.status.code(), Some(11), "{}", stderr(&o));
    assert!(stderr(&o).contains("verdict: quit 5"), "{}", stderr(&o));
    let o = harness(&[
        "run",
        "-chardev",
        "testdev,id=t",
        "-device",
        "virtio-serial-device",
        "-device",
        "virtconsole,chardev=t",
        "-kernel",
        env!("GUEST_CONSOLE"),
        "-append",
        "console.test=write console.bytes=65536",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("verdict: quit 0"), "{}", stderr(&o));
}

/// `-parallel file:PATH` (QEMU's `isa-parallel` at LPT1, 0x378): the
/// `uart` guest prints three lines with the BUSY/STROBE/ACK handshake of
/// a polling printer driver, and they are the file's contents.
#[test]
fn run_prints_to_a_parallel_port_file() {
    if !monitor::vm::kvm_or_skip("run_prints_to_a_parallel_port_file") {
        return;
    }
    let dir = harness::scenarios::Workdir::new("lpt").expect("scratch");
    let out = dir.path("lpt1.txt");
    let spec = format!("file:{}", out.display());
    let o = harness(&[
        "run",
        "-parallel",
        &spec,
        "-kernel",
        env!("GUEST_UART"),
        "-append",
        "uart.bytes=0 uart.lpt=3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "LPT1 line 0\nLPT1 line 1\nLPT1 line 2\n"
    );
    // One port; a second is refused, naming it.
    let o = harness(&["run", "-parallel", "null", "-parallel", "null"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("one parallel port"), "{}", stderr(&o));
}

/// `guests` lists every carried guest with its keys, `guests --out DIR`
/// writes their ELFs, and `run -kernel NAME` boots a carried guest by
/// name (a file of that name, if there is one, still wins).
#[test]
fn guests_are_listed_written_and_run_by_name() {
    let o = harness(&["guests"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = String::from_utf8_lossy(&o.stdout);
    for line in [
        "rng        virtio-rng (§5.4)",
        "-append: uart.base uart.bytes",
    ] {
        assert!(list.contains(line), "{list}");
    }
    let dir = harness::scenarios::Workdir::new("guests-out").expect("scratch");
    let out = dir.path("elfs");
    let o = harness(&["guests", "--out", &out.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let elf = std::fs::read(out.join("uart")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    if !monitor::vm::kvm_or_skip("guests_are_listed_written_and_run_by_name") {
        return;
    }
    let o = harness(&["run", "-kernel", "uart", "-append", "uart.bytes=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("uart: echoed 0 bytes"));
    let o = harness(&["run", "-kernel", "no-such-guest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn a_socket_path_that_names_another_kind_of_file_is_refused_not_deleted() {
    // A swapped argument must not cost a disk image: only a stale socket
    // is replaced.
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, b"precious").expect("write");
    let o = harness(&[
        "vhost-user",
        "--socket",
        disk.to_str().expect("utf-8"),
        "-object",
        "rng-builtin,id=r0",
        "-device",
        "virtio-rng-device,rng=r0",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("exists and is not a socket"), "{err}");
    assert_eq!(std::fs::read(&disk).expect("still there"), b"precious");
}

#[test]
fn a_missing_peer_is_named_with_what_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = |n: &str| dir.path().join(n).display().to_string();
    // -chardev socket (server=off) and -tpmdev emulator with nobody there:
    // refused before boot, saying what was expected.
    let (c0, t0) = (sock("c0.sock"), sock("tpm.sock"));
    let cases: [(Vec<String>, &str); 2] = [
        (
            format!(
                "run -chardev socket,id=c0,path={c0} -device virtio-serial-device \
                 -device virtconsole,chardev=c0 -kernel empty"
            )
            .split_whitespace()
            .map(String::from)
            .collect(),
            "expected a listener there (server=off)",
        ),
        (
            format!(
                "run -chardev socket,id=t0,path={t0} -tpmdev emulator,id=tpm0,chardev=t0 \
                 -device tpm-crb,tpmdev=tpm0 -kernel empty"
            )
            .split_whitespace()
            .map(String::from)
            .collect(),
            "expected `swtpm socket --tpm2 --ctrl type=unixio",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = harness(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: got '{err}', want '{want}'");
    }
    // virtio-user against no socket, and against a socket file nobody
    // listens on.
    let absent = sock("absent.sock");
    let o = harness(&["user", "--socket", &absent, "--device", "rng"]);
    let err = stderr(&o);
    assert!(err.contains("start the backend first"), "{err}");
    assert_eq!(
        err.matches(&absent).count(),
        1,
        "the socket named once: {err}"
    );
    let stale = sock("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    let o = harness(&["user", "--socket", &stale, "--device", "rng"]);
    let err = stderr(&o);
    assert!(err.contains("nothing listens on it"), "{err}");
}
