//! The console workload (§5.3): bytes written to port 0 through
//! `guest-driver`'s console driver, MULTIPORT when the backend offers it
//! (the port is then waited for: DEVICE_ADD, §5.3.6.2). What arrives at
//! the backend's end (a file, a socket) is the caller's to check against
//! [`pattern`].

use std::time::{Duration, Instant};

use guest_driver::console::{Console, ConsoleOptions};
use guest_driver::transport::Completion;

use crate::{Error, UserDevice, UserHal};

/// A console workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleJob {
    /// Bytes to write.
    pub bytes: u64,
    /// Bytes per write.
    pub chunk: usize,
    /// How completions are seen.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// The longest wait for one write (or for the port to appear).
    pub timeout: Duration,
}

impl Default for ConsoleJob {
    fn default() -> Self {
        ConsoleJob {
            bytes: 1 << 20,
            chunk: 4096,
            completion: Completion::Interrupt,
            event_idx: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What [`run`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConsoleReport {
    /// Bytes written (and used by the backend).
    pub bytes: u64,
    /// From the first write to the last buffer used.
    pub elapsed: Duration,
    /// Whether MULTIPORT was negotiated.
    pub multiport: bool,
    /// Kicks sent to the backend.
    pub kicks: u64,
    /// Calls the backend sent.
    pub calls: u64,
}

impl ConsoleReport {
    /// Bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Byte `i` of what [`run`] writes: printable ASCII (`a` to `z`), since
/// some backends take console output to be text.
pub fn pattern(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

/// Writes `job.bytes` of [`pattern`] to port 0 of the console backend
/// behind `dev`.
pub fn run(dev: &UserDevice, hal: UserHal, job: &ConsoleJob) -> Result<ConsoleReport, Error> {
    if job.chunk == 0 {
        return Err(Error::BadJob("chunk of 0 bytes".into()));
    }
    let options = ConsoleOptions {
        completion: job.completion,
        event_idx: job.event_idx,
        multiport: true,
    };
    let fail = |e: guest_driver::error::Error| dev.blame(e);
    let mut console: Console<_, _, 1> =
        Console::new(hal, dev.registers(), options).map_err(fail)?;
    let mut wait = dev.wait(job.completion, job.timeout);
    let multiport = console.is_multiport();
    if multiport {
        console.wait_for_port(0, &mut wait).map_err(fail)?;
    }
    let before = dev.stats();
    let mut report = ConsoleReport {
        multiport,
        ..ConsoleReport::default()
    };
    let mut buf = vec![0u8; job.chunk];
    let start = Instant::now();
    while report.bytes < job.bytes {
        let n = usize::try_from(job.bytes - report.bytes)
            .unwrap_or(job.chunk)
            .min(job.chunk);
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern(report.bytes + i as u64);
        }
        wait.renew(job.timeout);
        console
            .write(&buf[..n], &mut wait)
            .map_err(|e| Error::During {
                progress: format!("after {} of {} bytes", report.bytes, job.bytes),
                err: Box::new(fail(e)),
            })?;
        report.bytes += n as u64;
    }
    report.elapsed = start.elapsed();
    let after = dev.stats();
    report.kicks = after.kicks - before.kicks;
    report.calls = after.calls - before.calls;
    Ok(report)
}
