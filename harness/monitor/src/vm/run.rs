//! The vCPU run loop: port and MMIO exits served, the watchdog that kicks
//! a vCPU out of `KVM_RUN` at the deadline, and the device workers started
//! and stopped around it.

use super::*;
use crate::parallel::{LPT_LEN, LPT1_BASE};

/// The port-mapped devices the loop serves: COM1, COM2, LPT1 (if the
/// machine has one) and the debug port's log.
pub(super) struct PortIo<'a> {
    pub(super) serials: [&'a mut ports::Serial; 2],
    pub(super) lpt: Option<&'a mut crate::parallel::Parallel>,
    pub(super) debug: &'a mut Log,
}

/// The loop proper: serves exits until one ends the run.
pub(super) fn run_loop(
    vcpu: &mut VcpuFd,
    bus: &mut MmioBus,
    io: PortIo<'_>,
    stop: &AtomicBool,
    quit: &QuitRequest,
    exits: &mut ExitCounts,
) -> Result<Stop, VmError> {
    let PortIo {
        serials,
        mut lpt,
        debug,
    } = io;
    loop {
        if let Some(status) = quit.requested() {
            return Ok(Stop::Quit(status));
        }
        if stop.load(Ordering::Acquire) {
            return Ok(Stop::Timeout);
        }
        let exit = match vcpu.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR => {
                exits.interrupted += 1;
                continue;
            }
            Err(err) => {
                return Err(VmError::Kvm {
                    what: "KVM_RUN",
                    err,
                });
            }
        };
        match exit {
            VcpuExit::IoOut(port, data) => {
                exits.io_out += 1;
                match port {
                    EXIT_PORT => return Ok(Stop::ExitPort(ports::port_value(data))),
                    DEBUG_PORT => data.iter().for_each(|b| debug.push(*b)),
                    p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                        // Wider or repeated (`rep outsb`) writes feed the
                        // register byte by byte.
                        for b in data.iter() {
                            serials[0].write(p - COM1_BASE, *b);
                        }
                    }
                    p if (COM2_BASE..COM2_BASE + COM1_LEN).contains(&p) => {
                        for b in data.iter() {
                            serials[1].write(p - COM2_BASE, *b);
                        }
                    }
                    p if (LPT1_BASE..LPT1_BASE + LPT_LEN).contains(&p) && lpt.is_some() => {
                        if let Some(l) = lpt.as_deref_mut() {
                            for b in data.iter() {
                                l.write(p - LPT1_BASE, *b);
                            }
                        }
                    }
                    _ => exits.unhandled_io += 1,
                }
            }
            VcpuExit::IoIn(port, data) => {
                exits.io_in += 1;
                match port {
                    DEBUG_PORT => data.fill(0xe9),
                    p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                        for b in data.iter_mut() {
                            *b = serials[0].read(p - COM1_BASE);
                        }
                    }
                    p if (COM2_BASE..COM2_BASE + COM1_LEN).contains(&p) => {
                        for b in data.iter_mut() {
                            *b = serials[1].read(p - COM2_BASE);
                        }
                    }
                    p if (LPT1_BASE..LPT1_BASE + LPT_LEN).contains(&p) && lpt.is_some() => {
                        if let Some(l) = lpt.as_deref_mut() {
                            for b in data.iter_mut() {
                                *b = l.read(p - LPT1_BASE);
                            }
                        }
                    }
                    _ => {
                        exits.unhandled_io += 1;
                        data.fill(0xff);
                    }
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                exits.mmio_read += 1;
                if !bus.read(addr, data) {
                    exits.unhandled_mmio += 1;
                    data.fill(0xff);
                }
            }
            VcpuExit::MmioWrite(addr, data) => {
                exits.mmio_write += 1;
                if !bus.write(addr, data) {
                    exits.unhandled_mmio += 1;
                }
            }
            VcpuExit::Hlt => {
                exits.hlt += 1;
                return Ok(Stop::Halted);
            }
            VcpuExit::Shutdown => {
                exits.shutdown += 1;
                return Ok(Stop::Shutdown("triple fault (KVM_EXIT_SHUTDOWN)".into()));
            }
            VcpuExit::InternalError => {
                exits.internal_error += 1;
                return Ok(Stop::Internal(None));
            }
            VcpuExit::FailEntry(reason, cpu) => {
                exits.fail_entry += 1;
                return Ok(Stop::Internal(Some(format!(
                    "VM entry failed (KVM_EXIT_FAIL_ENTRY): hardware reason {reason:#x} on cpu {cpu}"
                ))));
            }
            VcpuExit::SystemEvent(kind, _) => {
                exits.other += 1;
                let what = match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => "shutdown".to_string(),
                    KVM_SYSTEM_EVENT_RESET => "reset".to_string(),
                    KVM_SYSTEM_EVENT_CRASH => "crash".to_string(),
                    other => format!("type {other}"),
                };
                return Ok(Stop::Shutdown(format!(
                    "system event: {what} (KVM_EXIT_SYSTEM_EVENT)"
                )));
            }
            other => {
                exits.other += 1;
                return Ok(Stop::Unexpected(format!("unexpected VM exit {other:?}")));
            }
        }
    }
}

/// Signals the device workers to stop when dropped.
pub(super) struct StopOnDrop<'a>(pub(super) &'a EventFd);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        // An eventfd write fails only on counter overflow.
        let _ = self.0.write(1);
    }
}

/// The failure message a guest printed (`verdict: fail: <message>`, the
/// last such line), or one naming the exit value.
pub(super) fn fail_message(serial: &str, value: u32) -> String {
    serial
        .lines()
        .rev()
        .find_map(|l| l.trim_end().strip_prefix("verdict: fail: "))
        .map(str::to_string)
        .unwrap_or_else(|| format!("exit port value {value:#x} (fail), no message on COM1"))
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub(super) fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_signal: libc::c_int) {}

/// Installs a handler for [`kick_signal`] that does nothing (once per
/// process), without `SA_RESTART`, so the signal makes `KVM_RUN` return
/// `EINTR`; and unblocks the signal on the calling thread.
pub(super) fn install_kick_handler() -> Result<(), VmError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty
        // mask); the handler set next is a function that does nothing, so it
        // is async-signal-safe.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: `action` is ours and valid; sigaction copies it.
        let rc = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    if let Err(errno) = installed {
        return Err(VmError::Signal(io::Error::from_raw_os_error(*errno)));
    }
    // SAFETY: an all-zero sigset_t is a valid (if unspecified) set, which
    // sigemptyset then initialises; the masks are ours.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, kick_signal());
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(VmError::Signal(io::Error::from_raw_os_error(rc)));
    }
    Ok(())
}
