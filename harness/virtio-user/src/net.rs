//! The network workload (§5.1): frames sent through `guest-driver`'s net
//! driver to a backend that sends them back (our `-netdev loopback`,
//! DPDK's testpmd in `macswap` mode, any reflector), a window of them in
//! flight, frames per second counted as they return.

use std::time::{Duration, Instant};

use guest_driver::net::{Net, NetError, NetOptions, TxOffload};
use guest_driver::transport::Completion;

use crate::{Error, UserDevice, UserHal};

/// An echo workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetJob {
    /// Ethernet frame bytes (header included, virtio-net header not), 60
    /// to 1514.
    pub size: usize,
    /// Frames to send.
    pub frames: u64,
    /// Frames in flight at most (sent, not yet back).
    pub window: u64,
    /// How completions are seen.
    pub completion: Completion,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when offered (§2.7.10).
    pub event_idx: bool,
    /// How long to wait for a frame before counting the rest as lost.
    pub timeout: Duration,
}

impl Default for NetJob {
    fn default() -> Self {
        NetJob {
            size: 64,
            frames: 100_000,
            window: 128,
            completion: Completion::Interrupt,
            event_idx: true,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What a [`NetJob`] measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetReport {
    /// Frames sent.
    pub sent: u64,
    /// Frames that came back with the length sent.
    pub received: u64,
    /// Frames that came back with another length.
    pub wrong_length: u64,
    /// From the first frame sent to the last received.
    pub elapsed: Duration,
    /// Kicks sent to the backend (both queues).
    pub kicks: u64,
    /// Calls the backend sent.
    pub calls: u64,
}

impl NetReport {
    /// Frames received per second.
    pub fn pps(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Frames sent and never seen again.
    pub fn lost(&self) -> u64 {
        self.sent - self.received - self.wrong_length
    }
}

/// Runs `job` against the network backend behind `dev` (a device of kind
/// `VhostUserKind::Net`). A frame that does not return within the
/// timeout ends the run; the report counts it as lost.
pub fn run(dev: &UserDevice, hal: UserHal, job: &NetJob) -> Result<NetReport, Error> {
    if !(60..=1514).contains(&job.size) || job.window == 0 {
        return Err(Error::BadJob(format!(
            "frame size {} (60 to 1514) or window {}",
            job.size, job.window
        )));
    }
    let options = NetOptions {
        completion: job.completion,
        event_idx: job.event_idx,
        rx_buffers: 256,
        tx_buffers: 256,
        ..NetOptions::default()
    };
    let fail = |e: NetError| dev.blame(e);
    let mut net = Net::new(hal, dev.registers(), options).map_err(fail)?;
    let mac = net.mac();
    let before = dev.stats();
    let mut report = NetReport::default();
    let size = job.size;
    let fill = |b: &mut [u8]| {
        b[..6].copy_from_slice(&[0xff; 6]);
        b[6..12].copy_from_slice(&mac);
        // A local experimental EtherType (IEEE 802 "local experimental 1").
        b[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        for (i, x) in b[14..].iter_mut().enumerate() {
            *x = i as u8;
        }
    };
    let mut wait = dev.wait(job.completion, job.timeout);
    let start = Instant::now();
    while report.received + report.wrong_length < job.frames {
        while report.sent < job.frames
            && report.sent - report.received - report.wrong_length < job.window
        {
            match net.transmit_with(size, TxOffload::None, fill) {
                Ok(()) => report.sent += 1,
                Err(NetError::TxFull) => break,
                Err(e) => return Err(fail(e)),
            }
        }
        net.flush().map_err(fail)?;
        let mut got = 0;
        while let Some(h) = net.receive_handle().map_err(fail)? {
            if h.len() == size {
                report.received += 1;
            } else {
                report.wrong_length += 1;
            }
            net.recycle(h);
            got += 1;
        }
        if got == 0 {
            wait.renew(job.timeout);
            match net.wait_rx(&mut wait) {
                Ok(()) => {}
                Err(e)
                    if dev.dead().is_none()
                        && matches!(
                            e,
                            NetError::Driver(guest_driver::error::Error::Timeout { .. })
                        ) =>
                {
                    break;
                }
                Err(e) => return Err(fail(e)),
            }
        }
    }
    report.elapsed = start.elapsed();
    let after = dev.stats();
    report.kicks = after.kicks - before.kicks;
    report.calls = after.calls - before.calls;
    Ok(report)
}
