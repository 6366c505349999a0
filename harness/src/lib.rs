//! The test suite: boots tiny guests on our monitor (`monitor`) against
//! every device, checks them against peers nobody here wrote, and measures.
//! It depends on the product crates; nothing depends on it.
//!
//! - Scenarios: [`scenarios`] (guest + machine + host-side peer + checks;
//!   the table `virtio-harness` prints), [`verdict`] (the hostile guests'
//!   verdicts).
//! - Peers: [`qemu`] (QEMU microvm as the reference monitor), [`linux`]
//!   (a stock Linux kernel under QEMU TCG driving our devices),
//!   [`daemon`] (a vhost-user backend process: ours or another project's),
//!   [`netns`] (network namespaces with a tap, ping and a TCP client).
//! - Measurements: [`bench`](mod@bench) (ours against QEMU, in process against over
//!   vhost-user).
//!
//! # Example
//!
//! The hostile guest prints a `case:` line before each case and a
//! `verdict:` line after it; [`verdict::parse`] turns its serial output
//! into one verdict per case, a case left without one counting by how the
//! run ended, and [`verdict::check_device`] judges a device by them.
//!
//! ```rust
//! use harness::verdict::{self, RunEnd, VerdictKind};
//!
//! let serial = "\
//! plan: rng 3
//! case: rng zero-length
//! verdict: rng zero-length PASS completed with 0 bytes
//! case: rng head-out-of-range
//! verdict: rng head-out-of-range REJECT DEVICE_NEEDS_RESET
//! case: rng descriptor-loop
//! ";
//! let verdicts = verdict::parse(serial, &RunEnd::TimedOut("30 s".into()));
//! assert_eq!(verdicts.len(), 3);
//! assert_eq!(verdicts[0].detail, "completed with 0 bytes");
//! assert_eq!(verdicts[1].kind, VerdictKind::Reject);
//! // No verdict before the run timed out: the device wedged on that case.
//! assert_eq!(verdicts[2].kind, VerdictKind::Wedged);
//!
//! let judged = verdict::check_device(&verdicts, serial, "rng", 3, 0);
//! assert!(judged.unwrap_err().contains("1 PASS, 1 REJECT, 1 WEDGED"));
//! ```

pub mod bench;
pub mod conform;
pub mod daemon;
pub mod guests;
pub mod linux;
pub mod netns;
pub mod progress;
pub mod qemu;
pub mod record;
pub mod report;
pub mod scenarios;
pub mod swtpm;
pub mod user;
pub mod verdict;

use std::time::Duration;

use monitor::vm;

/// One row of the scenario report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteRow {
    /// Scenario name.
    pub scenario: String,
    /// Device under test.
    pub device: String,
    /// Backend behind it.
    pub backend: String,
    /// Outcome: `pass`, `FAIL: …` or `skip: …`.
    pub result: String,
    /// From the first `KVM_RUN` to the verdict, if the guest ran.
    pub boot_to_exit: Option<Duration>,
    /// VM exits seen by the monitor (`KVM_RUN` returns), if the guest ran.
    pub exits: Option<u64>,
    /// VM exits KVM counted (including those it served itself, such as
    /// ioeventfd writes and in-kernel APIC accesses), where it says.
    pub kvm_exits: Option<u64>,
}

impl SuiteRow {
    /// True if the row is a failure (not a pass, not a skip).
    pub fn failed(&self) -> bool {
        self.result.starts_with("FAIL")
    }
}

/// The suite table's header line.
pub fn table_header() -> String {
    format!(
        "{:<32} {:<34} {:<31} {:>9} {:>7} {:>9}  result\n",
        "scenario", "device", "backend", "boot ms", "exits", "kvm exits"
    )
}

/// One row of the suite table, as a line.
pub fn format_row(r: &SuiteRow) -> String {
    let ms = r
        .boot_to_exit
        .map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
    let exits = r.exits.map_or("-".to_string(), |n| n.to_string());
    let kvm = r.kvm_exits.map_or("-".to_string(), |n| n.to_string());
    format!(
        "{:<32} {:<34} {:<31} {:>9} {:>7} {:>9}  {}\n",
        r.scenario, r.device, r.backend, ms, exits, kvm, r.result
    )
}

/// The suite table as text: one header line, one line per row.
pub fn format_table(rows: &[SuiteRow]) -> String {
    let mut t = table_header();
    for r in rows {
        t.push_str(&format_row(r));
    }
    t
}

/// Longest a suite guest may run.
const SUITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A guest of the suite: its name, ELF (if the build script built it),
/// command line, number of empty virtio-mmio slots, and whether it is meant
/// to pass.
struct SuiteGuest {
    scenario: &'static str,
    device: &'static str,
    elf: Option<&'static str>,
    cmdline: &'static str,
    slots: usize,
    expect_pass: bool,
}

