//! The pattern the helper and the host share, and the host end of the
//! helper's TCP transfers.

use super::*;

/// Byte `o` of the pattern the helper and the host share: the 8 bytes at
/// `o & !7` are the little-endian `(o & !7) ^ seed`.
pub fn pattern_byte(o: u64, seed: u64) -> u8 {
    (((o & !7) ^ seed) >> (8 * (o & 7))) as u8
}

/// `buf` filled with the pattern from offset `off`.
pub fn fill_pattern(buf: &mut [u8], off: u64, seed: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(off + i as u64, seed);
    }
}

/// The first offset of `buf` (at `off`) that is not the pattern.
pub fn pattern_mismatch(buf: &[u8], off: u64, seed: u64) -> Option<u64> {
    buf.iter()
        .enumerate()
        .find(|(i, b)| **b != pattern_byte(off + *i as u64, seed))
        .map(|(i, _)| off + i as u64)
}

/// The host end of the helper's `tcp` command: accepts connections on a
/// listener (bound inside a network namespace, for instance), and for each
/// reads `send N SEED` (then checks N pattern bytes and answers `ok N`) or
/// `recv N SEED` (then sends N pattern bytes). Every connection's outcome
/// is recorded.
#[derive(Debug)]
pub struct PatternServer {
    results: Arc<Mutex<Vec<Result<String, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PatternServer {
    /// Serves `listener` on a thread until dropped.
    pub fn start(listener: TcpListener) -> io::Result<PatternServer> {
        listener.set_nonblocking(true)?;
        let results = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (results.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let r = r.clone();
                        std::thread::spawn(move || {
                            let out = serve_pattern(conn);
                            if let Ok(mut v) = r.lock() {
                                v.push(out);
                            }
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(PatternServer {
            results,
            stop,
            thread: Some(thread),
        })
    }

    /// The outcomes so far.
    pub fn results(&self) -> Vec<Result<String, String>> {
        self.results.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for PatternServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection of [`PatternServer`].
pub(super) fn serve_pattern(conn: TcpStream) -> Result<String, String> {
    conn.set_nonblocking(false).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    conn.set_write_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("header: {e}"))?;
    let mut words = line.split_whitespace();
    let (dir, n, seed) = match (words.next(), words.next(), words.next()) {
        (Some(d), Some(n), Some(s)) => (
            d.to_string(),
            n.parse::<u64>()
                .map_err(|_| format!("bad header {line:?}"))?,
            s.parse::<u64>()
                .map_err(|_| format!("bad header {line:?}"))?,
        ),
        _ => return Err(format!("bad header {line:?}")),
    };
    let mut conn = conn;
    let mut buf = vec![0u8; 64 << 10];
    match dir.as_str() {
        "send" => {
            let mut done = 0u64;
            loop {
                let r = reader.read(&mut buf).map_err(|e| format!("read: {e}"))?;
                if r == 0 {
                    break;
                }
                if let Some(bad) = pattern_mismatch(&buf[..r], done, seed) {
                    let _ = conn.write_all(format!("bad byte {bad}\n").as_bytes());
                    return Err(format!("guest sent a wrong byte at {bad}"));
                }
                done += r as u64;
            }
            if done != n {
                let _ = conn.write_all(format!("bad length {done}\n").as_bytes());
                return Err(format!("guest sent {done} of {n} bytes"));
            }
            conn.write_all(format!("ok {done}\n").as_bytes())
                .map_err(|e| format!("write: {e}"))?;
            Ok(format!("received {done} bytes"))
        }
        "recv" => {
            let mut done = 0u64;
            while done < n {
                let k = usize::try_from((n - done).min(buf.len() as u64)).unwrap_or(buf.len());
                fill_pattern(&mut buf[..k], done, seed);
                conn.write_all(&buf[..k])
                    .map_err(|e| format!("write: {e}"))?;
                done += k as u64;
            }
            let _ = conn.shutdown(std::net::Shutdown::Write);
            Ok(format!("sent {done} bytes"))
        }
        other => Err(format!("unknown direction {other:?}")),
    }
}
