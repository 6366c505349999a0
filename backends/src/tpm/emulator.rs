//! swtpm as a TPM backend (QEMU's `-tpmdev emulator,chardev=…`).
//!
//! swtpm listens for its control channel on a unix socket (`swtpm socket
//! --tpm2 --ctrl type=unixio,path=…`, without `--server`). Each control
//! command is its number, big endian, then its request; the answer has a
//! fixed size per command and starts with a result code (0 for success).
//! The data channel is one end of a socket pair this backend makes and
//! hands to swtpm with `CMD_SET_DATAFD` (the descriptor travels with the
//! command as `SCM_RIGHTS`); TPM commands go down it and responses come
//! back, each sized by its header. The command numbers and layouts are
//! swtpm's (`tpm_ioctl.h`, the swtpm-dev package); this is our own code.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{BlobType, HEADER_LEN, TpmBackend, TpmError, check_command, header_size};

/// swtpm's control commands (`CMD_*`).
pub mod cmd {
    /// `CMD_GET_CAPABILITY`: the `PTM_CAP_*` bits (a `u64`, no result).
    pub const GET_CAPABILITY: u32 = 0x01;
    /// `CMD_INIT`: starts the TPM (request: init flags).
    pub const INIT: u32 = 0x02;
    /// `CMD_SHUTDOWN`: ends the swtpm process.
    pub const SHUTDOWN: u32 = 0x03;
    /// `CMD_GET_TPMESTABLISHED`: result, then the flag's byte.
    pub const GET_TPMESTABLISHED: u32 = 0x04;
    /// `CMD_SET_LOCALITY`: the locality of the commands that follow.
    pub const SET_LOCALITY: u32 = 0x05;
    /// `CMD_CANCEL_TPM_CMD`: cancels the command under way.
    pub const CANCEL_TPM_CMD: u32 = 0x09;
    /// `CMD_RESET_TPMESTABLISHED`: clears the flag from a locality.
    pub const RESET_TPMESTABLISHED: u32 = 0x0b;
    /// `CMD_GET_STATEBLOB`: one of the TPM's state blobs.
    pub const GET_STATEBLOB: u32 = 0x0c;
    /// `CMD_SET_STATEBLOB`: sets one (the TPM stopped).
    pub const SET_STATEBLOB: u32 = 0x0d;
    /// `CMD_STOP`: stops the TPM, the process stays.
    pub const STOP: u32 = 0x0e;
    /// `CMD_SET_DATAFD`: the data channel, as an `SCM_RIGHTS` descriptor.
    pub const SET_DATAFD: u32 = 0x10;
    /// `CMD_SET_BUFFERSIZE`: asks for a buffer size; answers the one in
    /// use and the bounds.
    pub const SET_BUFFERSIZE: u32 = 0x11;
}

/// swtpm's capability bits (`PTM_CAP_*`).
pub mod cap {
    /// `CMD_INIT`.
    pub const INIT: u64 = 1;
    /// `CMD_SHUTDOWN`.
    pub const SHUTDOWN: u64 = 1 << 1;
    /// `CMD_GET_TPMESTABLISHED`.
    pub const GET_TPMESTABLISHED: u64 = 1 << 2;
    /// `CMD_SET_LOCALITY`.
    pub const SET_LOCALITY: u64 = 1 << 3;
    /// `CMD_CANCEL_TPM_CMD`.
    pub const CANCEL_TPM_CMD: u64 = 1 << 5;
    /// `CMD_RESET_TPMESTABLISHED`.
    pub const RESET_TPMESTABLISHED: u64 = 1 << 7;
    /// `CMD_GET_STATEBLOB`.
    pub const GET_STATEBLOB: u64 = 1 << 8;
    /// `CMD_SET_STATEBLOB`.
    pub const SET_STATEBLOB: u64 = 1 << 9;
    /// `CMD_STOP`.
    pub const STOP: u64 = 1 << 10;
    /// `CMD_SET_DATAFD`.
    pub const SET_DATAFD: u64 = 1 << 12;
    /// `CMD_SET_BUFFERSIZE`.
    pub const SET_BUFFERSIZE: u64 = 1 << 13;
}

