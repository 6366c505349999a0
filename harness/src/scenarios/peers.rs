//! What scenarios put beside a guest and check after it: lines of its
//! output, socket peers (an EGD daemon, an echoing client), files and
//! reports to compare.

use super::*;

/// The last line of the guest's COM1 output that starts with `prefix`.
pub fn guest_line<'a>(outcome: &'a Outcome, prefix: &str) -> Option<&'a str> {
    outcome.serial.lines().rev().find(|l| l.starts_with(prefix))
}

/// The number before `word` in `line` (`"… 12 requests …"` → 12).
pub fn number_before(line: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let at = words.iter().position(|w| *w == word)?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

/// Accepts one connection on `listener` within `limit`.
pub fn accept_within(listener: &UnixListener, limit: Duration) -> Result<UnixStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("nobody connected".into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Connects to a unix socket that may not exist yet, within `limit`.
pub(super) fn connect_within(path: &Path, limit: Duration) -> Result<UnixStream, String> {
    let deadline = Instant::now() + limit;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("connect {}: {e}", path.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// A peer's failed read as words: a read timeout (EAGAIN) says how long
/// nothing came.
fn waited(what: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            format!(
                "{what}: nothing came from the guest within {} s",
                TIMEOUT.as_secs()
            )
        }
        std::io::ErrorKind::UnexpectedEof => format!("{what}: the machine closed the connection"),
        _ => format!("{what}: {e}"),
    }
}

/// A small EGD daemon on a unix socket: answers each "read entropy" request
/// (0x01 non-blocking or 0x02 blocking, then a count) with that many bytes
/// of the SplitMix64 stream of `seed`, until the client hangs up. Returns
/// the bytes served.
pub(super) fn egd_daemon(listener: UnixListener, seed: u64) -> Peer {
    std::thread::spawn(move || {
        let mut s = accept_within(&listener, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut rng = Deterministic::new(seed);
        let mut served = 0u64;
        let mut cmd = [0u8; 2];
        loop {
            match s.read_exact(&mut cmd[..1]) {
                Ok(()) => {}
                // The machine is gone (with answers it did not read yet:
                // requests are pipelined, so a reset is a normal end too).
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(waited("EGD daemon: reading the next request", &e)),
            }
            if cmd[0] != 0x01 && cmd[0] != 0x02 {
                return Err(format!("EGD: unexpected command {:#x}", cmd[0]));
            }
            s.read_exact(&mut cmd[1..])
                .map_err(|e| format!("EGD count: {e}"))?;
            let mut buf = vec![0u8; usize::from(cmd[1])];
            let n = rng.fill(&mut buf).map_err(|e| e.to_string())?;
            if cmd[0] == 0x01 {
                // Non-blocking reads answer with the count first.
                s.write_all(&[n as u8]).map_err(|e| e.to_string())?;
            }
            if s.write_all(&buf[..n]).is_err() {
                break;
            }
            served += n as u64;
        }
        Ok(format!("EGD daemon served {served} bytes"))
    })
}

/// Connects to the console's server socket, sends `n` bytes and expects
/// the same `n` bytes back.
pub(super) fn echo_peer(path: PathBuf, n: usize) -> Peer {
    std::thread::spawn(move || {
        let mut s = connect_within(&path, TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))
            .map_err(|e| e.to_string())?;
        let sent: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        s.write_all(&sent).map_err(|e| format!("send: {e}"))?;
        let mut back = vec![0u8; n];
        s.read_exact(&mut back)
            .map_err(|e| waited(&format!("reading the echo of {n} bytes"), &e))?;
        if back != sent {
            let at = back.iter().zip(&sent).position(|(a, b)| a != b);
            return Err(format!("echo differs at byte {at:?}"));
        }
        Ok(format!("socket peer got its {n} bytes back"))
    })
}

/// A check that the file at `path` holds exactly the first `n` bytes of the
/// pattern.
pub(super) fn file_holds_pattern(path: PathBuf, n: usize) -> Check {
    Box::new(move |_| {
        let got = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let want = pattern(n);
        if got == want {
            return Ok(());
        }
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        Err(format!(
            "{} has {} bytes, want {n}; first difference at {at:?}",
            path.display(),
            got.len()
        ))
    })
}

/// A check that the guest's last `prefix` line is there.
pub(super) fn guest_reported(prefix: &'static str) -> Check {
    Box::new(move |o| match guest_line(o, prefix) {
        Some(_) => Ok(()),
        None => Err(format!("the guest printed no '{prefix}' line")),
    })
}

/// Every lifecycle step passed in strict mode (none skipped or tolerated).
pub(super) fn lifecycle_steps(o: &Outcome) -> Result<(), String> {
    for step in [
        "init",
        "reset-in-flight",
        "unoffered-feature",
        "driver-ok-without-features-ok",
        "queue-outside-ram",
        "reinit",
    ] {
        let want = format!("lifecycle: {step}: ok");
        if !o.serial.lines().any(|l| l.starts_with(&want)) {
            return Err(format!("no '{want}' line"));
        }
    }
    Ok(())
}
