//! Lying vhost-user backends for the `hostile_vhost_backend` row: a thread
//! that accepts our monitor's frontend on a unix socket and stands in front
//! of an honest backend (our own [`vhost_user::Backend`], in process, on a
//! socket pair), forwarding every request with its descriptors and every
//! reply, except where its [`Lie`] says otherwise: a reply of the wrong
//! size or for the wrong request, a configuration space that is no such
//! thing, silence, a closed socket, or calls with nothing behind them.
//! The honest backend makes the rest of the session real, so whatever the
//! guest sees beyond the lie is what a real device did.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost_user::codec::{self, Header, MAX_PAYLOAD, Message, Request};
use vhost_user::{Backend, SharedMemory};
use zerocopy::{FromBytes, IntoBytes};

use super::super::accept_within;

/// How long the liar waits for the monitor to connect.
const ACCEPT_LIMIT: Duration = Duration::from_secs(10);

/// How long after the rings start the `dies-mid-run` liar hangs up.
const DIE_AFTER: Duration = Duration::from_millis(20);

/// How often the `calls-without-cause` liar writes every call eventfd.
const CALL_PERIOD: Duration = Duration::from_micros(200);

/// What the backend lies about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lie {
    /// `GET_FEATURES` answered with 4 bytes instead of a `u64`.
    FeaturesReplyShort,
    /// `GET_FEATURES` answered with `GET_PROTOCOL_FEATURES`'s code.
    FeaturesReplyWrongRequest,
    /// The `REPLY_ACK` of `SET_MEM_TABLE` (at activation) is 4 bytes.
    AckShort,
    /// `GET_CONFIG` answered with 8 bytes of the configuration space
    /// while its header says the whole was sent.
    ConfigShort,
    /// `GET_CONFIG` answered in full, every byte 0xff.
    ConfigGarbage,
    /// Nothing answered once the activation begins (`SET_FEATURES`).
    NeverReplies,
    /// The socket closed when `SET_MEM_TABLE` arrives (the frontend waits
    /// for its acknowledgement).
    DiesAtMemTable,
    /// The socket closed (and the honest backend stopped) shortly after
    /// the last ring is enabled, while the guest's requests run.
    DiesMidRun,
    /// Every call eventfd written in a loop, with no used buffer behind.
    CallsWithoutCause,
}

/// What the liar did, for the case's detail.
#[derive(Debug, Default)]
pub struct Told {
    /// Requests received from the frontend.
    pub requests: u64,
    /// Whether the lie was told (the request it hangs on came).
    pub told: bool,
    /// Calls written without cause.
    pub calls: u64,
    /// How the honest backend's session ended.
    pub honest_end: String,
}

/// Serves the frontend that connects on `listener` with a lie, in front of
/// the honest device `honest` (options as `virtio-harness vhost-user`
/// takes them). The thread ends when the frontend hangs up.
pub fn spawn(
    listener: UnixListener,
    lie: Lie,
    honest: Vec<String>,
) -> JoinHandle<Result<Told, String>> {
    std::thread::spawn(move || {
        let config =
            monitor::options::parse(&honest).map_err(|e| format!("honest backend: {e}"))?;
        let mem = SharedMemory::new();
        let dev =
            monitor::serve::build(&config, &mem).map_err(|e| format!("honest backend: {e}"))?;
        let front = accept_within(&listener, ACCEPT_LIMIT)?;
        let (back, theirs) = UnixStream::pair().map_err(|e| format!("socket pair: {e}"))?;
        let honest = std::thread::spawn(move || {
            let mut backend = Backend::new(dev.device, mem, dev.ready_fds);
            backend.serve_connection(theirs).to_string()
        });
        let mut proxy = Proxy {
            front,
            back,
            lie,
            told: Told::default(),
            silent: false,
            calls: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            called: Arc::new(AtomicU64::new(0)),
            helpers: Vec::new(),
        };
        let r = proxy.run();
        proxy.stop.store(true, Ordering::Relaxed);
        let _ = proxy.back.shutdown(std::net::Shutdown::Both);
        for h in proxy.helpers.drain(..) {
            let _ = h.join();
        }
        let mut told = std::mem::take(&mut proxy.told);
        told.calls = proxy.called.load(Ordering::Relaxed);
        drop(proxy);
        told.honest_end = honest
            .join()
            .unwrap_or_else(|_| "the honest backend panicked".into());
        r.map(|()| told)
    })
}

/// One frontend's connection through the liar.
struct Proxy {
    front: UnixStream,
    back: UnixStream,
    lie: Lie,
    told: Told,
    /// Nothing is forwarded or answered any more.
    silent: bool,
    /// The call eventfds (`calls-without-cause`).
    calls: Arc<Mutex<Vec<OwnedFd>>>,
    stop: Arc<AtomicBool>,
    called: Arc<AtomicU64>,
    helpers: Vec<JoinHandle<()>>,
}

/// Reads one reply from the honest backend: header and payload.
fn read_reply(sock: &UnixStream) -> io::Result<(Header, Vec<u8>)> {
    let mut h = [0u8; codec::HEADER_LEN];
    (&*sock).read_exact(&mut h)?;
    let header = Header::read_from_bytes(&h)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "short header"))?;
    let size = header.size as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {size}-byte reply"),
        ));
    }
    let mut p = vec![0u8; size];
    (&*sock).read_exact(&mut p)?;
    Ok((header, p))
}

