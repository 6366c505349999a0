//! `virtio-harness`: boot tiny guests against our virtio devices.

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

fn main() {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Suite) {
        Command::Suite => {
            let rows = harness::suite();
            println!(
                "{:<24} {:<24} {:<16} {:<8}",
                "scenario", "device", "backend", "result"
            );
            for r in &rows {
                println!(
                    "{:<24} {:<24} {:<16} {:<8}",
                    r.scenario, r.device, r.backend, r.result
                );
            }
            if rows.is_empty() {
                println!("(no devices yet: the KVM harness and its scenarios arrive with issue 3)");
            }
        }
    }
}
