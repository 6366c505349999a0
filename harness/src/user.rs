//! `virtio-harness user`: our drivers in this process against any
//! vhost-user backend (virtio-user, [`virtio_user`]), one workload, one
//! table row; and the pieces `bench --user` shares with it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use guest_driver::transport::Completion;
use virtio_user::blk::{self, BlkJob, BlkPattern, BlkReport};
use virtio_user::{UserDevice, UserRam, VhostUserKind};

/// How long a run waits for the backend's socket to listen.
const RELISTEN: Duration = Duration::from_secs(5);

/// The device a `user` run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserKind {
    /// vhost-user-blk (§5.2).
    Blk,
    /// vhost-user-rng (§5.4).
    Rng,
    /// vhost-user net (§5.1) on a backend that sends frames back.
    Net,
    /// A console (§5.3) through the generic frontend (four queues:
    /// port 0 and, with MULTIPORT, the control queues).
    Console,
}

/// One `user` run.
#[derive(Clone, Debug)]
pub struct UserRun {
    /// The backend's socket.
    pub socket: PathBuf,
    /// The device.
    pub kind: UserKind,
    /// blk: `randread`, `randwrite`, `seqread` or `check`.
    pub workload: String,
    /// blk: bytes per request; net: bytes per frame.
    pub block: u32,
    /// blk: requests in flight per queue.
    pub depth: u16,
    /// blk: request queues.
    pub queues: u16,
    /// blk: data requests; rng and console: KiB to read or write; net:
    /// frames.
    pub requests: u64,
    /// blk randwrite: writes between FLUSHes (0: none).
    pub flush_every: u32,
    /// Poll the used rings instead of waiting for calls.
    pub poll: bool,
    /// Negotiate `VIRTIO_F_EVENT_IDX` when the backend offers it.
    pub event_idx: bool,
    /// MiB of shared memory.
    pub ram_mib: u64,
    /// The backend's pid, to charge it its CPU time.
    pub backend_pid: Option<u32>,
    /// The queue size the frontend offers the driver.
    pub queue_size: u16,
}

impl Default for UserRun {
    fn default() -> Self {
        UserRun {
            socket: PathBuf::new(),
            kind: UserKind::Blk,
            workload: "randread".into(),
            block: 4096,
            depth: 1,
            queues: 1,
            requests: 10_000,
            flush_every: 32,
            poll: false,
            event_idx: true,
            ram_mib: 64,
            backend_pid: None,
            queue_size: 128,
        }
    }
}

/// One measured row.
#[derive(Clone, Debug, Default)]
pub struct UserRow {
    /// What ran, e.g. `randread 4096 B, depth 32 x 1 queue`.
    pub what: String,
    /// Requests (blk) or reads (rng) completed.
    pub requests: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Median latency (blk).
    pub p50: Duration,
    /// 99th percentile latency (blk).
    pub p99: Duration,
    /// Kicks sent.
    pub kicks: u64,
    /// Calls received.
    pub calls: u64,
    /// The backend's CPU time during the run, if its pid was given.
    pub backend_cpu: Option<Duration>,
    /// Extra words (a check's findings).
    pub note: String,
    /// Frames lost or mangled (net), if any.
    pub lost: String,
}

impl UserRow {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Backend CPU seconds per million requests.
    pub fn cpu_per_million(&self) -> Option<f64> {
        self.backend_cpu
            .map(|c| c.as_secs_f64() * 1e6 / (self.requests.max(1) as f64))
    }

    /// Requests per backend CPU second.
    pub fn per_cpu_second(&self) -> Option<f64> {
        self.backend_cpu
            .map(|c| self.requests as f64 / c.as_secs_f64().max(1e-9))
    }
}

fn completion(poll: bool) -> Completion {
    if poll {
        Completion::Polling
    } else {
        Completion::Interrupt
    }
}

