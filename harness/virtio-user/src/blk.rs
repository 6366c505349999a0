//! Block workloads (§5.2) through `guest-driver`'s blk driver: random and
//! sequential reads, random writes with a FLUSH every so often, at a
//! chosen depth on one or more queues, with each request's latency; and
//! [`check`], which writes, flushes and reads back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use guest_driver::blk::{Blk, BlkError, BlkOptions, SECTOR_SIZE, Token, req};
use guest_driver::hal::PAGE_SIZE;
use guest_driver::transport::Completion;

use crate::latency::{Latencies, Summary};
use crate::{Error, UserDevice, UserHal};

/// What a [`BlkJob`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkPattern {
    /// READs at uniformly random block-aligned offsets.
    RandRead,
    /// WRITEs at random offsets, a FLUSH after every `flush_every` writes
    /// (0: none). The FLUSH joins the stream; writes go on meanwhile.
    RandWrite {
        /// Writes between FLUSHes.
        flush_every: u32,
    },
    /// READs of consecutive blocks from the start, wrapping at the end.
    SeqRead,
}

impl BlkPattern {
    /// A short name for tables.
    pub fn name(&self) -> String {
        match self {
            BlkPattern::RandRead => "randread".into(),
            BlkPattern::RandWrite { flush_every: 0 } => "randwrite".into(),
            BlkPattern::RandWrite { flush_every } => format!("randwrite+flush/{flush_every}"),
            BlkPattern::SeqRead => "seqread".into(),
        }
    }
}

/// A block workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkJob {
    /// What to do.
    pub pattern: BlkPattern,
    /// Bytes per request, a multiple of 512.
    pub block: u32,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Request queues (the backend must offer them, `VIRTIO_BLK_F_MQ`).
    pub queues: u16,
    /// Data requests in all (FLUSHes come on top).
    pub requests: u64,
    /// How completions are seen.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// Seed of the offsets.
    pub seed: u64,
    /// The longest wait for one completion before the backend is declared
    /// stuck.
    pub timeout: Duration,
}