/// How long one control or TPM command may take before the backend is
/// taken for dead (a TPM 2.0 RSA key generation takes seconds in swtpm).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The buffer size when swtpm cannot be asked (TPM 2.0's usual 4 KiB).
pub const DEFAULT_BUFFER: u32 = 4096;

/// The largest state blob read back (swtpm's are tens of KiB).
const MAX_BLOB: u32 = 16 << 20;

/// A swtpm process behind its control socket.
///
/// The control and data channels each sit behind a lock (data first,
/// then control, when both are needed), so a command can run on one
/// thread while another cancels it or asks for the established flag.
#[derive(Debug)]
pub struct Emulator {
    ctrl: Mutex<CtrlChannel>,
    data: Mutex<DataChannel>,
    caps: u64,
    buffer_size: AtomicU32,
}

/// The control channel and what is known of its state.
#[derive(Debug)]
struct CtrlChannel {
    sock: UnixStream,
    /// An exchange failed part-way (a timeout after which a late answer
    /// may come, a short answer): the channel carries nothing more.
    out_of_step: bool,
}

impl CtrlChannel {
    fn new(sock: UnixStream) -> Mutex<CtrlChannel> {
        Mutex::new(CtrlChannel {
            sock,
            out_of_step: false,
        })
    }

    /// Sends `message` (with `fd` as `SCM_RIGHTS` if given) and reads the
    /// answer with `read`; any I/O failure leaves the channel out of step.
    fn exchange<T>(
        &mut self,
        message: &[u8],
        fd: Option<RawFd>,
        read: impl FnOnce(&mut UnixStream) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        if self.out_of_step {
            return Err(TpmError::BadResponse(
                "an earlier control exchange failed part-way: the control channel is out of step",
            ));
        }
        let sent = match fd {
            Some(fd) => send_with_fd(&self.sock, message, fd),
            None => send_all(&self.sock, message),
        };
        let r = sent
            .map_err(TpmError::from)
            .and_then(|()| read(&mut self.sock));
        if matches!(r, Err(TpmError::Io(_))) {
            self.out_of_step = true;
        }
        r
    }
}

/// Reads a control answer: the 4-byte result first; on success, `rest`
/// more bytes (swtpm sends only the result when a command fails).
fn result_then(sock: &mut UnixStream, command: u32, rest: usize) -> Result<Vec<u8>, TpmError> {
    let r = read_exact(sock, 4)?;
    check(command, &r)?;
    read_exact(sock, rest)
}

/// The data channel and what is known of its state.
#[derive(Debug)]
struct DataChannel {
    sock: UnixStream,
    /// The locality swtpm was last told, if any.
    locality: Option<u8>,
    /// An exchange failed part-way (a response that did not fit, a
    /// timeout after which a late answer may come, a closed channel): the
    /// data channel is out of step and carries nothing more.
    out_of_step: bool,
}

/// Takes a lock even if a thread panicked holding it: the channel's
/// state is kept consistent by the code that holds it, not by unwinding.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `bytes` on `sock` with `fd` as `SCM_RIGHTS`.
fn send_with_fd(sock: &UnixStream, bytes: &[u8], fd: RawFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // A control buffer aligned for `cmsghdr`, with room for one fd.
    let mut space = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let cmsg_space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    if cmsg_space > size_of_val(&space) {
        return Err(io::Error::other("control buffer too small"));
    }
    // SAFETY: a zeroed msghdr is valid; the pointers set below point to
    // `iov` and `space`, which outlive the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = space.as_mut_ptr().cast();
    msg.msg_controllen = cmsg_space as _;
    // SAFETY: `msg` has a control buffer of `cmsg_space` bytes, enough for
    // one header and one fd (checked above), so CMSG_FIRSTHDR is not null
    // and CMSG_DATA points inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
    }
    // SAFETY: a valid socket and a fully initialised msghdr.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short control write",
        ));
    }
    Ok(())
}

fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|x| x.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

impl Emulator {
    /// Connects to swtpm's control socket at `path`, reads its
    /// capabilities and hands it the data channel (`CMD_SET_DATAFD`).
    /// The TPM is not started: [`TpmBackend::startup`].
    pub fn connect(path: &Path) -> Result<Emulator, TpmError> {
        Self::connect_with(path, DEFAULT_TIMEOUT)
    }

    /// [`connect`](Self::connect) with `timeout` for each command.
    pub fn connect_with(path: &Path, timeout: Duration) -> Result<Emulator, TpmError> {
        let ctrl = UnixStream::connect(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                std::format!(
                    "connecting to swtpm's control socket {}: {e}; expected `swtpm socket --tpm2 --ctrl type=unixio,path={}` running",
                    path.display(),
                    path.display()
                ),
            )
        })?;
        ctrl.set_read_timeout(Some(timeout))?;
        ctrl.set_write_timeout(Some(timeout))?;
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_read_timeout(Some(timeout))?;
        ours.set_write_timeout(Some(timeout))?;
        let mut e = Emulator {
            ctrl: CtrlChannel::new(ctrl),
            data: Mutex::new(DataChannel {
                sock: ours,
                locality: None,
                out_of_step: false,
            }),
            caps: 0,
            buffer_size: AtomicU32::new(DEFAULT_BUFFER),
        };
        e.caps = e.capabilities_of()?;
        if e.caps & cap::SET_DATAFD == 0 {
            return Err(TpmError::Unsupported(
                "CMD_SET_DATAFD (swtpm must not run with --server)",
            ));
        }
        lock(&e.ctrl).exchange(
            &cmd::SET_DATAFD.to_be_bytes(),
            Some(theirs.as_raw_fd()),
            |s| result_then(s, cmd::SET_DATAFD, 0),
        )?;
        // swtpm holds its own copy now.
        drop(theirs);
        Ok(e)
    }

    /// swtpm over channels already connected: `ctrl` its control
    /// channel, `data` its data channel (a swtpm started with `--server`
    /// has a socket of its own for it; tests and fuzzing give a socket
    /// pair). Reads the capabilities; sends no `CMD_SET_DATAFD`.
    pub fn over(
        ctrl: UnixStream,
        data: UnixStream,
        timeout: Duration,
    ) -> Result<Emulator, TpmError> {
        for s in [&ctrl, &data] {
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
        }
        let mut e = Emulator {
            ctrl: CtrlChannel::new(ctrl),
            data: Mutex::new(DataChannel {
                sock: data,
                locality: None,
                out_of_step: false,
            }),
            caps: 0,
            buffer_size: AtomicU32::new(DEFAULT_BUFFER),
        };
        e.caps = e.capabilities_of()?;
        Ok(e)
    }

    /// `CMD_GET_CAPABILITY`: the only answer without a result code.
    fn capabilities_of(&self) -> Result<u64, TpmError> {
        let c = lock(&self.ctrl).exchange(&cmd::GET_CAPABILITY.to_be_bytes(), None, |s| {
            read_exact(s, 8)
        })?;
        Ok(u64::from_be_bytes(c[..8].try_into().unwrap_or_default()))
    }

    /// swtpm's `PTM_CAP_*` bits.
    pub fn capabilities(&self) -> u64 {
        self.caps
    }

    /// Sends control command `command` with `request`; reads its result
    /// and, on success, `rest` more bytes.
    fn control(&self, command: u32, request: &[u8], rest: usize) -> Result<Vec<u8>, TpmError> {
        let mut m = command.to_be_bytes().to_vec();
        m.extend_from_slice(request);
        lock(&self.ctrl).exchange(&m, None, |s| result_then(s, command, rest))
    }

    /// A control command whose answer is only a result code.
    fn simple(
        &self,
        command: u32,
        request: &[u8],
        needs: u64,
        what: &'static str,
    ) -> Result<(), TpmError> {
        if self.caps & needs == 0 {
            return Err(TpmError::Unsupported(what));
        }
        self.control(command, request, 0).map(drop)
    }

    /// One of the TPM's state blobs (`CMD_GET_STATEBLOB`), as swtpm keeps
    /// it (encrypted if swtpm encrypts its state).
    pub fn state_blob(&self, blob: BlobType) -> Result<Vec<u8>, TpmError> {
        if self.caps & cap::GET_STATEBLOB == 0 {
            return Err(TpmError::Unsupported("CMD_GET_STATEBLOB"));
        }
        let mut m = cmd::GET_STATEBLOB.to_be_bytes().to_vec();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&(blob as u32).to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        lock(&self.ctrl).exchange(&m, None, |s| {
            // result; then state_flags, totlength, length; then totlength
            // bytes.
            let h = result_then(s, cmd::GET_STATEBLOB, 12)?;
            let total = be32(&h, 4);
            if total > MAX_BLOB {
                // What follows is not read: the channel is out of step.
                return Err(TpmError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a state blob larger than 16 MiB",
                )));
            }
            read_exact(s, total as usize)
        })
    }

    /// Sets one of the TPM's state blobs (`CMD_SET_STATEBLOB`; the TPM
    /// must be stopped, [`TpmBackend::stop`]).
    pub fn set_state_blob(&self, blob: BlobType, data: &[u8]) -> Result<(), TpmError> {
        if self.caps & cap::SET_STATEBLOB == 0 {
            return Err(TpmError::Unsupported("CMD_SET_STATEBLOB"));
        }
        let len = u32::try_from(data.len())
            .map_err(|_| TpmError::BadCommand("a state blob over 4 GiB"))?;
        let mut m = cmd::SET_STATEBLOB.to_be_bytes().to_vec();
        m.extend_from_slice(&0u32.to_be_bytes());
        m.extend_from_slice(&(blob as u32).to_be_bytes());
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(data);
        lock(&self.ctrl)
            .exchange(&m, None, |s| result_then(s, cmd::SET_STATEBLOB, 0))
            .map(drop)
    }
}

