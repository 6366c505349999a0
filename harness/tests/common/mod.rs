//! Helpers the vhost-user frontend tests share: our monitor with guest RAM
//! on a shared memfd and one vhost-user chardev, run to the guest's exit.
//! (Each test binary uses some of them.)
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use harness::scenarios::Workdir;
use monitor::machine::Machine;
use monitor::vm::Outcome;

/// Longest a guest may run before it is stopped.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// The `net` guest's ELF.
pub fn net_guest() -> &'static str {
    option_env!("GUEST_NET").unwrap_or(concat!(env!("GUEST_DIR"), "/net"))
}

/// A fresh scratch directory for `test`.
pub fn scratch(test: &str) -> Workdir {
    Workdir::new(test).unwrap_or_else(|e| panic!("{test}: scratch directory: {e}"))
}

/// Our options for a 64 MiB guest on a shared memfd, a unix-socket
/// chardev `vu` on `socket`, then `device`.
pub fn options(kernel: &str, append: &str, socket: &Path, device: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-m",
        "64M",
        "-object",
        "memory-backend-memfd,id=mem,size=64M,share=on",
        "-machine",
        "microvm,memory-backend=mem",
        "-kernel",
        kernel,
        "-append",
        append,
        "-chardev",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("socket,id=vu,path={}", socket.display()));
    a.extend(device.iter().map(|s| s.to_string()));
    a
}

/// The machine `args` describe.
pub fn machine(args: &[String]) -> Machine {
    let config = monitor::options::parse(args).expect("options");
    Machine::new(&config).unwrap_or_else(|e| panic!("machine: {e}"))
}

/// Runs `args` to the guest's exit (at most [`TIMEOUT`]).
pub fn run(args: &[String]) -> Outcome {
    machine(args).run(TIMEOUT).expect("run")
}

/// The verdict, the guest's serial output and each slot's report.
pub fn describe(o: &Outcome) -> String {
    let devices: Vec<String> = o.devices.iter().map(|d| d.to_string()).collect();
    format!(
        "verdict: {:?}\nserial:\n{}\ndevices:\n{}",
        o.verdict,
        o.serial,
        devices.join("\n")
    )
}
