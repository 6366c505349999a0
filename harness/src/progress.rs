//! How a long run shows itself and how it stops: a progress line on
//! stderr (what runs, rows done of total, elapsed) only when stderr is a
//! terminal, so logs stay clean; and Ctrl-C, which asks the run to stop
//! after what it is doing (whose children then end with it: QEMU, the
//! daemons and swtpm are killed when their handles drop), while a second
//! Ctrl-C kills the children it knows of ([`adopt`]) and quits at once
//! (scratch directories and network namespaces may then stay behind).

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::Instant;

/// Set by the first SIGINT.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// SIGINTs seen.
static PRESSES: AtomicU32 = AtomicU32::new(0);
/// Whether the progress line is drawn.
static DRAW: AtomicBool = AtomicBool::new(false);
/// When the run started.
static START: OnceLock<Instant> = OnceLock::new();

/// Ctrl-C was pressed: the run stops at its next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted by Ctrl-C")
    }
}

impl std::error::Error for Interrupted {}

impl From<Interrupted> for String {
    fn from(i: Interrupted) -> String {
        i.to_string()
    }
}

/// The processes the run started (QEMU, daemons, swtpm) that are alive
/// now, by pid (0: a free slot), for the second Ctrl-C, which skips the
/// drops that would otherwise kill them.
static CHILDREN: [AtomicI32; 64] = [const { AtomicI32::new(0) }; 64];

/// Notes a process the run started, to be killed on a second Ctrl-C.
pub fn adopt(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    for slot in &CHILDREN {
        if slot
            .compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            return;
        }
    }
}

/// Forgets a process the run has killed or reaped.
pub fn release(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    for slot in &CHILDREN {
        let _ = slot.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst);
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    // SAFETY: __errno_location is this thread's errno; the handler puts
    // back what it found, as it may interrupt code between a call and
    // its errno check.
    let errno = unsafe { *libc::__errno_location() };
    if PRESSES.fetch_add(1, Ordering::SeqCst) >= 1 {
        for slot in &CHILDREN {
            let pid = slot.load(Ordering::SeqCst);
            if pid > 0 {
                // SAFETY: kill(2) is async-signal-safe; `pid` is a child
                // we started and have not reaped (so not reused).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // SAFETY: _exit is async-signal-safe; the second press means now.
        unsafe { libc::_exit(130) };
    }
    INTERRUPTED.store(true, Ordering::SeqCst);
    let clear: &[u8] = if DRAW.load(Ordering::Relaxed) {
        b"\r\x1b[K\n"
    } else {
        b"\n"
    };
    let msg = b"interrupted: stopping after the current step (Ctrl-C again to quit now)\n";
    for bytes in [clear, &msg[..]] {
        // SAFETY: write(2) is async-signal-safe; the buffers are statics.
        unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Starts a long run: the clock, the progress line if stderr is a
/// terminal, and the Ctrl-C handler.
pub fn start() {
    let _ = START.set(Instant::now());
    DRAW.store(std::io::stderr().is_terminal(), Ordering::Relaxed);
    // SAFETY: an all-zero sigaction is valid (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SA_RESTART: the run's blocking calls carry on; it checks
    // `interrupted` between steps.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action` is valid and ours; sigaction copies it.
    unsafe { libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut()) };
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

fn elapsed() -> String {
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    format!("{}:{:02}", t / 60, t % 60)
}

/// A step of a run starts: draws `what` (with `done`/`total` if known),
/// or says the run was interrupted.
pub fn step_of(done: usize, total: usize, what: impl fmt::Display) -> Result<(), Interrupted> {
    draw(Some((done, total)), &what)
}

/// A step whose place in the run is not counted.
pub fn step(what: impl fmt::Display) -> Result<(), Interrupted> {
    draw(None, &what)
}

fn draw(place: Option<(usize, usize)>, what: &dyn fmt::Display) -> Result<(), Interrupted> {
    if interrupted() {
        return Err(Interrupted);
    }
    if DRAW.load(Ordering::Relaxed) {
        let place = place.map_or(String::new(), |(done, total)| format!("{done}/{total} "));
        eprint!("\r\x1b[K[{place}{}] {what}", elapsed());
        let _ = std::io::stderr().flush();
    }
    Ok(())
}

/// Clears the progress line before other output.
pub fn clear() {
    if DRAW.load(Ordering::Relaxed) {
        eprint!("\r\x1b[K");
        let _ = std::io::stderr().flush();
    }
}