/// Writes all of `bytes` with `send(MSG_NOSIGNAL)`: a swtpm that died is
/// an `EPIPE` error, never a `SIGPIPE` that ends a process which has not
/// ignored it (a C program embedding this, a fuzzing binary).
fn send_all(sock: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of its length during the call.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "swtpm took nothing",
            ));
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Sends `command` on the data channel and reads its response.
fn transact(sock: &mut UnixStream, command: &[u8], response: &mut [u8]) -> Result<usize, TpmError> {
    send_all(sock, command)?;
    let mut h = [0u8; HEADER_LEN];
    sock.read_exact(&mut h)?;
    let size = header_size(&h).unwrap_or(0) as usize;
    if !(HEADER_LEN..=response.len()).contains(&size) {
        return Err(TpmError::BadResponse(
            "a size smaller than the header or larger than the response buffer",
        ));
    }
    response[..HEADER_LEN].copy_from_slice(&h);
    sock.read_exact(&mut response[HEADER_LEN..size])?;
    Ok(size)
}

/// Reads and drops whatever is waiting on `sock` (a late response).
fn drain(sock: &UnixStream) -> Result<(), TpmError> {
    sock.set_nonblocking(true)?;
    let mut junk = [0u8; 4096];
    let r = loop {
        match (&*sock).read(&mut junk) {
            Ok(0) => break Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        }
    };
    sock.set_nonblocking(false)?;
    Ok(r?)
}

/// Reads exactly `len` bytes.
fn read_exact(sock: &mut UnixStream, len: usize) -> Result<Vec<u8>, TpmError> {
    let mut b = vec![0u8; len];
    sock.read_exact(&mut b)?;
    Ok(b)
}

/// A result code of 0, or the error naming the command.
fn check(command: u32, answer: &[u8]) -> Result<(), TpmError> {
    match be32(answer, 0) {
        0 => Ok(()),
        result => Err(TpmError::Control { command, result }),
    }
}

