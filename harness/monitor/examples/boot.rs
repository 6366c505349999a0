//! Embeds the monitor in a few lines: a machine from QEMU-style options,
//! run to the guest's exit.
//!
//! `cargo run -p bothends-monitor --example boot -- -kernel guest.elf
//! [-append …] [-device …]`; the guest's serial output, then its verdict.
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = monitor::parse(&args)
        .map_err(|e| e.to_string())
        .and_then(|config| monitor::Machine::new(&config).map_err(|e| e.to_string()))
        .and_then(|mut machine| {
            machine
                .run(Duration::from_secs(30))
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok(o) => {
            print!("{}", o.serial);
            println!("monitor: the guest said {}", o.verdict);
            if o.verdict.is_pass() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("boot: {e}");
            ExitCode::from(2)
        }
    }
}
