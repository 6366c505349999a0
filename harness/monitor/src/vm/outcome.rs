//! What a run left: the verdict (the guest's exit value, a crash or a
//! timeout, with a register report), the exits counted, KVM's statistics.

use super::*;

/// The vCPU's state when it stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// What happened, in words.
    pub detail: String,
    /// Instruction pointer.
    pub rip: u64,
    /// Stack pointer.
    pub rsp: u64,
    /// Flags.
    pub rflags: u64,
    /// `rax`.
    pub rax: u64,
    /// `rbx`.
    pub rbx: u64,
    /// `rcx`.
    pub rcx: u64,
    /// `rdx`.
    pub rdx: u64,
    /// `cr0`.
    pub cr0: u64,
    /// `cr2` (the last page-fault address).
    pub cr2: u64,
    /// `cr3`.
    pub cr3: u64,
    /// `cr4`.
    pub cr4: u64,
    /// `IA32_EFER`.
    pub efer: u64,
    /// `cs` selector.
    pub cs: u16,
    /// `cs` base.
    pub cs_base: u64,
    /// `cs.L`: 64-bit code.
    pub cs_long: bool,
    /// `cs.D/B`: 32-bit code (when not long).
    pub cs_32: bool,
}

impl Report {
    /// The CPU mode, from `cr0.PE` and `cs`.
    pub fn mode(&self) -> &'static str {
        if self.cr0 & 1 == 0 {
            "real mode"
        } else if self.cs_long {
            "64-bit"
        } else if self.cs_32 {
            "32-bit"
        } else {
            "16-bit protected"
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} ({}, base {:#x})",
            self.detail,
            self.rip,
            self.rsp,
            self.rflags,
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.cr0,
            self.cr2,
            self.cr3,
            self.cr4,
            self.efer,
            self.cs,
            self.mode(),
            self.cs_base
        )
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The guest wrote [`EXIT_PASS`] to the exit port.
    Pass,
    /// The guest wrote [`EXIT_FAIL`] (or another value) to the exit port;
    /// the message is its `verdict: fail: …` COM1 line if it printed one.
    Fail(String),
    /// The time ran out with the guest still running (or halted waiting for
    /// an interrupt).
    Timeout(Report),
    /// The guest halted with interrupts off: it can never go on.
    Halted(Report),
    /// The host side ended the run with a status: a `-chardev testdev`
    /// quit command (QEMU exits with `(status << 1) | 1`).
    Quit(u32),
    /// Triple fault (`KVM_EXIT_SHUTDOWN`) or a shutdown/reset/crash system
    /// event.
    Shutdown(Report),
    /// KVM could not go on: an internal error (emulation failure, an
    /// exception during event delivery) or a failed VM entry.
    InternalError(Report),
    /// A VM exit this monitor does not serve.
    Unexpected(Report),
}

impl Verdict {
    /// True for [`Verdict::Pass`].
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// A one-word name: `pass`, `fail`, `timeout`, `halted`, `shutdown`,
    /// `internal-error`, `unexpected-exit`, `quit`.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail(_) => "fail",
            Verdict::Quit(_) => "quit",
            Verdict::Timeout(_) => "timeout",
            Verdict::Halted(_) => "halted",
            Verdict::Shutdown(_) => "shutdown",
            Verdict::InternalError(_) => "internal-error",
            Verdict::Unexpected(_) => "unexpected-exit",
        }
    }

    /// The register report, for the verdicts that carry one.
    pub fn report(&self) -> Option<&Report> {
        match self {
            Verdict::Pass | Verdict::Fail(_) | Verdict::Quit(_) => None,
            Verdict::Timeout(r)
            | Verdict::Halted(r)
            | Verdict::Shutdown(r)
            | Verdict::InternalError(r)
            | Verdict::Unexpected(r) => Some(r),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail(msg) => write!(f, "fail: {msg}"),
            Verdict::Quit(s) => write!(
                f,
                "quit {s} (testdev; QEMU's exit status {})",
                crate::ports::qemu_exit_status(*s)
            ),
            other => match other.report() {
                Some(r) => write!(f, "{}: {r}", other.kind()),
                None => f.write_str(other.kind()),
            },
        }
    }
}

/// VM exits by kind, counted from `KVM_RUN` returns (exits the kernel
/// handles itself, such as LAPIC accesses, are not seen here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitCounts {
    /// Port reads.
    pub io_in: u64,
    /// Port writes.
    pub io_out: u64,
    /// MMIO reads.
    pub mmio_read: u64,
    /// MMIO writes.
    pub mmio_write: u64,
    /// `hlt` (only without an in-kernel LAPIC).
    pub hlt: u64,
    /// Triple faults.
    pub shutdown: u64,
    /// KVM internal errors.
    pub internal_error: u64,
    /// Failed VM entries.
    pub fail_entry: u64,
    /// `KVM_RUN` interrupted by a signal (the watchdog's kick).
    pub interrupted: u64,
    /// Any other exit.
    pub other: u64,
    /// Of `io_in + io_out`: ports nobody serves (reads get all-ones).
    pub unhandled_io: u64,
    /// Of `mmio_read + mmio_write`: addresses no device holds (reads get
    /// all-ones).
    pub unhandled_mmio: u64,
}

impl ExitCounts {
    /// Every `KVM_RUN` return.
    pub fn total(&self) -> u64 {
        self.io_in
            + self.io_out
            + self.mmio_read
            + self.mmio_write
            + self.hlt
            + self.shutdown
            + self.internal_error
            + self.fail_entry
            + self.interrupted
            + self.other
    }
}

impl fmt::Display for ExitCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} exits", self.total())?;
        let kinds = [
            ("io-out", self.io_out),
            ("io-in", self.io_in),
            ("mmio-read", self.mmio_read),
            ("mmio-write", self.mmio_write),
            ("hlt", self.hlt),
            ("shutdown", self.shutdown),
            ("internal-error", self.internal_error),
            ("fail-entry", self.fail_entry),
            ("interrupted", self.interrupted),
            ("other", self.other),
            ("unhandled-io", self.unhandled_io),
            ("unhandled-mmio", self.unhandled_mmio),
        ];
        let mut first = true;
        for (name, n) in kinds {
            if n > 0 {
                write!(f, "{}{name} {n}", if first { " (" } else { ", " })?;
                first = false;
            }
        }
        if !first {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// What one [`Vm::run`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub verdict: Verdict,
    /// COM1 output during the run (`\r\n` folded to `\n`).
    pub serial: String,
    /// Debug-port (`0xe9`) output during the run.
    pub debug: String,
    /// VM exits by kind.
    pub exits: ExitCounts,
    /// From the first `KVM_RUN` to the verdict.
    pub boot_to_exit: Duration,
    /// From [`Vm::new`] to the first `KVM_RUN` (VM creation and loading),
    /// for the first run; zero for later runs.
    pub setup: Duration,
    /// KVM's own counts for this run (every exit, including those the
    /// kernel served itself, such as ioeventfd writes, LAPIC accesses and
    /// `hlt`; interrupt injections), if the kernel offers binary statistics
    /// ([`Vm::kvm_stats_unavailable`] says why not).
    pub kvm: Option<KvmRunStats>,
    /// Each virtio device's state and counters after the run (counters
    /// since the device was added), by slot.
    pub devices: Vec<VirtioReport>,
}