/// Runs `run` once. Errors say which backend and what broke (the driver's
/// errors name the rule).
pub fn run_once(run: &UserRun) -> Result<UserRow, String> {
    // A failed connection names the socket itself.
    let ctx = |e: virtio_user::Error| match e {
        virtio_user::Error::Frontend(f @ vhost_user::frontend::FrontendError::Connect { .. }) => {
            f.to_string()
        }
        e => format!("{}: {e}", run.socket.display()),
    };
    let ram = UserRam::new(run.ram_mib << 20).map_err(ctx)?;
    let kind = match run.kind {
        UserKind::Blk => VhostUserKind::Blk {
            num_queues: run.queues,
            queue_size: run.queue_size,
        },
        UserKind::Rng => VhostUserKind::Rng,
        UserKind::Net => VhostUserKind::Net {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
            queue_size: 256,
        },
        UserKind::Console => VhostUserKind::Generic {
            device_type: virtio_core::features::DeviceType::Console,
            num_vqs: 4,
            vq_size: 128,
            config_size: 12,
        },
    };
    // Some backends (vhost-device-rng) listen again only a moment after
    // their last frontend left; wait for that without connecting.
    let deadline = std::time::Instant::now() + RELISTEN;
    while !crate::daemon::unix_listening(&run.socket) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let dev = UserDevice::connect(&run.socket, kind, &ram).map_err(ctx)?;
    let cpu0 = run.backend_pid.and_then(virtio_user::cpu::cpu_time);
    let mut row = match run.kind {
        UserKind::Rng => {
            let bytes = run.requests << 10;
            let job = virtio_user::rng::RngJob {
                bytes,
                completion: completion(run.poll),
                event_idx: run.event_idx,
                ..virtio_user::rng::RngJob::default()
            };
            let r = virtio_user::rng::run(&dev, ram.hal().map_err(ctx)?, &job).map_err(ctx)?;
            UserRow {
                what: "rng, reads of 256 KiB, 16 buffers of 16 KiB in flight".into(),
                requests: r.bytes,
                bytes: r.bytes,
                elapsed: r.elapsed,
                kicks: r.kicks,
                calls: r.calls,
                ..UserRow::default()
            }
        }
        UserKind::Net => {
            let job = virtio_user::net::NetJob {
                size: run.block as usize,
                frames: run.requests,
                completion: completion(run.poll),
                event_idx: run.event_idx,
                ..virtio_user::net::NetJob::default()
            };
            let r = virtio_user::net::run(&dev, ram.hal().map_err(ctx)?, &job).map_err(ctx)?;
            let mut note = String::new();
            if r.lost() > 0 || r.wrong_length > 0 {
                note = format!("{} lost, {} of another length", r.lost(), r.wrong_length);
            }
            UserRow {
                what: format!("net echo, {} B frames, window {}", job.size, job.window),
                requests: r.received,
                bytes: r.received * job.size as u64,
                elapsed: r.elapsed,
                kicks: r.kicks,
                calls: r.calls,
                lost: note,
                ..UserRow::default()
            }
        }
        UserKind::Console => {
            let job = virtio_user::console::ConsoleJob {
                bytes: run.requests << 10,
                completion: completion(run.poll),
                event_idx: run.event_idx,
                ..virtio_user::console::ConsoleJob::default()
            };
            let r = virtio_user::console::run(&dev, ram.hal().map_err(ctx)?, &job).map_err(ctx)?;
            UserRow {
                what: format!(
                    "console write, {} B a write{}",
                    job.chunk,
                    if r.multiport { ", MULTIPORT" } else { "" }
                ),
                requests: r.bytes,
                bytes: r.bytes,
                elapsed: r.elapsed,
                kicks: r.kicks,
                calls: r.calls,
                ..UserRow::default()
            }
        }
        UserKind::Blk if run.workload == "check" => {
            let r = blk::check(&dev, ram.hal().map_err(ctx)?, 1024, 1).map_err(ctx)?;
            UserRow {
                what: "blk check: write, flush, read back".into(),
                requests: r.blocks,
                bytes: r.blocks * 4096,
                note: format!(
                    "{} blocks intact, capacity {} sectors, FLUSH {}, id {}",
                    r.blocks,
                    r.capacity,
                    if r.flush { "offered" } else { "not offered" },
                    r.id.as_deref().unwrap_or("(unsupported)")
                ),
                ..UserRow::default()
            }
        }
        UserKind::Blk => {
            let pattern = match run.workload.as_str() {
                "randread" => BlkPattern::RandRead,
                "randwrite" => BlkPattern::RandWrite {
                    flush_every: run.flush_every,
                },
                "seqread" => BlkPattern::SeqRead,
                other => {
                    return Err(format!(
                        "unknown blk workload '{other}' (randread, randwrite, seqread, check)"
                    ));
                }
            };
            let job = BlkJob {
                pattern,
                block: run.block,
                depth: run.depth,
                queues: run.queues,
                requests: run.requests,
                completion: completion(run.poll),
                event_idx: run.event_idx,
                ..BlkJob::default()
            };
            let r = blk::run(&dev, ram.hal().map_err(ctx)?, &job).map_err(ctx)?;
            blk_row(&job, &r)
        }
    };
    let cpu1 = run.backend_pid.and_then(virtio_user::cpu::cpu_time);
    row.backend_cpu = cpu0.zip(cpu1).map(|(a, b)| b.saturating_sub(a));
    Ok(row)
}

fn blk_row(job: &BlkJob, r: &BlkReport) -> UserRow {
    let mut what = format!(
        "{} {}, depth {} x {} queue{}",
        job.pattern.name(),
        size(job.block),
        r.depth,
        r.queues,
        if r.queues == 1 { "" } else { "s" }
    );
    if r.flushes > 0 {
        let _ = write!(what, ", {} FLUSH", r.flushes);
    }
    UserRow {
        what,
        requests: r.requests,
        bytes: r.bytes,
        elapsed: r.elapsed,
        p50: r.latency.p50,
        p99: r.latency.p99,
        kicks: r.kicks,
        calls: r.calls,
        ..UserRow::default()
    }
}

/// `4 KiB`, `128 KiB`, `512 B`.
pub fn size(bytes: u32) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// The table header of [`format_row`].
pub const TABLE_HEAD: &str = "| run | requests | per second | MB/s | p50 µs | p99 µs | kicks/req | calls/req | backend CPU s per M req |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";

/// One markdown row.
pub fn format_row(r: &UserRow) -> String {
    let per = |n: u64| {
        if r.requests == 0 {
            "-".to_string()
        } else {
            format!("{:.3}", n as f64 / r.requests as f64)
        }
    };
    let us = |d: Duration| {
        if d.is_zero() {
            "-".to_string()
        } else {
            format!("{:.1}", d.as_secs_f64() * 1e6)
        }
    };
    let what = if r.lost.is_empty() {
        r.what.clone()
    } else {
        format!("{} ({})", r.what, r.lost)
    };
    if !r.note.is_empty() {
        return format!(
            "| {} | {} | - | - | - | - | - | - | {} |\n",
            r.what, r.requests, r.note
        );
    }
    format!(
        "| {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} |\n",
        what,
        r.requests,
        r.rate(),
        r.bytes as f64 / r.elapsed.as_secs_f64().max(1e-9) / 1e6,
        us(r.p50),
        us(r.p99),
        per(r.kicks),
        per(r.calls),
        r.cpu_per_million()
            .map_or("-".to_string(), |c| format!("{c:.2}"))
    )
}
