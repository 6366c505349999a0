//! Scenario `rng`: reads the entropy device (§5.4) of the first
//! `virtio_mmio.device=` slot with DeviceID 4 through `guest-driver`, in
//! request sizes cycling through [`SIZES`], and checks what it can.
//!
//! Options (see README.md): `rng.mode=poll|irq` (default irq),
//! `rng.bytes=N` (default 1 MiB), `rng.seed=S` (the bytes must be the
//! SplitMix64 stream of S), `rng.available=M` (the source has only M bytes:
//! read them, then one more request must stay pending for `rng.wait_ms=T`,
//! default 200), `rng.request_ms=R` (how long each request may take,
//! default 10 000). Last line before the verdict:
//! `rng: <bytes> bytes in <requests> requests, <interrupts> interrupts`.
#![no_std]
#![no_main]

use guest_driver::virtio_core::features::DeviceType;
use guest_driver::{Error, Rng, RngOptions};
use guest_rt::virtio::{self, Budget, Options, OrFail};
use guest_rt::{BootInfo, exit, println};

guest_rt::entry!(main);

/// Request sizes, cycled (each capped by what remains and by the buffer).
const SIZES: [usize; 10] = [1, 3, 16, 64, 255, 512, 1000, 4096, 8192, 65536];
/// Default of `rng.bytes`.
const DEFAULT_BYTES: u64 = 1 << 20;
/// Default of `rng.wait_ms`.
const DEFAULT_WAIT_MS: u64 = 200;
/// Default of `rng.request_ms`: bound on each request, in milliseconds.
const REQUEST_MS: u64 = 10_000;
/// Progress line every this many bytes.
const PROGRESS: u64 = 256 * 1024;

/// The SplitMix64 stream (backends::rng::Deterministic), byte by byte:
/// each output word as 8 little-endian bytes.
struct SplitMix {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl SplitMix {
    fn new(seed: u64) -> Self {
        SplitMix {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    /// The next output word (the state advances once).
    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Compares `chunk` with the next bytes of the stream; on a mismatch,
    /// the offset in `chunk`, the byte found and the byte expected. Whole
    /// words are compared at once where the stream is at a word boundary
    /// (the guests run emulated on some hosts: fewer instructions pay).
    fn check(&mut self, chunk: &[u8]) -> Result<(), (usize, u8, u8)> {
        let mut i = 0;
        while i < chunk.len() {
            let word = (self.used == 8)
                .then(|| chunk.get(i..i + 8))
                .flatten()
                .and_then(|w| <[u8; 8]>::try_from(w).ok());
            if let Some(got) = word {
                let want = self.next_word().to_le_bytes();
                if let Some(k) = (0..8).find(|&k| got[k] != want[k]) {
                    return Err((i + k, got[k], want[k]));
                }
                i += 8;
                continue;
            }
            if self.used == 8 {
                self.word = self.next_word().to_le_bytes();
                self.used = 0;
            }
            let want = self.word[self.used];
            self.used += 1;
            let got = chunk[i];
            if got != want {
                return Err((i, got, want));
            }
            i += 1;
        }
        Ok(())
    }
}

fn main(boot: &'static BootInfo) {
    let opts = Options::new(
        boot,
        "rng",
        &[
            "mode",
            "bytes",
            "seed",
            "available",
            "wait_ms",
            "request_ms",
        ],
    )
    .or_fail(format_args!("rng"));
    let mode = opts.mode().or_fail(format_args!("rng"));
    let bytes = opts.u64("bytes").or_fail(format_args!("rng"));
    let seed = opts.u64("seed").or_fail(format_args!("rng"));
    let available = opts.u64("available").or_fail(format_args!("rng"));
    let wait_ms = opts
        .u64("wait_ms")
        .or_fail(format_args!("rng"))
        .unwrap_or(DEFAULT_WAIT_MS);
    let request_ms = opts
        .u64("request_ms")
        .or_fail(format_args!("rng"))
        .unwrap_or(REQUEST_MS);
    let total = available.unwrap_or(bytes.unwrap_or(DEFAULT_BYTES));

    let dma = virtio::dma_pool(boot).or_fail(format_args!("rng"));
    let dev = virtio::find_device(boot, &dma, DeviceType::Rng).or_fail(format_args!("rng"));
    println!(
        "rng: device at {:#x} irq {}, mode {mode}",
        dev.slot.base, dev.slot.irq
    );
    if mode == virtio::Mode::Irq {
        virtio::route_irq(&dev.slot).or_fail(format_args!("rng: irq {}", dev.slot.irq));
    }
    let options = RngOptions {
        completion: mode.completion(),
        event_idx: true,
        ..RngOptions::default()
    };
    let mut rng = Rng::new(&dma, dev.regs, options).or_fail(format_args!("rng: initialising"));
    println!(
        "rng: features {:#x}, modern {}",
        rng.features(),
        rng.transport().is_modern()
    );

    let Some(buf) = virtio::scratch() else {
        exit::fail(format_args!("rng: scratch buffer taken"));
    };
    let mut expect = seed.map(SplitMix::new);
    let (mut done, mut requests) = (0u64, 0u64);
    while done < total {
        let size = SIZES[requests as usize % SIZES.len()];
        let n = usize::try_from(total - done).map_or(size, |left| left.min(size));
        let n = n.min(buf.len());
        let chunk = &mut buf[..n];
        rng.read_exact(chunk, &mut Budget::new(mode, request_ms))
            .or_fail(format_args!("rng: request of {n} bytes at offset {done}"));
        requests += 1;
        if let (Some(stream), Some(seed)) = (expect.as_mut(), seed)
            && let Err((i, got, want)) = stream.check(chunk)
        {
            exit::fail(format_args!(
                "rng: byte at offset {} is {got:#04x}, the SplitMix64 stream of seed {seed} has {want:#04x}",
                done + i as u64
            ));
        }
        let before = done;
        done += chunk.len() as u64;
        if done / PROGRESS != before / PROGRESS {
            println!("rng: {done} bytes");
        }
    }
    if seed.is_some() {
        println!("rng: {done} bytes match the SplitMix64 stream");
    }

    if let Some(m) = available {
        // The source is dry: one more request must stay pending (§5.4.6:
        // the device completes a request only with at least one byte).
        let mut one = [0u8; 1];
        match rng.read(&mut one, &mut Budget::new(mode, wait_ms)) {
            Ok(_) => exit::fail(format_args!(
                "rng: more than rng.available={m} bytes arrived"
            )),
            Err(Error::Timeout { .. }) => {
                println!("rng: no byte beyond {m} within {wait_ms} ms; request left pending");
            }
            Err(e) => exit::fail(format_args!(
                "rng: waiting past the {m} available bytes: {e}"
            )),
        }
        // Leave the request pending: no reset on the way out.
        core::mem::forget(rng);
    }
    println!(
        "rng: clock {} TSC/ms, {} timer ticks, {} interrupts with nothing to acknowledge",
        virtio::clock::tsc_per_ms(),
        virtio::clock::ticks(),
        virtio::empty_interrupts()
    );
    println!(
        "rng: {done} bytes in {requests} requests, {} interrupts",
        virtio::interrupts()
    );
}
