//! The monitor sockets: QEMU's human monitor (`-monitor
//! unix:PATH,server=on,wait=off`, one command a line, prompt `(qemu) `)
//! and QMP (`-qmp …`, JSON: greeting, `qmp_capabilities`, then commands).
//!
//! Both speak the few commands a test needs from outside the guest:
//! `set_link` (a virtio-net device's link, §5.1.4.2: the device's STATUS
//! changes and the driver gets a configuration change interrupt), the VM's
//! status and the network devices. A socket serves one client at a time,
//! clients one after another, each in its own session; whatever a client
//! sends (bad JSON, unknown commands, a line longer than [`MAX_LINE`], a
//! hang-up mid-line) gets an error reply or a closed connection, never a
//! stop of the monitor or the VM. A monitor serves only while
//! [`crate::machine::Machine::run`] runs.
//!
//! Deliberately absent: TCP sockets, `wait=on`, client mode, QMP events,
//! and every other QEMU command.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use virtio_devices::device::VirtioDevice;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use backends::chardev::input::{Axis, Button, InputEvent, InputRouter};

use crate::machine::MachineNet;
use crate::options::MonitorProtocol;
use crate::virtio::VirtioHandle;

/// The longest command line a client may send; a longer one gets an error
/// and the connection is closed.
pub const MAX_LINE: usize = 64 * 1024;

/// How long a reply may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The HMP prompt, as QEMU prints it.
pub const PROMPT: &str = "(qemu) ";

/// A virtio-net device as the monitor sees it: its names and its slot.
#[derive(Clone)]
pub struct NetLink {
    netdev: String,
    id: Option<String>,
    backend: String,
    admin_up: Arc<AtomicBool>,
    handle: VirtioHandle<MachineNet>,
}

impl fmt::Debug for NetLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetLink")
            .field("netdev", &self.netdev)
            .field("id", &self.id)
            .field("backend", &self.backend)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl NetLink {
    /// The device at `handle`, known as `netdev` (its `-netdev` id) and
    /// `id` (its `-device …,id=`), in front of `backend` (described).
    pub fn new(
        netdev: String,
        id: Option<String>,
        backend: String,
        handle: VirtioHandle<MachineNet>,
    ) -> NetLink {
        let up = handle.with_device(|n| n.config().link_up);
        NetLink {
            netdev,
            id,
            backend,
            admin_up: Arc::new(AtomicBool::new(up)),
            handle,
        }
    }

    /// Its `-netdev` id.
    pub fn netdev(&self) -> &str {
        &self.netdev
    }

    /// Its `-device …,id=`, if given.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Whether `name` names it (netdev id or device id, as QEMU's
    /// `set_link` accepts either).
    pub fn is_named(&self, name: &str) -> bool {
        self.netdev == name || self.id.as_deref() == Some(name)
    }

    /// The administrative link state last set.
    pub fn is_up(&self) -> bool {
        self.admin_up.load(Ordering::Acquire)
    }

    /// The device's slot, to look at its registers and counters.
    pub fn handle(&self) -> &VirtioHandle<MachineNet> {
        &self.handle
    }

    /// Sets the link (`Net::set_link` under the device's lock). Returns
    /// whether the driver was sent a configuration change (STATUS
    /// negotiated and the reported state changed), or `None` when the
    /// device is faulty and was not called.
    pub fn set_link(&self, up: bool) -> Option<bool> {
        self.admin_up.store(up, Ordering::Release);
        self.handle.update_config(|net| net.set_link(up))
    }

    /// The MAC address in the device's configuration space (all zeros
    /// for a faulty device, which is not called).
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        let _ = self.handle.try_with_device(|n| n.read_config(0, &mut mac));
        mac
    }
}

/// A bound monitor socket (the file is removed when dropped).
#[derive(Debug)]
pub struct MonitorServer {
    protocol: MonitorProtocol,
    path: PathBuf,
    listener: UnixListener,
}

/// A monitor being served by its thread; [`Serving::stop`] ends it.
#[derive(Debug)]
pub struct Serving {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Serving {
    /// Stops the thread (closing a client still connected) and waits for
    /// it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.halt();
    }
}