impl Default for BlkJob {
    fn default() -> Self {
        BlkJob {
            pattern: BlkPattern::RandRead,
            block: 4096,
            depth: 1,
            queues: 1,
            requests: 10_000,
            completion: Completion::Interrupt,
            event_idx: true,
            seed: 1,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a [`BlkJob`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlkReport {
    /// Data requests completed.
    pub requests: u64,
    /// FLUSHes completed.
    pub flushes: u64,
    /// Data bytes moved.
    pub bytes: u64,
    /// From the first submission to the last completion.
    pub elapsed: Duration,
    /// Submission to completion of every request (FLUSHes included).
    pub latency: Summary,
    /// Queues driven (fewer than asked if the backend offers fewer).
    pub queues: u16,
    /// Depth per queue (less than asked if the queue is small).
    pub depth: u16,
    /// Kicks sent to the backend.
    pub kicks: u64,
    /// Calls the backend sent.
    pub calls: u64,
}

impl BlkReport {
    /// Data requests per second.
    pub fn iops(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Data bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A small, fast generator of offsets (xorshift64*).
#[derive(Clone, Copy, Debug)]
struct Offsets(u64);

impl Offsets {
    fn new(seed: u64) -> Self {
        Offsets(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// The driver set up for `job` (slots of `block` bytes rounded up to a
/// page).
fn driver(
    dev: &UserDevice,
    hal: UserHal,
    job: &BlkJob,
) -> Result<Blk<UserHal, crate::UserRegisters>, Error> {
    if job.block == 0 || !job.block.is_multiple_of(SECTOR_SIZE) {
        return Err(Error::BadJob(format!(
            "block size {} is not a positive multiple of 512",
            job.block
        )));
    }
    if job.depth == 0 || job.queues == 0 {
        return Err(Error::BadJob("depth and queues must be at least 1".into()));
    }
    let options = BlkOptions {
        completion: job.completion,
        event_idx: job.event_idx,
        queues: job.queues,
        depth: job.depth,
        slot_size: job.block.next_multiple_of(PAGE_SIZE as u32),
        ..BlkOptions::default()
    };
    Blk::new(hal, dev.registers(), options).map_err(|e| dev.blame(e))
}

/// Runs `job` against the block backend behind `dev`, with DMA memory from
/// `hal`. Every request's outcome is checked (an error status or a used
/// element that breaks a rule ends the run with the error); READ data is
/// not compared (see [`check`]).
pub fn run(dev: &UserDevice, hal: UserHal, job: &BlkJob) -> Result<BlkReport, Error> {
    let mut blk = driver(dev, hal, job)?;
    if job.pattern != BlkPattern::RandRead && job.pattern != BlkPattern::SeqRead && blk.read_only()
    {
        return Err(Error::BadJob(
            "the backend's disk is read-only (VIRTIO_BLK_F_RO)".into(),
        ));
    }
    let sectors_per_block = u64::from(job.block / SECTOR_SIZE);
    let blocks = blk.capacity() / sectors_per_block;
    if blocks == 0 {
        return Err(Error::BadJob(format!(
            "the disk ({} sectors) is smaller than one block of {} bytes",
            blk.capacity(),
            job.block
        )));
    }
    let before = dev.stats();
    let queues = blk.num_queues();
    let depth = blk.depth();
    let data = vec![0x5au8; job.block as usize];
    let mut offsets = Offsets::new(job.seed);
    let mut next_seq = 0u64;
    let mut writes = 0u32;
    let mut issued = 0u64;
    let mut started: HashMap<Token, Instant> =
        HashMap::with_capacity(usize::from(queues) * usize::from(depth));
    let mut latency =
        Latencies::with_capacity(usize::try_from(job.requests).unwrap_or(0).min(1 << 26));
    let mut report = BlkReport {
        queues,
        depth,
        ..BlkReport::default()
    };
    let mut submit = |blk: &mut Blk<UserHal, crate::UserRegisters>,
                      queue: u16,
                      issued: &mut u64|
     -> Result<Token, BlkError> {
        let sector = match job.pattern {
            BlkPattern::SeqRead => {
                let b = next_seq;
                next_seq = (next_seq + 1) % blocks;
                b
            }
            _ => offsets.below(blocks),
        } * sectors_per_block;
        match job.pattern {
            BlkPattern::RandWrite { flush_every } if flush_every > 0 && writes >= flush_every => {
                writes = 0;
                blk.submit_flush(queue)
            }
            BlkPattern::RandWrite { .. } => {
                writes += 1;
                *issued += 1;
                blk.submit_write(queue, sector, &data)
            }
            _ => {
                *issued += 1;
                blk.submit_read(queue, sector, job.block as usize)
            }
        }
    };
    let start = Instant::now();
    for queue in 0..queues {
        for _ in 0..depth {
            if issued < job.requests {
                let t = submit(&mut blk, queue, &mut issued).map_err(|e| fail(dev, e))?;
                started.insert(t, Instant::now());
            }
        }
    }
    let mut wait = dev.wait(job.completion, job.timeout);
    while !started.is_empty() {
        wait.renew(job.timeout);
        let done = blk.wait_any(&mut wait).map_err(|e| fail(dev, e))?;
        let now = Instant::now();
        if let Some(t0) = started.remove(&done.token) {
            latency.record(now - t0);
        }
        done.result.map_err(|e| fail(dev, e))?;
        match done.kind {
            req::FLUSH => report.flushes += 1,
            req::IN => {
                blk.release(done.token);
                report.requests += 1;
                report.bytes += u64::from(done.len);
            }
            _ => {
                report.requests += 1;
                report.bytes += u64::from(done.len);
            }
        }
        if issued < job.requests {
            let t = submit(&mut blk, done.token.queue, &mut issued).map_err(|e| fail(dev, e))?;
            started.insert(t, Instant::now());
        }
    }
    report.elapsed = start.elapsed();
    report.latency = latency.summary();
    let after = dev.stats();
    report.kicks = after.kicks - before.kicks;
    report.calls = after.calls - before.calls;
    Ok(report)
}

/// The backend's death explains a driver error best, when it happened.
fn fail(dev: &UserDevice, e: BlkError) -> Error {
    dev.blame(e)
}

/// What [`check`] verified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Blocks written, flushed and read back intact.
    pub blocks: u64,
    /// The device's id string (GET_ID), if it supports it.
    pub id: Option<String>,
    /// Whether it offers FLUSH (§5.2.3).
    pub flush: bool,
}

/// A peer-independent check of a block backend: writes `blocks` blocks of
/// 4 KiB, each with its own pattern, at random distinct offsets with 8 in
/// flight; FLUSHes (if offered); reads every block back and compares
/// (§5.2.6); asks GET_ID. The driver validates every used element
/// (§2.7.8) and status byte. The disk's contents are overwritten.
pub fn check(dev: &UserDevice, hal: UserHal, blocks: u32, seed: u64) -> Result<CheckReport, Error> {
    let job = BlkJob {
        depth: 8,
        ..BlkJob::default()
    };
    let mut blk = driver(dev, hal, &job)?;
    let timeout = job.timeout;
    let capacity = blk.capacity();
    if blk.read_only() {
        return Err(Error::BadJob(
            "the backend's disk is read-only (VIRTIO_BLK_F_RO)".into(),
        ));
    }
    let total = capacity / 8;
    let n = u64::from(blocks).min(total);
    // Distinct blocks: a random start and a stride coprime to the count.
    let mut offsets = Offsets::new(seed);
    let first = offsets.below(total);
    let stride = (1..total.max(2))
        .map(|_| offsets.below(total).max(1))
        .find(|s| gcd(*s, total) == 1)
        .unwrap_or(1);
    let block_at = |i: u64| (first + i * stride) % total.max(1);
    let pattern = |b: u64| -> Vec<u8> {
        (0..4096u64)
            .map(|i| (b.wrapping_mul(2_654_435_761) ^ i.wrapping_mul(40_503) ^ seed) as u8)
            .collect()
    };
    let mut wait = dev.wait(job.completion, timeout);
    let mut i = 0;
    let mut in_flight = 0;
    while i < n || in_flight > 0 {
        if i < n && in_flight < usize::from(blk.depth()) {
            let b = block_at(i);
            blk.submit_write(0, b * 8, &pattern(b))
                .map_err(|e| fail(dev, e))?;
            i += 1;
            in_flight += 1;
            continue;
        }
        wait.renew(timeout);
        let done = blk.wait_any(&mut wait).map_err(|e| fail(dev, e))?;
        done.result.map_err(|e| fail(dev, e))?;
        in_flight -= 1;
    }
    let flush = blk.features() & virtio_core::features::BlkFeatures::FLUSH.bits() != 0;
    if flush {
        wait.renew(timeout);
        blk.flush(&mut wait).map_err(|e| fail(dev, e))?;
    }
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        let b = block_at(i);
        wait.renew(timeout);
        blk.read(b * 8, &mut buf, &mut wait)
            .map_err(|e| fail(dev, e))?;
        if buf != pattern(b) {
            return Err(Error::Mismatch {
                sector: b * 8,
                what: format!("block {i} of {n} written at depth 8"),
            });
        }
    }
    wait.renew(timeout);
    let id = match blk.get_id(&mut wait) {
        Ok(raw) => {
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            Some(String::from_utf8_lossy(&raw[..end]).into_owned())
        }
        Err(BlkError::Unsupported) => None,
        Err(e) => return Err(fail(dev, e)),
    };
    Ok(CheckReport {
        capacity,
        blocks: n,
        id,
        flush,
    })
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
