//! The monitor sockets against a real machine's virtio-net device: the
//! driver's side of initialisation is done by hand through the register
//! file (no guest runs), then `set_link` over HMP and QMP must reach the
//! device under its lock and raise the configuration change interrupt as
//! the device itself would (§5.1.4.2 STATUS, §4.2.2 InterruptStatus bit 1
//! and ConfigGeneration). Hostile clients (bad JSON, unknown commands and
//! names, a 1 MB line, a hang-up mid-line) get errors or a closed
//! connection; the monitor serves the next client. Needs `/dev/kvm` (the
//! machine is a KVM VM); skips otherwise.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use harness::scenarios::Workdir;
use monitor::machine::Machine;
use monitor::options::{self, MonitorProtocol};
use monitor::protocol::{MonitorServer, NetLink, PROMPT};
use monitor::vm;
use virtio_core::mmio::regs;

/// VIRTIO_NET_F_STATUS (§5.1.3).
const NET_F_STATUS: u32 = 1 << 16;
/// VIRTIO_F_VERSION_1, in the high feature word.
const F_VERSION_1_HI: u32 = 1;

fn machine(dir: &Workdir) -> Machine {
    let empty = env!("GUEST_EMPTY");
    let hmp = dir.path("hmp.sock");
    let qmp = dir.path("qmp.sock");
    let line = format!(
        "-netdev loopback,id=n0 -device virtio-net-device,netdev=n0,id=nic0 \
         -monitor unix:{},server=on,wait=off -qmp unix:{},server,nowait -kernel {empty}",
        hmp.display(),
        qmp.display()
    );
    let args: Vec<&str> = line.split_whitespace().collect();
    let cfg = options::parse(&args).expect("options");
    Machine::new(&cfg).expect("machine")
}

/// The driver's initialisation (§3.1.1) done through the register file:
/// VERSION_1 + STATUS, two 16-entry queues in guest RAM, DRIVER_OK.
fn init_driver(link: &NetLink) {
    link.handle().with_registers(|r| {
        let w = |r: &mut monitor::virtio::Registers<_>, off, v| {
            r.write32(off, v).expect("register write");
        };
        w(r, regs::STATUS, 1 | 2);
        w(r, regs::DRIVER_FEATURES_SEL, 0);
        w(r, regs::DRIVER_FEATURES, NET_F_STATUS);
        w(r, regs::DRIVER_FEATURES_SEL, 1);
        w(r, regs::DRIVER_FEATURES, F_VERSION_1_HI);
        w(r, regs::STATUS, 1 | 2 | 8);
        for q in 0..2u32 {
            let base = 0x10_0000 + q * 0x1_0000;
            w(r, regs::QUEUE_SEL, q);
            w(r, regs::QUEUE_NUM, 16);
            w(r, regs::QUEUE_DESC_LOW, base);
            w(r, regs::QUEUE_DRIVER_LOW, base + 0x1000);
            w(r, regs::QUEUE_DEVICE_LOW, base + 0x2000);
            w(r, regs::QUEUE_READY, 1);
        }
        w(r, regs::STATUS, 1 | 2 | 8 | 4);
        assert_eq!(r.read32(regs::STATUS).unwrap() & 0x4f, 0xf, "DRIVER_OK");
    });
}

/// (InterruptStatus, ConfigGeneration, config `status` field).
fn registers(link: &NetLink) -> (u32, u32, u16) {
    link.handle().with_registers(|r| {
        let mut st = [0u8; 2];
        r.read(regs::CONFIG + 6, &mut st).unwrap();
        (
            r.read32(regs::INTERRUPT_STATUS).unwrap(),
            r.read32(regs::CONFIG_GENERATION).unwrap(),
            u16::from_le_bytes(st),
        )
    })
}

fn ack(link: &NetLink) {
    link.handle().with_registers(|r| {
        let isr = r.read32(regs::INTERRUPT_STATUS).unwrap();
        r.write32(regs::INTERRUPT_ACK, isr).unwrap();
    });
}

struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    /// Reads until the HMP prompt; the text before it.
    fn until_prompt(&mut self) -> String {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        while !out.ends_with(PROMPT.as_bytes()) {
            self.r.read_exact(&mut b).expect("HMP output");
            out.push(b[0]);
        }
        out.truncate(out.len() - PROMPT.len());
        String::from_utf8(out).unwrap()
    }

    fn hmp(&mut self, cmd: &str) -> String {
        self.w.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        self.until_prompt()
    }

    fn json(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("QMP line");
        serde_json::from_str(line.trim_end()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn qmp(&mut self, cmd: &str) -> serde_json::Value {
        self.w.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        self.json()
    }

    /// True once the peer has closed the connection.
    /// Whether the monitor closed the connection: end of stream, or a
    /// reset when it closed with our unread bytes still queued.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.r.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn set_link_over_hmp_and_qmp_raises_the_config_interrupt() {
    if !vm::kvm_or_skip("set_link_over_hmp_and_qmp_raises_the_config_interrupt") {
        return;
    }
    let dir = Workdir::new("monitor").unwrap();
    let m = machine(&dir);
    assert_eq!(m.links.len(), 1);
    let link = m.link("nic0").expect("by device id").clone();
    assert!(m.link("n0").is_some(), "by netdev id");
    init_driver(&link);
    let (isr0, gen0, st0) = registers(&link);
    assert_eq!(isr0 & 2, 0);
    assert_eq!(st0 & 1, 1, "link up at start");
    let irqs0 = link.handle().report().counters.interrupts;

    let hmp = MonitorServer::bind(MonitorProtocol::Hmp, &dir.path("h2.sock")).unwrap();
    let qmp = MonitorServer::bind(MonitorProtocol::Qmp, &dir.path("q2.sock")).unwrap();
    let serving = [
        hmp.serve(m.links.clone()).unwrap(),
        qmp.serve(m.links.clone()).unwrap(),
    ];

    // HMP: greeting, info, set_link off.
    let mut c = Client::connect(hmp.path());
    assert!(c.until_prompt().contains("monitor"));
    assert!(c.hmp("info status").contains("running"));
    let net = c.hmp("info network");
    assert!(
        net.contains("nic0:") && net.contains("macaddr=52:54:00:12:34:56"),
        "{net}"
    );
    assert_eq!(c.hmp("set_link n0 off"), "");
    let (isr, gen_, st) = registers(&link);
    assert_eq!(isr & 2, 2, "§4.2.2: configuration change bit set");
    assert_eq!(gen_, gen0.wrapping_add(1), "ConfigGeneration bumped");
    assert_eq!(st & 1, 0, "§5.1.4: VIRTIO_NET_S_LINK_UP clear");
    assert!(
        link.handle().report().counters.interrupts > irqs0,
        "irqfd raised"
    );
    assert!(c.hmp("info network").contains("link=down"));
    // Setting the same state again changes nothing.
    ack(&link);
    assert_eq!(c.hmp("set_link nic0 off"), "");
    assert_eq!(registers(&link).0 & 2, 0);
    assert!(
        c.hmp("set_link nope on")
            .contains("Device 'nope' not found")
    );
    assert!(c.hmp("frob").contains("unknown command"));
    drop(c);

    // QMP: negotiation, set_link up by the device id.
    let mut q = Client::connect(qmp.path());
    assert!(q.json()["QMP"].is_object());
    assert_eq!(
        q.qmp(r#"{"execute":"qmp_capabilities"}"#)["return"],
        serde_json::json!({})
    );
    assert_eq!(
        q.qmp(r#"{"execute":"query-status"}"#)["return"]["running"],
        true
    );
    let r = q.qmp(r#"{"execute":"set_link","arguments":{"name":"nic0","up":true},"id":"x"}"#);
    assert_eq!(r["id"], "x");
    assert!(r["return"].is_object(), "{r}");
    let (isr, gen2, st) = registers(&link);
    assert_eq!(isr & 2, 2);
    assert_eq!(gen2, gen0.wrapping_add(2));
    assert_eq!(st & 1, 1);
    let r = q.qmp(r#"{"execute":"set_link","arguments":{"name":"zz","up":true}}"#);
    assert_eq!(r["error"]["class"], "GenericError");
    assert_eq!(q.qmp("{oops")["error"]["class"], "GenericError");
    drop(q);

    // A 1 MB line: an error, then the connection closes.
    let mut q = Client::connect(qmp.path());
    q.json();
    let big = vec![b'x'; 1 << 20];
    let _ = q.w.write_all(&big);
    let r = q.json();
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    assert!(q.closed());

    // A hang-up mid-line.
    let mut h = UnixStream::connect(hmp.path()).unwrap();
    h.write_all(b"set_link n0 o").unwrap();
    drop(h);

    // The next clients are served as before.
    for _ in 0..3 {
        let mut c = Client::connect(hmp.path());
        c.until_prompt();
        assert!(c.hmp("info status").contains("running"));
    }
    for s in serving {
        s.stop();
    }
    drop(m);
}

/// Runs the `uart` guest with `chardev` on COM2 and a monitor socket of
/// `protocol`, sending `commands` (after the QMP greeting's negotiation)
/// over and over until the run ends; the guest's output.
fn uart_with_pointer(chardev: &str, append: &str, protocol: &str, commands: &[&str]) -> String {
    let dir = Workdir::new("monitor-pointer").expect("scratch");
    let sock = dir.path("mon.sock");
    let line = format!(
        "-chardev {chardev},id=p -serial null -serial chardev:p \
         -{protocol} unix:{},server=on,wait=off -kernel {}",
        sock.display(),
        env!("GUEST_UART")
    );
    let mut args: Vec<String> = line.split_whitespace().map(String::from).collect();
    args.extend(["-append".into(), append.into()]);
    let cfg = options::parse(&args).expect("options");
    let mut m = Machine::new(&cfg).expect("machine");
    let done = std::sync::atomic::AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        let feeder = scope.spawn(|| {
            let s = loop {
                match UnixStream::connect(&sock) {
                    Ok(s) => break s,
                    Err(_) if !done.load(std::sync::atomic::Ordering::Relaxed) => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => panic!("monitor: {e}"),
                }
            };
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut sink = Vec::new();
            if protocol == "qmp" {
                w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
                    .unwrap();
            }
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for c in commands {
                    if w.write_all(format!("{c}\n").as_bytes()).is_err() {
                        return;
                    }
                    let _ = r.read_until(b'\n', &mut sink);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        let out = m.run(Duration::from_secs(60));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = feeder.join();
        out
    });
    let out = out.expect("the machine runs");
    assert!(out.verdict.is_pass(), "{}\n{}", out.verdict, out.serial);
    out.serial
}

/// `-chardev msmouse` behind COM2: the guest powers the mouse with DTR
/// and RTS, gets `M3`, and HMP's `mouse_move 10 -5`, `mouse_button 1`
/// and `mouse_button 0` arrive as Microsoft serial mouse packets.
#[test]
fn hmp_mouse_commands_reach_a_serial_mouse() {
    if !vm::kvm_or_skip("hmp_mouse_commands_reach_a_serial_mouse") {
        return;
    }
    let serial = uart_with_pointer(
        "msmouse",
        "uart.bytes=0 uart.mouse=9 uart.ms=30000",
        "monitor",
        &["mouse_move 10 -5", "mouse_button 1", "mouse_button 0"],
    );
    for want in [
        "uart: mouse id M3",
        "uart: mouse dx 10 dy -5 buttons --",
        "uart: mouse dx 0 dy 0 buttons L-",
        "uart: mouse dx 0 dy 0 buttons --",
    ] {
        assert!(serial.contains(want), "no {want:?} in\n{serial}");
    }
}

/// `-chardev wctablet` behind COM2 at 9600 bit/s: `~#` gets the model
/// string, `ST` starts the reports, and QMP's `input-send-event` with an
/// absolute position and the left button arrives as Wacom IV reports
/// (x = 16384 × 0.1537, y = 8192 × 0.1152, as QEMU scales them).
#[test]
fn qmp_input_events_reach_a_serial_tablet() {
    if !vm::kvm_or_skip("qmp_input_events_reach_a_serial_tablet") {
        return;
    }
    let pos = r#"{"type":"abs","data":{"axis":"x","value":16384}},{"type":"abs","data":{"axis":"y","value":8192}}"#;
    let down = format!(
        r#"{{"execute":"input-send-event","arguments":{{"events":[{pos},{{"type":"btn","data":{{"button":"left","down":true}}}}]}}}}"#
    );
    let up = down.replace("\"down\":true", "\"down\":false");
    let serial = uart_with_pointer(
        "wctablet",
        "uart.bytes=0 uart.tablet=8 uart.ms=30000",
        "qmp",
        &[&down, &up],
    );
    for want in [
        "uart: tablet model ~#CT-0045R,V1.3-5,",
        "uart: tablet x 2518 y 943 pen down",
        "uart: tablet x 2518 y 943 pen up",
    ] {
        assert!(serial.contains(want), "no {want:?} in\n{serial}");
    }
}
