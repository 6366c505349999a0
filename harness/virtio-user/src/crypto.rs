//! The crypto workload (§5.9): one session, requests of one size through
//! `guest-driver`'s crypto driver, a window of them in flight on one data
//! queue, bytes per second counted as they complete.
//!
//! The device is reached through the generic frontend
//! ([`crate::VhostUserKind::Generic`] with the crypto device type, two
//! queues and the 56-byte configuration): the backend serves the whole
//! device, control queue included, so this measures one backend's data
//! path with nothing of ours but the driver in front of it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use guest_driver::crypto::{
    Crypto, CryptoError, CryptoOptions, Direction, Mode, Op, SessionParams, Status, algo,
};
use guest_driver::transport::Completion;
use virtio_core::features::DeviceType;

use crate::{Error, UserDevice, UserHal, VhostUserKind};

/// What a [`CryptoJob`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoAlgo {
    /// AES-128-CBC encryption (a cipher session, §5.9.7.2.1.1).
    AesCbc128,
    /// AES-256-GCM encryption with a 16-byte tag and no AAD (an AEAD
    /// session, §5.9.7.2.1.4).
    AesGcm256,
}

impl CryptoAlgo {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            CryptoAlgo::AesCbc128 => "AES-128-CBC",
            CryptoAlgo::AesGcm256 => "AES-256-GCM",
        }
    }

    /// The key the workload uses (fixed: results are compared).
    pub fn key(self) -> &'static [u8] {
        const KEY: [u8; 32] = *b"bothends crypto benchmark key 32";
        match self {
            CryptoAlgo::AesCbc128 => &KEY[..16],
            CryptoAlgo::AesGcm256 => &KEY,
        }
    }

    /// The IV (CBC) or nonce (GCM) of every request: the same for all,
    /// which a benchmark may do and a user of GCM must never.
    pub fn iv(self) -> &'static [u8] {
        const IV: [u8; 16] = *b"bothends-iv-0123";
        match self {
            CryptoAlgo::AesCbc128 => &IV,
            CryptoAlgo::AesGcm256 => &IV[..12],
        }
    }

    /// Bytes of result for `size` bytes of input (GCM adds its tag).
    pub fn result_len(self, size: usize) -> usize {
        match self {
            CryptoAlgo::AesCbc128 => size,
            CryptoAlgo::AesGcm256 => size + 16,
        }
    }
}

/// The input of every request: `size` bytes of a fixed pattern.
pub fn input(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31) ^ 0x5a)
        .collect()
}

/// The frontend kind for a crypto backend that serves the whole device
/// with one data queue (`max_dataqueues` 1): queue 0, and the control
/// queue at 1. A backend with more data queues has its control queue
/// elsewhere, which this frontend does not have: the driver fails to
/// set it up (it sets up every queue, §5.9.5.1), so the assumption cannot
/// go unnoticed.
pub fn kind() -> VhostUserKind {
    VhostUserKind::Generic {
        device_type: DeviceType::Crypto,
        num_vqs: 2,
        vq_size: 128,
        config_size: virtio_core::crypto::config::LEN as u16,
    }
}

/// A crypto workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CryptoJob {
    /// The operation.
    pub algo: CryptoAlgo,
    /// Bytes of input per request (a multiple of 16 for CBC).
    pub size: usize,
    /// Requests to complete.
    pub requests: u64,
    /// Requests in flight at most (up to the driver's
    /// [`guest_driver::crypto::DEPTH`]).
    pub depth: usize,
    /// How completions are seen.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// The longest wait for one request.
    pub timeout: Duration,
}