impl TpmBackend for Emulator {
    /// Stops the TPM if it runs (swtpm takes a buffer size only then, as
    /// QEMU's emulator backend does), sets the buffer size, drops
    /// whatever an earlier failed exchange left on the data channel, and
    /// starts it (`CMD_INIT`): a restart after a fatal error, if swtpm is
    /// still there.
    fn startup(&self, buffer_size: u32) -> Result<u32, TpmError> {
        let mut data = lock(&self.data);
        if self.caps & cap::STOP != 0 {
            self.control(cmd::STOP, &[], 0)?;
        }
        if self.caps & cap::SET_BUFFERSIZE != 0 {
            // result; then buffersize, minsize, maxsize.
            let r = self.control(cmd::SET_BUFFERSIZE, &buffer_size.to_be_bytes(), 12)?;
            let size = be32(&r, 0);
            if (size as usize) < HEADER_LEN {
                return Err(TpmError::BadResponse("a buffer size smaller than a header"));
            }
            self.buffer_size.store(size, Ordering::Relaxed);
        }
        drain(&data.sock)?;
        self.simple(cmd::INIT, &0u32.to_be_bytes(), cap::INIT, "CMD_INIT")?;
        data.locality = None;
        data.out_of_step = false;
        Ok(self.buffer_size())
    }

    fn command(
        &self,
        locality: u8,
        command: &[u8],
        response: &mut [u8],
    ) -> Result<usize, TpmError> {
        let mut data = lock(&self.data);
        if data.out_of_step {
            return Err(TpmError::BadResponse(
                "an earlier exchange failed part-way: the data channel is out of step",
            ));
        }
        check_command(command, self.buffer_size())?;
        if data.locality != Some(locality) && self.caps & cap::SET_LOCALITY != 0 {
            let mut req = [0u8; 4];
            req[0] = locality;
            match self.control(cmd::SET_LOCALITY, &req, 0) {
                Ok(_) => {}
                // swtpm refuses it (`--locality reject-locality-4`): the
                // command cannot run there, the TPM goes on.
                Err(TpmError::Control { .. }) => {
                    return Err(TpmError::Unsupported("a locality swtpm refuses"));
                }
                Err(e) => return Err(e),
            }
            data.locality = Some(locality);
        }
        // From here on, a failure leaves part of a command or response
        // (or a late response, after a timeout) on the channel: it is out
        // of step and carries nothing more.
        let r = transact(&mut data.sock, command, response);
        if r.is_err() {
            data.out_of_step = true;
        }
        r
    }

    fn cancel(&self) -> Result<(), TpmError> {
        self.simple(
            cmd::CANCEL_TPM_CMD,
            &[],
            cap::CANCEL_TPM_CMD,
            "CMD_CANCEL_TPM_CMD",
        )
    }

    fn buffer_size(&self) -> u32 {
        self.buffer_size.load(Ordering::Relaxed)
    }

    fn established(&self) -> Result<bool, TpmError> {
        if self.caps & cap::GET_TPMESTABLISHED == 0 {
            return Err(TpmError::Unsupported("CMD_GET_TPMESTABLISHED"));
        }
        // result, then the flag's byte (and padding).
        let r = self.control(cmd::GET_TPMESTABLISHED, &[], 4)?;
        Ok(r[0] != 0)
    }

    fn reset_established(&self, locality: u8) -> Result<(), TpmError> {
        let mut req = [0u8; 4];
        req[0] = locality;
        self.simple(
            cmd::RESET_TPMESTABLISHED,
            &req,
            cap::RESET_TPMESTABLISHED,
            "CMD_RESET_TPMESTABLISHED",
        )
    }

    fn stop(&self) -> Result<(), TpmError> {
        self.simple(cmd::STOP, &[], cap::STOP, "CMD_STOP")
    }

    /// Ends the swtpm process (`CMD_SHUTDOWN`).
    fn shutdown(&self) -> Result<(), TpmError> {
        self.simple(cmd::SHUTDOWN, &[], cap::SHUTDOWN, "CMD_SHUTDOWN")
    }
}
