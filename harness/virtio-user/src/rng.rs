//! The entropy workload (§5.4): bytes per second through `guest-driver`'s
//! rng driver.

use std::time::{Duration, Instant};

use guest_driver::rng::{Rng, RngOptions};
use guest_driver::transport::Completion;

use crate::{Error, UserDevice, UserHal};

/// An entropy workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngJob {
    /// Bytes to read.
    pub bytes: u64,
    /// Bytes per read.
    pub chunk: usize,
    /// Bytes per request buffer (16 are in flight, §5.4.6).
    pub buffer: u32,
    /// How completions are seen.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// The longest wait for one read.
    pub timeout: Duration,
}

impl Default for RngJob {
    fn default() -> Self {
        RngJob {
            bytes: 1 << 20,
            chunk: 256 << 10,
            buffer: 16 << 10,
            completion: Completion::Interrupt,
            event_idx: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What [`run`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RngReport {
    /// Bytes read.
    pub bytes: u64,
    /// From the first request to the last byte.
    pub elapsed: Duration,
    /// Kicks sent to the backend.
    pub kicks: u64,
    /// Calls the backend sent.
    pub calls: u64,
    /// Bytes that were zero (about 1/256 of random data; a backend that
    /// returns used lengths it did not write shows many).
    pub zeroes: u64,
}

impl RngReport {
    /// Bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Reads `job.bytes` random bytes from the entropy backend behind `dev`,
/// in reads of `job.chunk` bytes, each waiting at most `job.timeout`.
pub fn run(dev: &UserDevice, hal: UserHal, job: &RngJob) -> Result<RngReport, Error> {
    let RngJob {
        bytes,
        chunk,
        buffer,
        completion,
        event_idx,
        timeout,
    } = *job;
    if chunk == 0 {
        return Err(Error::BadJob("chunk of 0 bytes".into()));
    }
    let options = RngOptions {
        completion,
        event_idx,
        slot_size: buffer,
    };
    let fail = |e: guest_driver::error::Error| dev.blame(e);
    let mut rng = Rng::new(hal, dev.registers(), options).map_err(fail)?;
    let before = dev.stats();
    let mut buf = vec![0u8; chunk];
    let mut report = RngReport::default();
    let mut wait = dev.wait(completion, timeout);
    let start = Instant::now();
    while report.bytes < bytes {
        let want = usize::try_from(bytes - report.bytes)
            .unwrap_or(chunk)
            .min(chunk);
        wait.renew(timeout);
        let n = rng
            .read(&mut buf[..want], &mut wait)
            .map_err(|e| Error::During {
                progress: format!(
                    "after {} of {bytes} bytes, {} kicks, {} calls",
                    report.bytes,
                    dev.stats().kicks - before.kicks,
                    dev.stats().calls - before.calls
                ),
                err: Box::new(fail(e)),
            })?;
        report.zeroes += buf[..n].iter().filter(|b| **b == 0).count() as u64;
        report.bytes += n as u64;
    }
    report.elapsed = start.elapsed();
    let after = dev.stats();
    report.kicks = after.kicks - before.kicks;
    report.calls = after.calls - before.calls;
    Ok(report)
}