/// Header and payload as one buffer, `size` as given.
fn raw(header: Header, payload: &[u8]) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

impl Proxy {
    fn run(&mut self) -> Result<(), String> {
        loop {
            let frame = match codec::recv_frame(&self.front) {
                Ok(Some(f)) => f,
                // The frontend hung up, or the liar closed its end.
                Ok(None) | Err(codec::RecvError::Eof { .. }) => return Ok(()),
                Err(_) if self.told.told => return Ok(()),
                Err(e) => return Err(format!("the frontend sent something unreadable: {e}")),
            };
            self.told.requests += 1;
            let msg = frame
                .decode()
                .map_err(|e| format!("the frontend sent a malformed request: {e}"))?;
            if self.silent {
                continue;
            }
            match (self.lie, &msg) {
                (Lie::NeverReplies, Message::SetFeatures(_)) => {
                    self.told.told = true;
                    self.silent = true;
                    continue;
                }
                (Lie::DiesAtMemTable, Message::SetMemTable(_)) => {
                    self.told.told = true;
                    return Ok(());
                }
                _ => {}
            }
            if let (Lie::CallsWithoutCause, Message::SetVringCall(v)) = (self.lie, &msg)
                && v.has_fd
                && let Some(fd) = frame.fds.first()
            {
                let dup = fd
                    .try_clone()
                    .map_err(|e| format!("duplicating a call eventfd: {e}"))?;
                self.call_without_cause(dup);
            }
            let fds: Vec<_> = frame.fds.iter().map(|f| f.as_raw_fd()).collect();
            codec::send_with_fds(&self.back, &raw(frame.header, &frame.payload), &fds)
                .map_err(|e| format!("forwarding {:?}: {e}", msg.request()))?;
            if msg.has_reply() || frame.header.need_reply() {
                let (h, p) = match read_reply(&self.back) {
                    Ok(r) => r,
                    // The honest backend refused and closed: so does the liar.
                    Err(_) => return Ok(()),
                };
                let reply = self.alter(&msg, h, p);
                if codec::send_with_fds(&self.front, &reply, &[]).is_err() {
                    return Ok(());
                }
            }
            if let (Lie::DiesMidRun, Message::SetVringEnable(s)) = (self.lie, &msg)
                && s.num == 1
            {
                self.die_soon()?;
            }
        }
    }

    /// The reply the frontend gets for `msg` (the honest one unless the
    /// lie is about it).
    fn alter(&mut self, msg: &Message, mut h: Header, p: Vec<u8>) -> Vec<u8> {
        match (self.lie, msg.request()) {
            (Lie::FeaturesReplyShort, Request::GetFeatures)
            | (Lie::AckShort, Request::SetMemTable) => {
                self.told.told = true;
                h.size = 4;
                raw(h, &p[..4.min(p.len())])
            }
            (Lie::FeaturesReplyWrongRequest, Request::GetFeatures) => {
                self.told.told = true;
                h.request = Request::GetProtocolFeatures.code();
                raw(h, &p)
            }
            (Lie::ConfigShort, Request::GetConfig) => {
                // The configuration header (offset, size, flags) still
                // says the whole space is there.
                self.told.told = true;
                let keep = (12 + 8).min(p.len());
                h.size = keep as u32;
                raw(h, &p[..keep])
            }
            (Lie::ConfigGarbage, Request::GetConfig) => {
                self.told.told = true;
                let mut p = p;
                for b in p.iter_mut().skip(12) {
                    *b = 0xff;
                }
                raw(h, &p)
            }
            _ => raw(h, &p),
        }
    }

    /// Starts the caller (once) and gives it `fd`.
    fn call_without_cause(&mut self, fd: OwnedFd) {
        self.told.told = true;
        let first = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            calls.push(fd);
            calls.len() == 1
        };
        if !first {
            return;
        }
        let (calls, stop, called) = (
            Arc::clone(&self.calls),
            Arc::clone(&self.stop),
            Arc::clone(&self.called),
        );
        self.helpers.push(std::thread::spawn(move || {
            let one = 1u64.to_ne_bytes();
            while !stop.load(Ordering::Relaxed) {
                for fd in calls.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    // SAFETY: writes 8 bytes from a live buffer to an
                    // eventfd this thread's owner keeps open.
                    if unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) } == 8 {
                        called.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(CALL_PERIOD);
            }
        }));
    }

    /// Hangs up both sockets after [`DIE_AFTER`]: the frontend sees its
    /// backend die, and the honest backend stops serving the rings.
    fn die_soon(&mut self) -> Result<(), String> {
        self.told.told = true;
        let front = self.front.try_clone().map_err(|e| format!("socket: {e}"))?;
        let back = self.back.try_clone().map_err(|e| format!("socket: {e}"))?;
        self.helpers.push(std::thread::spawn(move || {
            std::thread::sleep(DIE_AFTER);
            let _ = back.shutdown(std::net::Shutdown::Both);
            let _ = front.shutdown(std::net::Shutdown::Both);
        }));
        Ok(())
    }
}