impl Default for CryptoJob {
    fn default() -> Self {
        CryptoJob {
            algo: CryptoAlgo::AesCbc128,
            size: 16 << 10,
            requests: 10_000,
            depth: 8,
            completion: Completion::Polling,
            event_idx: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a [`CryptoJob`] measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CryptoReport {
    /// Requests completed with VIRTIO_CRYPTO_OK.
    pub requests: u64,
    /// Input bytes of those requests.
    pub bytes: u64,
    /// From the first request to the last completion.
    pub elapsed: Duration,
    /// Kicks sent to the backend.
    pub kicks: u64,
    /// Calls the backend sent.
    pub calls: u64,
    /// The result of the first request (to compare with a direct call).
    pub first: Vec<u8>,
}

impl CryptoReport {
    /// Input bytes per second.
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `job` against the crypto backend behind `dev` (made with
/// [`kind`]): a session, `job.requests` requests on data queue 0 with
/// `job.depth` in flight, every result copied out of the shared memory as
/// a user would, the session destroyed.
pub fn run(dev: &UserDevice, hal: UserHal, job: &CryptoJob) -> Result<CryptoReport, Error> {
    let CryptoJob {
        algo: which,
        size,
        requests,
        depth,
        completion,
        event_idx,
        timeout,
    } = *job;
    let cbc = which == CryptoAlgo::AesCbc128;
    if size == 0 || (cbc && !size.is_multiple_of(16)) || requests == 0 {
        return Err(Error::BadJob(format!(
            "{} requests of {size} bytes (CBC takes whole 16-byte blocks)",
            requests
        )));
    }
    if depth == 0 || depth > guest_driver::crypto::DEPTH {
        return Err(Error::BadJob(format!(
            "depth {depth} (1 to {})",
            guest_driver::crypto::DEPTH
        )));
    }
    let result_len = which.result_len(size);
    // A request's readable part (header, fixed part, IV, input) and its
    // answer in one slot.
    let slot = u32::try_from(size + result_len + 256)
        .map_err(|_| Error::BadJob(format!("requests of {size} bytes")))?;
    let options = CryptoOptions {
        completion,
        event_idx,
        revision_1: true,
        slot_size: slot,
    };
    let fail = |e: CryptoError| dev.blame(e);
    let mut drv = Crypto::new(hal, dev.registers(), options).map_err(fail)?;
    let mut wait = dev.wait(completion, timeout);
    let key = which.key();
    let params = match which {
        CryptoAlgo::AesCbc128 => SessionParams::Cipher {
            algo: algo::CIPHER_AES_CBC,
            key,
            direction: Direction::Encrypt,
        },
        CryptoAlgo::AesGcm256 => SessionParams::Aead {
            algo: algo::AEAD_GCM,
            key,
            tag_len: 16,
            aad_len: 0,
            direction: Direction::Encrypt,
        },
    };
    let id = drv.create_session(&params, &mut wait).map_err(fail)?;
    let src = input(size);
    let iv = which.iv();
    let op = match which {
        CryptoAlgo::AesCbc128 => Op::Cipher {
            direction: Direction::Encrypt,
            iv,
            src: &src,
        },
        CryptoAlgo::AesGcm256 => Op::Aead {
            direction: Direction::Encrypt,
            iv,
            aad: &[],
            src: &src,
            dst_len: result_len as u32,
        },
    };
    let before = dev.stats();
    let mut out = vec![0u8; result_len];
    let mut report = CryptoReport::default();
    let mut flight = VecDeque::with_capacity(depth);
    let mut submitted = 0u64;
    let start = Instant::now();
    while report.requests < requests {
        while submitted < requests && flight.len() < depth {
            flight.push_back(drv.submit(0, Mode::Session(id), &op).map_err(fail)?);
            submitted += 1;
        }
        drv.kick(0).map_err(fail)?;
        let Some(token) = flight.pop_front() else {
            break;
        };
        wait.renew(timeout);
        let done = drv.wait_for(token, &mut wait).map_err(|e| Error::During {
            progress: format!("after {} of {requests} requests", report.requests),
            err: Box::new(fail(e)),
        })?;
        let n = drv.take_result(&done, &mut out).map_err(fail)?;
        if done.status != Status::Ok {
            return Err(Error::Crypto(CryptoError::Status(done.status)));
        }
        if report.first.is_empty() {
            report.first = out[..n].to_vec();
        }
        report.requests += 1;
        report.bytes += size as u64;
    }
    report.elapsed = start.elapsed();
    let after = dev.stats();
    report.kicks = after.kicks - before.kicks;
    report.calls = after.calls - before.calls;
    drv.destroy_session(params.service(), id, &mut wait)
        .map_err(fail)?;
    Ok(report)
}