impl MonitorServer {
    /// Binds the socket at `path` (a stale socket file there is replaced,
    /// as QEMU does; any other file, or a socket a live process listens
    /// on, is an error).
    pub fn bind(protocol: MonitorProtocol, path: &Path) -> io::Result<MonitorServer> {
        let listener = backends::socket::bind_unix(path)?;
        Ok(MonitorServer {
            protocol,
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Its protocol.
    pub fn protocol(&self) -> MonitorProtocol {
        self.protocol
    }

    /// Its socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts serving clients, one after another, on a thread of its own
    /// with `links` as the network devices.
    pub fn serve(&self, links: Vec<NetLink>) -> io::Result<Serving> {
        self.serve_with(links, None)
    }

    /// [`serve`](Self::serve) with `input` as the pointing devices that
    /// `mouse_move`, `mouse_button` and `input-send-event` feed.
    pub fn serve_with(
        &self,
        links: Vec<NetLink>,
        input: Option<InputRouter>,
    ) -> io::Result<Serving> {
        let listener = self.listener.try_clone()?;
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        let protocol = self.protocol;
        let thread = std::thread::Builder::new()
            .name(format!("monitor-{}", self.path.display()))
            .spawn({
                let stop = Arc::clone(&stop);
                move || accept_loop(&listener, protocol, &links, input.as_ref(), &stop)
            })?;
        Ok(Serving {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits until `fd` is readable or `stop` is; true for `fd`.
fn wait_readable(fd: RawFd, stop: &EventFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds that live across the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    protocol: MonitorProtocol,
    links: &[NetLink],
    input: Option<&InputRouter>,
    stop: &EventFd,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while wait_readable(listener.as_raw_fd(), stop) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A client's failure (hang-up, a write that times out)
                // ends its session only.
                let _ = serve_client(stream, protocol, links, input, stop);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // E.g. EMFILE: wait a little rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_client(
    mut stream: UnixStream,
    protocol: MonitorProtocol,
    links: &[NetLink],
    input: Option<&InputRouter>,
    stop: &EventFd,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut session = Session::new(protocol, links);
    session.input = input.cloned();
    stream.write_all(session.greeting().as_bytes())?;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if !wait_readable(stream.as_raw_fd(), stop) {
            return Ok(());
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            let text = String::from_utf8_lossy(&line[..at]);
            let reply = session.line(text.trim_end_matches('\r'));
            stream.write_all(reply.text.as_bytes())?;
            if reply.close {
                return Ok(());
            }
        }
        if pending.len() > MAX_LINE {
            let reply = session.too_long();
            stream.write_all(reply.as_bytes())?;
            return Ok(());
        }
    }
}

/// What a session answers to one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The text to send (with HMP's prompt, or QMP's JSON and newline).
    pub text: String,
    /// Close the connection after sending it.
    pub close: bool,
}

impl Reply {
    fn keep(text: String) -> Reply {
        Reply { text, close: false }
    }
}

/// One client's session: the protocol state and the commands. Public so
/// that the protocol can be tested without a socket.
#[derive(Debug)]
pub struct Session<'a> {
    protocol: MonitorProtocol,
    links: &'a [NetLink],
    /// The pointing devices input commands feed.
    input: Option<InputRouter>,
    /// QMP: `qmp_capabilities` was accepted.
    negotiated: bool,
}

/// Why a `set_link` failed.
fn set_link(links: &[NetLink], name: &str, up: bool) -> Result<(), String> {
    let link = links
        .iter()
        .find(|l| l.is_named(name))
        .ok_or_else(|| format!("Device '{name}' not found"))?;
    match link.set_link(up) {
        Some(_) => Ok(()),
        None => Err(format!(
            "Device '{name}' has failed and cannot change its link"
        )),
    }
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

const HMP_HELP: &str = "help|? -- show this help\r\n\
info network -- show the network state\r\n\
info status -- show the current VM status\r\n\
set_link name on|off -- change the link status of a network adapter\r\n\
mouse_move dx dy [dz] -- send mouse move events\r\n\
mouse_button state -- change mouse button state (1=L, 2=R, 4=M)\r\n\
quit|q -- close this monitor connection\r\n";

impl<'a> Session<'a> {
    /// A new session over `links`.
    pub fn new(protocol: MonitorProtocol, links: &'a [NetLink]) -> Session<'a> {
        Session {
            protocol,
            links,
            input: None,
            negotiated: false,
        }
    }

    /// The session with `input` as its pointing devices.
    pub fn with_input(mut self, input: InputRouter) -> Session<'a> {
        self.input = Some(input);
        self
    }

    /// Sends `events` to the pointing devices (none: dropped, as QEMU
    /// does without a mouse).
    fn send_input(&self, events: &[InputEvent]) {
        if let Some(i) = &self.input {
            i.send(events);
        }
    }

    /// What the client gets on connecting.
    pub fn greeting(&self) -> String {
        match self.protocol {
            MonitorProtocol::Hmp => format!(
                "QEMU {} monitor (virtio-harness) - type 'help' for more information\r\n{PROMPT}",
                env!("CARGO_PKG_VERSION")
            ),
            MonitorProtocol::Qmp => {
                let g = json!({"QMP": {
                    "version": {
                        "qemu": {"major": 7, "minor": 2, "micro": 0},
                        "package": concat!("virtio-harness ", env!("CARGO_PKG_VERSION")),
                    },
                    "capabilities": [],
                }});
                format!("{g}\r\n")
            }
        }
    }

    /// The answer to a line longer than [`MAX_LINE`] (then the connection
    /// closes).
    pub fn too_long(&self) -> String {
        let desc = format!("command longer than {MAX_LINE} bytes");
        match self.protocol {
            MonitorProtocol::Hmp => format!("{desc}\r\n"),
            MonitorProtocol::Qmp => qmp_error("GenericError", &desc, None),
        }
    }

    /// Answers one line (without its newline).
    pub fn line(&mut self, line: &str) -> Reply {
        match self.protocol {
            MonitorProtocol::Hmp => self.hmp(line),
            MonitorProtocol::Qmp => self.qmp(line),
        }
    }

    fn hmp(&mut self, line: &str) -> Reply {
        let words: Vec<&str> = line.split_whitespace().collect();
        let out = match words.as_slice() {
            [] => String::new(),
            ["help" | "?", ..] => HMP_HELP.to_string(),
            ["quit" | "q"] => {
                return Reply {
                    text: String::new(),
                    close: true,
                };
            }
            ["info"] => "info network -- show the network state\r\n\
                         info status -- show the current VM status\r\n"
                .to_string(),
            ["info", "status"] => "VM status: running\r\n".to_string(),
            ["info", "network"] => self.hmp_network(),
            ["info", what] => format!("info: unknown subcommand '{what}'\r\n"),
            ["set_link", name, state] => {
                let up = match *state {
                    "on" => Some(true),
                    "off" => Some(false),
                    _ => None,
                };
                match up {
                    None => format!("Invalid parameter 'up': '{state}' is not on or off\r\n"),
                    Some(up) => match set_link(self.links, name, up) {
                        Ok(()) => String::new(),
                        Err(e) => format!("{e}\r\n"),
                    },
                }
            }
            ["set_link", ..] => "usage: set_link name on|off\r\n".to_string(),
            ["mouse_move", dx, dy, rest @ ..] if rest.len() <= 1 => {
                match (dx.parse::<i32>(), dy.parse::<i32>()) {
                    (Ok(dx), Ok(dy)) => {
                        // dz (the wheel) is accepted; no device here has one.
                        self.send_input(&[
                            InputEvent::Rel(Axis::X, dx),
                            InputEvent::Rel(Axis::Y, dy),
                        ]);
                        String::new()
                    }
                    _ => "mouse_move: dx and dy must be integers\r\n".to_string(),
                }
            }
            ["mouse_move", ..] => "usage: mouse_move dx dy [dz]\r\n".to_string(),
            ["mouse_button", state] => match state.parse::<u32>() {
                Ok(b) => {
                    // QEMU's bits (its MOUSE_EVENT_* values; its help
                    // text has 2 and 4 the other way round).
                    self.send_input(&[
                        InputEvent::Button(Button::Left, b & 1 != 0),
                        InputEvent::Button(Button::Right, b & 2 != 0),
                        InputEvent::Button(Button::Middle, b & 4 != 0),
                    ]);
                    String::new()
                }
                Err(_) => "mouse_button: state must be a number\r\n".to_string(),
            },
            ["mouse_button", ..] => "usage: mouse_button state\r\n".to_string(),
            [cmd, ..] => format!("unknown command: '{cmd}'\r\n"),
        };
        Reply::keep(format!("{out}{PROMPT}"))
    }

    fn hmp_network(&self) -> String {
        let mut out = String::new();
        for (i, l) in self.links.iter().enumerate() {
            let name = l.id().unwrap_or(l.netdev());
            out.push_str(&format!(
                "{name}: index={i},type=nic,model=virtio-net-device,macaddr={}{}\r\n \\ {}: index={i},type={}{}\r\n",
                mac_text(l.mac()),
                if l.is_up() { "" } else { ",link=down" },
                l.netdev(),
                l.backend,
                if l.is_up() { "" } else { ",link=down" },
            ));
        }
        out
    }

    fn qmp(&mut self, line: &str) -> Reply {
        if line.trim().is_empty() {
            return Reply::keep(String::new());
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                return Reply::keep(qmp_error(
                    "GenericError",
                    &format!("JSON parse error, {e}"),
                    None,
                ));
            }
        };
        let id = value.get("id").cloned();
        let Some(obj) = value.as_object() else {
            return Reply::keep(qmp_error(
                "GenericError",
                "QMP input must be a JSON object",
                id,
            ));
        };
        let Some(cmd) = obj.get("execute").and_then(Value::as_str) else {
            return Reply::keep(qmp_error(
                "GenericError",
                "QMP input lacks member 'execute'",
                id,
            ));
        };
        let empty = serde_json::Map::new();
        let args = match obj.get("arguments") {
            None => &empty,
            Some(Value::Object(a)) => a,
            Some(_) => {
                return Reply::keep(qmp_error(
                    "GenericError",
                    "QMP input member 'arguments' must be an object",
                    id,
                ));
            }
        };
        if !self.negotiated {
            if cmd == "qmp_capabilities" {
                self.negotiated = true;
                return Reply::keep(qmp_return(json!({}), id));
            }
            return Reply::keep(qmp_error(
                "CommandNotFound",
                "Expecting capabilities negotiation with 'qmp_capabilities'",
                id,
            ));
        }
        let result = match cmd {
            "qmp_capabilities" => Err((
                "CommandNotFound",
                "Capabilities negotiation is already complete, command ignored".to_string(),
            )),
            "query-status" => {
                Ok(json!({"status": "running", "running": true, "singlestep": false}))
            }
            "query-commands" => Ok(json!([
                {"name": "qmp_capabilities"},
                {"name": "query-status"},
                {"name": "query-commands"},
                {"name": "set_link"},
                {"name": "input-send-event"},
            ])),
            "input-send-event" => match input_events(args) {
                Ok(events) => {
                    self.send_input(&events);
                    Ok(json!({}))
                }
                Err(e) => Err(("GenericError", e)),
            },
            "set_link" => {
                let name = args.get("name").and_then(Value::as_str);
                let up = args.get("up").and_then(Value::as_bool);
                match (name, up) {
                    (Some(name), Some(up)) => set_link(self.links, name, up)
                        .map(|()| json!({}))
                        .map_err(|e| ("GenericError", e)),
                    (None, _) => Err((
                        "GenericError",
                        "Parameter 'name' is missing or not a string".to_string(),
                    )),
                    (_, None) => Err((
                        "GenericError",
                        "Parameter 'up' is missing or not a boolean".to_string(),
                    )),
                }
            }
            other => Err((
                "CommandNotFound",
                format!("The command {other} has not been found"),
            )),
        };
        Reply::keep(match result {
            Ok(v) => qmp_return(v, id),
            Err((class, desc)) => qmp_error(class, &desc, id),
        })
    }
}

/// The events of a QMP `input-send-event` (QEMU's `InputEvent` union:
/// `rel` and `abs` with `axis` x or y and an integer `value`, `btn` with
/// `button` left, middle or right and `down`); `device` and `head` are
/// accepted and ignored (one pointer per machine).
fn input_events(args: &serde_json::Map<String, Value>) -> Result<Vec<InputEvent>, String> {
    let list = args
        .get("events")
        .and_then(Value::as_array)
        .ok_or("Parameter 'events' is missing or not a list")?;
    list.iter()
        .enumerate()
        .map(|(i, e)| {
            let bad = |what: &str| format!("Parameter 'events[{i}]{what}' is invalid");
            let data = e.get("data").ok_or_else(|| bad(".data"))?;
            match e.get("type").and_then(Value::as_str) {
                Some(kind @ ("rel" | "abs")) => {
                    let axis = match data.get("axis").and_then(Value::as_str) {
                        Some("x") => Axis::X,
                        Some("y") => Axis::Y,
                        _ => return Err(bad(".data.axis")),
                    };
                    let value = data
                        .get("value")
                        .and_then(Value::as_i64)
                        .and_then(|v| i32::try_from(v).ok())
                        .ok_or_else(|| bad(".data.value"))?;
                    Ok(if kind == "rel" {
                        InputEvent::Rel(axis, value)
                    } else {
                        InputEvent::Abs(axis, value)
                    })
                }
                Some("btn") => {
                    let button = match data.get("button").and_then(Value::as_str) {
                        Some("left") => Button::Left,
                        Some("middle") => Button::Middle,
                        Some("right") => Button::Right,
                        _ => return Err(bad(".data.button")),
                    };
                    let down = data
                        .get("down")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| bad(".data.down"))?;
                    Ok(InputEvent::Button(button, down))
                }
                _ => Err(bad(".type")),
            }
        })
        .collect()
}

fn qmp_return(value: Value, id: Option<Value>) -> String {
    let mut r = json!({ "return": value });
    if let (Some(id), Some(obj)) = (id, r.as_object_mut()) {
        obj.insert("id".into(), id);
    }
    format!("{r}\r\n")
}

fn qmp_error(class: &str, desc: &str, id: Option<Value>) -> String {
    let mut r = json!({"error": {"class": class, "desc": desc}});
    if let (Some(id), Some(obj)) = (id, r.as_object_mut()) {
        obj.insert("id".into(), id);
    }
    format!("{r}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qmp(session: &mut Session<'_>, line: &str) -> Value {
        let r = session.line(line);
        assert!(!r.close);
        serde_json::from_str(r.text.trim_end()).expect("a JSON reply")
    }

    #[test]
    fn qmp_negotiates_then_answers_and_reports_errors() {
        let mut s = Session::new(MonitorProtocol::Qmp, &[]);
        let g: Value = serde_json::from_str(s.greeting().trim_end()).unwrap();
        assert!(g["QMP"]["capabilities"].is_array());
        let r = qmp(&mut s, r#"{"execute":"query-status"}"#);
        assert_eq!(r["error"]["class"], "CommandNotFound");
        let r = qmp(&mut s, r#"{"execute":"qmp_capabilities","id":7}"#);
        assert_eq!(r, json!({"return": {}, "id": 7}));
        let r = qmp(&mut s, r#"{"execute":"query-status"}"#);
        assert_eq!(r["return"]["status"], "running");
        let r = qmp(
            &mut s,
            r#"{"execute":"set_link","arguments":{"name":"n9","up":false}}"#,
        );
        assert_eq!(r["error"]["class"], "GenericError");
        assert!(r["error"]["desc"].as_str().unwrap().contains("'n9'"));
        for bad in [
            "{not json",
            "[1,2]",
            r#"{"arguments":{}}"#,
            r#"{"execute":"set_link","arguments":3}"#,
            r#"{"execute":"set_link","arguments":{"name":"n0"}}"#,
        ] {
            let r = qmp(&mut s, bad);
            assert_eq!(r["error"]["class"], "GenericError", "{bad}: {r}");
        }
        let r = qmp(&mut s, r#"{"execute":"frobnicate"}"#);
        assert_eq!(r["error"]["class"], "CommandNotFound");
        assert!(s.too_long().contains("GenericError"));
    }

    #[test]
    fn hmp_prompts_and_answers() {
        let mut s = Session::new(MonitorProtocol::Hmp, &[]);
        assert!(s.greeting().ends_with(PROMPT));
        assert_eq!(s.line("").text, PROMPT);
        assert!(s.line("help").text.contains("set_link name on|off"));
        assert_eq!(
            s.line("info status").text,
            format!("VM status: running\r\n{PROMPT}")
        );
        assert!(
            s.line("set_link n0 off")
                .text
                .starts_with("Device 'n0' not found")
        );
        assert!(s.line("set_link n0 sideways").text.contains("Invalid"));
        assert!(s.line("set_link").text.starts_with("usage"));
        assert!(s.line("bogus 1 2").text.starts_with("unknown command"));
        assert!(s.line("quit").close);
    }

    /// A sink that records what it gets.
    #[derive(Default)]
    struct Record(std::sync::Mutex<Vec<Option<InputEvent>>>);

    impl backends::chardev::input::InputSink for Record {
        fn event(&self, ev: InputEvent) {
            self.0.lock().unwrap().push(Some(ev));
        }
        fn sync(&self) {
            self.0.lock().unwrap().push(None);
        }
        fn name(&self) -> &str {
            "record"
        }
    }

    /// HMP's `mouse_move`/`mouse_button` and QMP's `input-send-event`
    /// reach the pointing devices as QEMU's input events, one batch each;
    /// bad arguments are refused and nothing is sent.
    #[test]
    fn input_commands_feed_the_pointing_devices() {
        let router = InputRouter::default();
        let rec = Arc::new(Record::default());
        router.register(rec.clone());
        let mut h = Session::new(MonitorProtocol::Hmp, &[]).with_input(router.clone());
        assert_eq!(h.line("mouse_move 10 -5").text, PROMPT);
        assert_eq!(h.line("mouse_move 1 2 3").text, PROMPT);
        assert_eq!(h.line("mouse_button 5").text, PROMPT);
        assert!(h.line("mouse_move x 1").text.contains("integers"));
        assert!(h.line("mouse_move 1").text.starts_with("usage"));
        assert!(h.line("mouse_button left").text.contains("number"));
        let mut q = Session::new(MonitorProtocol::Qmp, &[]).with_input(router);
        qmp(&mut q, r#"{"execute":"qmp_capabilities"}"#);
        let r = qmp(
            &mut q,
            r#"{"execute":"input-send-event","arguments":{"events":[
                {"type":"abs","data":{"axis":"x","value":16384}},
                {"type":"btn","data":{"button":"middle","down":true}}]}}"#
                .replace('\n', " ")
                .as_str(),
        );
        assert_eq!(r, json!({"return": {}}));
        for bad in [
            r#"{"execute":"input-send-event","arguments":{}}"#,
            r#"{"execute":"input-send-event","arguments":{"events":[{"type":"rel","data":{"axis":"z","value":1}}]}}"#,
            r#"{"execute":"input-send-event","arguments":{"events":[{"type":"btn","data":{"button":"left"}}]}}"#,
            r#"{"execute":"input-send-event","arguments":{"events":[{"type":"key","data":{}}]}}"#,
        ] {
            assert_eq!(qmp(&mut q, bad)["error"]["class"], "GenericError", "{bad}");
        }
        use InputEvent::*;
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                Some(Rel(Axis::X, 10)),
                Some(Rel(Axis::Y, -5)),
                None,
                Some(Rel(Axis::X, 1)),
                Some(Rel(Axis::Y, 2)),
                None,
                Some(Button(super::Button::Left, true)),
                Some(Button(super::Button::Right, false)),
                Some(Button(super::Button::Middle, true)),
                None,
                Some(Abs(Axis::X, 16384)),
                Some(Button(super::Button::Middle, true)),
                None,
            ]
        );
    }
}
