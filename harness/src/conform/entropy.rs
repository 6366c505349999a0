//! The entropy device the driver checks run against: a seeded stream
//! handed out a few bytes per request, so every used length is shorter
//! than the driver's buffer, and a log of what the device wrote and what
//! the driver handed its caller, judged by
//! [`conform::driver::requests::judge_rng_output`] (§5.4.6.1, §2.7.8).
//!
//! The log is per thread: a driver check builds its device, runs its
//! driver and judges in one thread, with nothing shared.

use std::cell::RefCell;

use backends::rng::{Deterministic, RngBackend, RngError};

/// Bytes per request: shorter than any driver's buffer.
const PIECE: usize = 5;

#[derive(Default)]
struct Log {
    written: Vec<Vec<u8>>,
    outputs: Vec<Vec<u8>>,
}

thread_local! {
    static LOG: RefCell<Log> = RefCell::new(Log::default());
}

/// A [`Deterministic`] stream that gives `PIECE` (5) bytes, then nothing,
/// then 5 bytes again: our entropy device completes each request
/// when its backend runs dry, so each request gets one piece.
pub struct Trickle {
    stream: Deterministic,
    dry: bool,
}

impl Trickle {
    /// A new stream (and an empty log for this thread).
    pub fn new() -> Self {
        LOG.with(|l| *l.borrow_mut() = Log::default());
        Trickle {
            stream: Deterministic::new(7),
            dry: false,
        }
    }
}

impl Default for Trickle {
    fn default() -> Self {
        Trickle::new()
    }
}

impl RngBackend for Trickle {
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, RngError> {
        self.dry = !self.dry;
        if !self.dry {
            return Ok(0);
        }
        let n = buf.len().min(PIECE);
        let got = self.stream.fill(&mut buf[..n])?;
        LOG.with(|l| l.borrow_mut().written.push(buf[..got].to_vec()));
        Ok(got)
    }
}

/// The driver handed its caller `bytes` (one read).
pub fn note_output(bytes: &[u8]) {
    LOG.with(|l| l.borrow_mut().outputs.push(bytes.to_vec()));
}

/// Judges this thread's log and clears it.
pub fn records() -> Vec<conform::Record> {
    let log = LOG.with(|l| std::mem::take(&mut *l.borrow_mut()));
    conform::driver::requests::judge_rng_output(&log.written, &log.outputs)
}
