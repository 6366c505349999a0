//! `virtio-harness`: boot tiny guests against our virtio devices.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Boot tiny guests against virtio devices and report the results.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Boot every scenario against every device configuration and print a
    /// table (the default).
    Suite,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Suite) {
        Command::Suite => {
            let rows = harness::suite();
            println!(
                "{:<24} {:<28} {:<22} {:>9} {:>6}  result",
                "scenario", "device", "backend", "boot ms", "exits"
            );
            for r in &rows {
                let ms = r
                    .boot_to_exit
                    .map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
                let exits = r.exits.map_or("-".to_string(), |n| n.to_string());
                println!(
                    "{:<24} {:<28} {:<22} {:>9} {:>6}  {}",
                    r.scenario, r.device, r.backend, ms, exits, r.result
                );
            }
            if rows.iter().any(|r| r.failed()) {
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
