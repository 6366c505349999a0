//! The crypto rows (`bench --crypto`): AES-128-CBC and AES-256-GCM
//! encryption of 64 B, 1 KiB and 16 KiB requests through our vhost-user
//! backend (`cryptodev-backend-builtin` behind virtio-crypto, §5.9),
//! driven by our crypto driver in this process (virtio-user, no VM),
//! against RustCrypto called directly, the same crates and versions the
//! builtin backend uses, on the CPU the backend is confined to. The ratio
//! direct / device is what the device costs: rings, notifications, the
//! copies into and out of shared memory, the request parsing. Goal (issue
//! 19): within 1.2x at 16 KiB.
//!
//! The direct call keeps its key schedule (as a session does) and
//! encrypts one buffer in place, request after request; the device's
//! first result is checked against the direct call's before anything is
//! timed.

use aes::cipher::array::Array;
use aes::cipher::consts::U16;
use aes::cipher::{BlockModeEncrypt, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInOut;
use aes_gcm::aead::inout::InOutBuf;
use guest_driver::transport::Completion;
use virtio_user::crypto::{self as user_crypto, CryptoAlgo, CryptoJob};
use virtio_user::{UserDevice, UserRam};

use super::user::{BACKEND_CPU, DRIVER_CPU, affinity, backend_command, pin_self, pinning, restore};
use super::*;

/// Request sizes.
const SIZES: [usize; 3] = [64, 1024, 16 << 10];

/// The operations.
const ALGOS: [CryptoAlgo; 2] = [CryptoAlgo::AesCbc128, CryptoAlgo::AesGcm256];

/// Requests in flight on the data queue.
const DEPTH: usize = 16;

/// Requests per measurement: about 128 MiB, between 5 000 and 100 000.
fn requests(size: usize) -> u64 {
    ((128usize << 20) / size).clamp(5_000, 100_000) as u64
}

/// RustCrypto called directly: the result of one operation on
/// `user_crypto::input(size)`, and the time `n` operations take.
pub(super) fn direct(
    which: CryptoAlgo,
    size: usize,
    n: u64,
) -> Result<(Vec<u8>, Duration), String> {
    let src = user_crypto::input(size);
    let (key, iv) = (which.key(), which.iv());
    match which {
        CryptoAlgo::AesCbc128 => {
            let aes = aes::Aes128::new_from_slice(key).map_err(|e| e.to_string())?;
            let run = |buf: &mut [u8]| -> Result<(), String> {
                let (blocks, rest) = Array::<u8, U16>::slice_as_chunks_mut(buf);
                if !rest.is_empty() {
                    return Err("CBC takes whole blocks".into());
                }
                cbc::Encryptor::inner_iv_slice_init(aes.clone(), iv)
                    .map_err(|e| e.to_string())?
                    .encrypt_blocks(blocks);
                Ok(())
            };
            let mut first = src.clone();
            run(&mut first)?;
            let mut buf = src;
            let start = Instant::now();
            for _ in 0..n {
                run(std::hint::black_box(&mut buf))?;
            }
            Ok((first, start.elapsed()))
        }
        CryptoAlgo::AesGcm256 => {
            let gcm = aes_gcm::Aes256Gcm::new_from_slice(key).map_err(|e| e.to_string())?;
            let nonce: [u8; 12] = iv.try_into().map_err(|_| "a 12-byte nonce")?;
            let nonce = Array(nonce);
            let run = |buf: &mut [u8]| -> Result<[u8; 16], String> {
                let tag = gcm
                    .encrypt_inout_detached(&nonce, &[], InOutBuf::from(buf))
                    .map_err(|e| e.to_string())?;
                Ok(tag.into())
            };
            let mut first = src.clone();
            let tag = run(&mut first)?;
            first.extend_from_slice(&tag);
            let mut buf = src;
            let start = Instant::now();
            for _ in 0..n {
                std::hint::black_box(run(std::hint::black_box(&mut buf))?);
            }
            Ok((first, start.elapsed()))
        }
    }
}

/// One run through the device: the job's report.
fn through_device(
    socket: &std::path::Path,
    job: &CryptoJob,
) -> Result<virtio_user::crypto::CryptoReport, String> {
    let ctx = |e: virtio_user::Error| format!("{}: {e}", socket.display());
    let ram = UserRam::new(64 << 20).map_err(ctx)?;
    let dev = UserDevice::connect(socket, user_crypto::kind(), &ram).map_err(ctx)?;
    virtio_user::crypto::run(&dev, ram.hal().map_err(ctx)?, job).map_err(ctx)
}

/// The crypto plot: MB/s against the request size, per algorithm.
const CRYPTO_PLOT: Plot = Plot {
    id: "crypto-mbps-size",
    title: "virtio-crypto, polling, against the cipher called directly",
    x_label: "request bytes",
    y_label: "MB/s",
    log_x: true,
};

/// The rows, `rounds` runs of each (median).
pub fn run_crypto(rounds: usize) -> Result<String, String> {
    let before = affinity();
    let pinned = pinning() && pin_self(DRIVER_CPU);
    let r = rows(rounds, pinned);
    if let Some(set) = &before {
        restore(set);
    }
    r
}

fn rows(rounds: usize, pinned: bool) -> Result<String, String> {
    let mut t = String::new();
    let dir = crate::scenarios::Workdir::new("bench-crypto").map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let sock = dir.path("crypto.sock");
    let mut cmd = backend_command(&exe);
    cmd.arg("vhost-user").arg("--socket").arg(&sock).args([
        "-object",
        "cryptodev-backend-builtin,id=c0",
        "-device",
        "virtio-crypto-device,cryptodev=c0",
    ]);
    let mut daemon = Daemon::start(
        "virtio-harness vhost-user",
        cmd,
        sock,
        dir.path("crypto.log"),
    )?;
    let _ = writeln!(
        t,
        "\nvirtio-crypto through virtio-user: our driver ({}) against our backend (cryptodev-backend-builtin), {DEPTH} requests in flight, polling, against RustCrypto called directly {}; encryption, median of {rounds}\n",
        if pinned {
            format!("CPU {DRIVER_CPU}")
        } else {
            "not pinned".into()
        },
        if pinned {
            format!("on CPU {BACKEND_CPU}, where the backend runs")
        } else {
            "(not pinned)".into()
        }
    );
    let _ = writeln!(
        t,
        "| operation | request | direct MB/s | through the device MB/s | direct / device | device requests/s | kicks, calls per 1000 requests |"
    );
    let _ = writeln!(t, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let mut goal = Vec::new();
    for which in ALGOS {
        crate::progress::step(format!("bench: crypto {}", which.name()))?;
        for size in SIZES {
            let n = requests(size);
            let job = CryptoJob {
                algo: which,
                size,
                requests: n,
                depth: DEPTH,
                completion: Completion::Polling,
                ..CryptoJob::default()
            };
            let mut direct_rates = Vec::new();
            let mut device = Vec::new();
            for _ in 0..rounds {
                if pinned && !pin_self(BACKEND_CPU) {
                    return Err(format!(
                        "could not move to CPU {BACKEND_CPU} for the direct call"
                    ));
                }
                let d = direct(which, size, n);
                if pinned && !pin_self(DRIVER_CPU) {
                    return Err(format!("could not move back to CPU {DRIVER_CPU}"));
                }
                let (want, took) = d?;
                direct_rates.push((n * size as u64) as f64 / took.as_secs_f64().max(1e-9));
                let r = through_device(daemon.socket(), &job)
                    .map_err(|e| format!("{e}\n{}", daemon.output()))?;
                daemon.check_alive()?;
                if r.first != want {
                    return Err(format!(
                        "{} of {size} bytes: the device's result differs from RustCrypto's",
                        which.name()
                    ));
                }
                device.push(r);
            }
            let (direct_rate, _, _) = median_range(direct_rates);
            device.sort_by(|a, b| a.bytes_per_second().total_cmp(&b.bytes_per_second()));
            let m = &device[device.len() / 2];
            let ratio = direct_rate / m.bytes_per_second().max(1e-9);
            CRYPTO_PLOT.point_in(
                which.name(),
                "through our device (virtio-user, vhost-user backend)",
                Role::Ours,
                size as f64,
                m.bytes_per_second() / 1e6,
            );
            CRYPTO_PLOT.point_in(
                which.name(),
                "RustCrypto called directly",
                Role::Limit,
                size as f64,
                direct_rate / 1e6,
            );
            let per_k = |x: u64| x as f64 * 1000.0 / m.requests.max(1) as f64;
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} | {:.0} | {ratio:.2}x | {:.0} | {:.1}, {:.1} |",
                which.name(),
                crate::user::size(size as u32),
                direct_rate / 1e6,
                m.bytes_per_second() / 1e6,
                m.requests as f64 / m.elapsed.as_secs_f64().max(1e-9),
                per_k(m.kicks),
                per_k(m.calls)
            );
            if size == 16 << 10 {
                goal.push(format!(
                    "{} {ratio:.2}x{}",
                    which.name(),
                    if ratio <= 1.2 { "" } else { " (over)" }
                ));
            }
        }
    }
    let _ = writeln!(
        t,
        "\ngoal, within 1.2x of the direct call at 16 KiB: {}",
        goal.join(", ")
    );
    daemon.kill();
    Ok(t)
}