const SUITE: &[SuiteGuest] = &[
    SuiteGuest {
        scenario: "boot + probe (empty)",
        device: "2 empty virtio-mmio slots",
        elf: option_env!("GUEST_EMPTY"),
        cmdline: "",
        slots: 2,
        expect_pass: true,
    },
    SuiteGuest {
        scenario: "interrupts (timer)",
        device: "in-kernel LAPIC/IOAPIC",
        elf: option_env!("GUEST_TIMER"),
        cmdline: "",
        slots: 0,
        expect_pass: true,
    },
    SuiteGuest {
        scenario: "fail path (fail)",
        device: "exit port",
        elf: option_env!("GUEST_FAIL"),
        cmdline: "",
        slots: 0,
        expect_pass: false,
    },
];

/// Runs every scenario against every device configuration: first the
/// tiny guests that need no device (each on a 64 MiB memfd, with the
/// verdict each is meant to give), then every [`scenarios`] entry
/// ([`scenarios::all`], then [`scenarios::net()`]). Without
/// KVM every row is a skip.
pub fn suite() -> Vec<SuiteRow> {
    suite_with(&mut |_| {})
}

/// What [`suite_with`] reports as it goes.
#[derive(Debug)]
pub enum SuiteEvent<'a> {
    /// Row `done + 1` of `total` starts: the scenario's name.
    Starting {
        /// The scenario.
        name: &'a str,
        /// Rows finished so far.
        done: usize,
        /// Rows in all.
        total: usize,
    },
    /// A row finished.
    Finished(&'a SuiteRow),
}

/// [`suite`], telling `report` of each row as it starts and finishes (for
/// a progress line and rows printed as they come).
pub fn suite_with(report: &mut dyn FnMut(SuiteEvent<'_>)) -> Vec<SuiteRow> {
    let unavailable = vm::kvm_unavailable();
    let scenarios: Vec<_> = scenarios::all()
        .into_iter()
        .chain(scenarios::net())
        .collect();
    let total = SUITE.len() + scenarios.len();
    let mut done = 0;
    let mut rows: Vec<SuiteRow> = SUITE
        .iter()
        .take_while(|_| !progress::interrupted())
        .map(|g| {
            report(SuiteEvent::Starting {
                name: g.scenario,
                done,
                total,
            });
            let mut row = SuiteRow {
                scenario: g.scenario.into(),
                device: g.device.into(),
                backend: "memory-backend-memfd".into(),
                result: String::new(),
                boot_to_exit: None,
                exits: None,
                kvm_exits: None,
            };
            row.result = match (&unavailable, g.elf) {
                (Some(reason), _) => format!("skip: {reason}"),
                (None, None) => "skip: guest not built".into(),
                (None, Some(path)) => match run_suite_guest(g, path) {
                    Ok(out) => {
                        row.boot_to_exit = Some(out.boot_to_exit);
                        row.exits = Some(out.exits.total());
                        row.kvm_exits = out.kvm.as_ref().map(|k| k.exits());
                        if out.verdict.is_pass() == g.expect_pass {
                            "pass".into()
                        } else {
                            format!("FAIL: {}", out.verdict)
                        }
                    }
                    Err(e) => format!("FAIL: {e}"),
                },
            };
            report(SuiteEvent::Finished(&row));
            done += 1;
            row
        })
        .collect();
    for sc in scenarios {
        // Ctrl-C (`progress::start`): no new scenario starts.
        if progress::interrupted() {
            break;
        }
        report(SuiteEvent::Starting {
            name: sc.name,
            done,
            total,
        });
        let mut row = SuiteRow {
            scenario: sc.name.into(),
            device: sc.device.into(),
            backend: sc.backend.into(),
            result: String::new(),
            boot_to_exit: None,
            exits: None,
            kvm_exits: None,
        };
        if let Some(reason) = &unavailable {
            row.result = format!("skip: {reason}");
            report(SuiteEvent::Finished(&row));
            done += 1;
            rows.push(row);
            continue;
        }
        let r = sc.run();
        if let Some(o) = &r.outcome {
            row.boot_to_exit = Some(o.boot_to_exit);
            row.exits = Some(o.exits.total());
            row.kvm_exits = o.kvm.as_ref().map(|k| k.exits());
        }
        row.result = match (r.result, r.skipped) {
            (Ok(()), Some(why)) => format!("skip: {why}"),
            (Ok(()), None) => match r.notes.first() {
                // The host side's first note says what passed (e.g. the
                // hostile rows' verdict counts), cut to fit the table.
                Some(note) => format!("pass: {}", first_chars(note, 72)),
                None => "pass".into(),
            },
            // Ctrl-C reached the scenario's children too: not its fault.
            (Err(_), _) if progress::interrupted() => "skip: interrupted by Ctrl-C".into(),
            (Err(e), _) => format!("FAIL: {}", e.lines().next().unwrap_or("")),
        };
        report(SuiteEvent::Finished(&row));
        done += 1;
        rows.push(row);
    }
    rows
}

/// The first line of `s`, at most `n` characters of it (with `…` when cut).
fn first_chars(s: &str, n: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

fn run_suite_guest(g: &SuiteGuest, path: &str) -> Result<vm::Outcome, String> {
    let elf = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let memory = backends::hostmem::HostMemory::memfd("guest-ram", 64 << 20, true, true, false)
        .map_err(|e| e.to_string())?;
    vm::boot(memory, &elf, g.cmdline, g.slots, SUITE_TIMEOUT).map_err(|e| e.to_string())
}
