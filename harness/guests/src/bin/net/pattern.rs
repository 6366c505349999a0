//! The console pattern stream (`harness/src/scenarios.rs` `pattern_byte`):
//! byte `i` is `\n` when `i % 64 == 63`, else
//! `ALPHA[(i / 64 + i % 64) % 62]`. It repeats every [`PERIOD`] bytes, so
//! one table of two periods serves any run of up to a period as one
//! contiguous slice: filling is `copy_from_slice` (`rep movs`) and
//! checking `repe cmpsq`, a few emulated instructions per 8 bytes instead
//! of a loop body per byte.

/// The stream's period: 62 rows of 64 bytes.
pub const PERIOD: usize = 64 * 62;

const ALPHA: &[u8; 62] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Byte `i` of the stream.
pub fn byte(i: u64) -> u8 {
    if i % 64 == 63 {
        b'\n'
    } else {
        ALPHA[((i / 64 + i % 64) % 62) as usize]
    }
}

/// Two periods of the stream, starting at stream offset 0.
pub struct Pattern {
    table: [u8; 2 * PERIOD],
}

impl Pattern {
    /// Builds the table (once per run: ~8000 emulated iterations).
    pub fn new() -> Self {
        let mut table = [0u8; 2 * PERIOD];
        for (i, b) in table[..PERIOD].iter_mut().enumerate() {
            *b = byte(i as u64);
        }
        table.copy_within(..PERIOD, PERIOD);
        Pattern { table }
    }

    /// The stream from offset `off` on, at most [`PERIOD`] bytes of it and
    /// at most `max`.
    fn run(&self, off: u64, max: usize) -> &[u8] {
        let phase = (off % PERIOD as u64) as usize;
        &self.table[phase..phase + max.min(PERIOD)]
    }

    /// Writes the stream from offset `off` into `dst`.
    pub fn fill(&self, mut off: u64, dst: &mut [u8]) {
        let mut rest = dst;
        while !rest.is_empty() {
            let run = self.run(off, rest.len());
            let (head, tail) = rest.split_at_mut(run.len());
            head.copy_from_slice(run);
            off += run.len() as u64;
            rest = tail;
        }
    }

    /// Compares `src` with the stream from offset `off` on: `Err` with
    /// the index in `src` of the first byte that differs.
    pub fn check(&self, mut off: u64, src: &[u8]) -> Result<(), usize> {
        let mut done = 0;
        while done < src.len() {
            let run = self.run(off, src.len() - done);
            let got = &src[done..done + run.len()];
            if !equal(got, run) {
                let k = got.iter().zip(run).position(|(a, b)| a != b).unwrap_or(0);
                return Err(done + k);
            }
            done += run.len();
            off += run.len() as u64;
        }
        Ok(())
    }
}

/// `a == b` for slices of one length: `repe cmpsq` over the whole
/// words, then the tail bytes.
pub fn equal(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let words = a.len() / 8;
    let left: usize;
    // SAFETY: both pointers are valid for `words * 8 <= len` bytes of
    // reads; `repe cmpsq` only reads them (DF is clear by the ABI) and
    // clobbers rcx, rsi, rdi and the flags, which are declared.
    unsafe {
        core::arch::asm!(
            "repe cmpsq",
            inout("rcx") words => left,
            inout("rsi") a.as_ptr() => _,
            inout("rdi") b.as_ptr() => _,
            options(nostack, readonly),
        );
    }
    // rcx counts down on each compared word; a mismatch stops it early
    // (ZF clear). After a mismatch at the last word rcx is 0 too, so the
    // last word is compared again below.
    if left != 0 {
        return false;
    }
    let tail = words.saturating_sub(1) * 8;
    a[tail..] == b[tail..]
}
