//! `virtio-harness`: boot tiny guests against our virtio devices.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use monitor::machine::Machine;

/// Boot tiny guests against virtio devices and report the results.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// How a run prints its results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Tables for people.
    #[default]
    Text,
    /// One JSON document on stdout, for scripts (the progress line and
    /// notes stay on stderr).
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Boot every scenario against every device configuration and print a
    /// table (the default). Ctrl-C stops after the running scenario and
    /// prints the rows so far.
    Suite {
        /// `text` (the table) or `json` (rows and hostile verdicts).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// List the tiny guests this binary carries (what each drives, the
    /// `-append` keys it reads); with `--out DIR`, write their ELFs there.
    Guests {
        /// Where to write the ELFs.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Boot one machine from QEMU-style options, e.g.
    /// `run -m 64M -object rng-builtin,id=r0 -device virtio-rng-device,rng=r0
    /// -kernel rng -append "rng.bytes=4096"` (`-kernel` takes an ELF or the
    /// name of a carried guest, see `guests`). Prints the guest's COM1
    /// output and its verdict; exits 0 on a pass.
    Run {
        /// Seconds the guest may run before it is stopped as hung.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// The machine options (`-m`, `-machine`, `-object`, `-chardev`,
        /// `-drive`, `-blockdev`, `-netdev`, `-device`, `-kernel`,
        /// `-append`, `-monitor unix:PATH,server=on,wait=off`, `-qmp …`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "OPTIONS"
        )]
        options: Vec<String>,
    },
    /// Measure: boot-to-exit of the empty guest, ours against QEMU microvm,
    /// and guest-seen rng throughput; prints a table with ratios.
    Bench {
        /// Boots per measurement (the median is reported).
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Only the virtio-net rows (the `net` guest's raw-frame bench
        /// and the TCP echo over a tap).
        #[arg(long)]
        net_only: bool,
        /// Only the vhost-user rows: the blk guest's 4 KiB random reads
        /// under QEMU through `vhost-user-blk`, our `vhost-user` backend
        /// against `qemu-storage-daemon` (median of `--rounds` runs each,
        /// at most 5 in the full bench; `HARNESS_BENCH_VHOST_COUNT=<n>`
        /// sets the requests per run).
        #[arg(long, conflicts_with = "net_only")]
        vhost_only: bool,
        /// Only the virtio-user rows: our drivers in this process drive
        /// each vhost-user backend directly (blk: ours against
        /// qemu-storage-daemon with aio=threads and aio=io_uring, page
        /// cache and O_DIRECT, one and two queues; rng: ours against
        /// vhost-device-rng), median of `--rounds`.
        #[arg(long, conflicts_with_all = ["net_only", "vhost_only"])]
        user: bool,
        /// Only the virtio-crypto rows: AES-128-CBC and AES-256-GCM at 64 B,
        /// 1 KiB and 16 KiB through our backend, driven by our driver in
        /// this process, against RustCrypto called directly (median of
        /// `--rounds`, at most 5).
        #[arg(long, conflicts_with_all = ["net_only", "vhost_only", "user"])]
        crypto: bool,
        /// Only the TPM rows: the tpm guest's TPM2_GetRandom and
        /// TPM2_PCR_Extend per second through tpm-crb, ours against QEMU,
        /// each on its own swtpm, and swtpm alone (median of `--rounds`,
        /// at most 5).
        #[arg(long, conflicts_with_all = ["net_only", "vhost_only", "user", "crypto"])]
        tpm: bool,
        /// `text` (Markdown tables) or `json` (the tables as data, and the
        /// series `report` plots).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Write one static HTML page (no server, no script): the suite table,
    /// the hostile verdicts as a device × case map, the conformance
    /// coverage per area and side with every target's results, and the
    /// benchmark plots (inline SVG). Runs the suite and the in-process
    /// conformance checks unless given their JSON.
    Report {
        /// The directory for `index.html`.
        #[arg(long, default_value = "harness-report")]
        out: std::path::PathBuf,
        /// A suite run's JSON (`suite --format json`) instead of running
        /// the suite.
        #[arg(long, value_name = "FILE")]
        suite: Option<std::path::PathBuf>,
        /// A conformance run's `report.json` (`conform run`) instead of
        /// running the in-process checks.
        #[arg(long, value_name = "FILE")]
        conform: Option<std::path::PathBuf>,
        /// Bench runs' JSON (`bench --format json`, any mode): one or more
        /// files, and the option may be repeated.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        bench: Vec<std::path::PathBuf>,
        /// Open the page in headless Chromium: save `screenshot.png`
        /// beside it and fail on a console message or a missing section.
        #[arg(long)]
        check: bool,
    },
    /// Drive a vhost-user backend from this process with our drivers
    /// (virtio-user: no VM), run one workload and print a table row, e.g.
    /// `user --socket /tmp/blk.sock --device blk --workload randread
    /// --depth 32`. Works with any backend: ours (`vhost-user`),
    /// qemu-storage-daemon, vhost-device-rng. `--workload check` writes,
    /// flushes and reads back (it overwrites the disk).
    User {
        /// The backend's socket.
        #[arg(long)]
        socket: std::path::PathBuf,
        /// The device the backend provides.
        #[arg(long, value_parser = ["blk", "rng", "net", "console"])]
        device: String,
        /// blk: randread, randwrite (a FLUSH every --flush-every writes),
        /// seqread, or check.
        #[arg(long, default_value = "randread")]
        workload: String,
        /// blk: bytes per request (a multiple of 512); net: bytes per
        /// frame (60 to 1514; the backend must send frames back).
        #[arg(long, default_value_t = 4096)]
        block: u32,
        /// blk: requests in flight per queue (1 to 128).
        #[arg(long, default_value_t = 1)]
        depth: u16,
        /// blk: request queues (the backend must offer them).
        #[arg(long, default_value_t = 1)]
        queues: u16,
        /// blk: data requests; rng: KiB to read; console: KiB to write
        /// (the letters a to z over and over); net: frames.
        #[arg(long, default_value_t = 10_000)]
        requests: u64,
        /// blk randwrite: writes between FLUSHes (0: none).
        #[arg(long, default_value_t = 32)]
        flush_every: u32,
        /// Poll the used rings (one core busy) instead of sleeping until
        /// the backend's call.
        #[arg(long)]
        poll: bool,
        /// Leave VIRTIO_F_EVENT_IDX out of the negotiation (notification
        /// flags instead of event indices, §2.7.7, §2.7.10).
        #[arg(long)]
        no_event_idx: bool,
        /// The backend's pid: charge it its CPU time (/proc/PID/stat).
        #[arg(long)]
        backend_pid: Option<u32>,
        /// MiB of memory shared with the backend.
        #[arg(long, default_value_t = 64)]
        ram_mib: u64,
    },
    /// Serve one device over vhost-user on a unix socket, e.g.
    /// `vhost-user --socket /tmp/blk.sock -drive file=disk.img,id=d0,format=raw
    /// -device virtio-blk-device,drive=d0`, for QEMU (`-chardev
    /// socket,id=vu,path=/tmp/blk.sock -device vhost-user-blk,chardev=vu`)
    /// or any other vhost-user frontend. Frontends are served one after
    /// the other until the process is killed.
    VhostUser {
        /// The socket path (replaced if it exists).
        #[arg(long)]
        socket: std::path::PathBuf,
        /// Log every request on stderr.
        #[arg(long)]
        verbose: bool,
        /// Longest busy-polling window in µs after an event, adapted to
        /// how fast the frontend answers (QEMU's `poll-max-ns`); 0 sleeps
        /// at once.
        #[arg(long, default_value_t = vhost_user::backend::DEFAULT_POLL_MAX.as_micros() as u64)]
        poll_max_us: u64,
        /// Watch what each driver puts in the rings (descriptor chains,
        /// indirect tables, the available index, ring flags, chains
        /// rewritten while the device owns them) and append each session's
        /// outcome per spec statement to this file as JSON lines; the
        /// device behaves the same.
        #[arg(long, value_name = "FILE")]
        watch_driver: Option<std::path::PathBuf>,
        /// The device options (`-object`, `-chardev`, `-drive`,
        /// `-blockdev`, `-netdev`, exactly one `-device`).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "OPTIONS"
        )]
        options: Vec<String>,
    },
    /// Spec conformance: the catalogue of the specification's normative
    /// statements and the checks that cover them.
    Conform {
        #[command(subcommand)]
        command: ConformCommand,
    },
}

#[derive(Subcommand)]
enum ConformCommand {
    /// Generate the catalogue from a clone of oasis-tcs/virtio-spec (run by
    /// hand; the result is checked in as `harness/conform/catalogue.tsv`).
    Catalogue {
        /// The specification clone (a bare one will do).
        #[arg(long)]
        spec: std::path::PathBuf,
        /// The revision to read (the catalogue records its commit).
        #[arg(long, default_value = "HEAD")]
        rev: String,
        /// Where to write it (standard output if not given).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Run the checks against our devices and drivers in this process
    /// (our guest-driver and virtio-drivers), with `--peers` the installed
    /// vhost-user backends (ours, qemu-storage-daemon, vhost-device-rng,
    /// vhost-device-console), with `--guests` from inside the `conform`
    /// tiny guest (our monitor under KVM, QEMU microvm's own devices on
    /// both transports), or any backend with `--vhost-user KIND=SOCKET`;
    /// write `report.md`,
    /// `report.json` and `junit.xml`. Exits 1 on a MUST violation by our
    /// implementations or a catalogue statement without an entry; a
    /// peer's failure is a finding, not an error.
    Run {
        /// The report directory.
        #[arg(long, default_value = "conform-report")]
        out: std::path::PathBuf,
        /// Start the installed peers and check them too.
        #[arg(long)]
        peers: bool,
        /// Run the checks inside a tiny guest too: our monitor under KVM,
        /// QEMU microvm on both virtio-mmio transports.
        #[arg(long)]
        guests: bool,
        /// Another vhost-user backend: `rng|blk|console|net=SOCKET`.
        #[arg(long, value_name = "KIND=SOCKET")]
        vhost_user: Vec<String>,
        /// Judge Linux's entropy, block and network drivers too: Debian's
        /// kernel under QEMU TCG, in front of our vhost-user backend with
        /// its ring watch (the kit `.ci/setup` fetches; the network driver
        /// needs network namespaces).
        #[arg(long)]
        linux: bool,
        /// `text` (a summary on stderr) or `json` (`report.json` on stdout
        /// as well).
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Suite {
        format: Format::Text,
    }) {
        Command::Suite { format } => suite(format),
        Command::Report {
            out,
            suite,
            conform,
            bench,
            check,
        } => report(&out, suite.as_deref(), conform.as_deref(), &bench, check),
        Command::Conform {
            command: ConformCommand::Catalogue { spec, rev, out },
        } => catalogue(&spec, &rev, out.as_deref()),
        Command::Conform {
            command:
                ConformCommand::Run {
                    out,
                    peers,
                    guests,
                    vhost_user,
                    linux,
                    format,
                },
        } => conform_run(&out, peers, guests, linux, &vhost_user, format),
        Command::Run { timeout, options } => run(&options, Duration::from_secs(timeout)),
        Command::Guests { out } => match out {
            None => {
                print!("{}", harness::guests::listing());
                ExitCode::SUCCESS
            }
            Some(dir) => match harness::guests::write_all(&dir) {
                Ok(paths) if paths.is_empty() => {
                    eprintln!(
                        "virtio-harness guests: this binary carries no guests (built with the guests skipped)"
                    );
                    ExitCode::FAILURE
                }
                Ok(paths) => {
                    for p in paths {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("virtio-harness guests: writing to {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            },
        },
        Command::VhostUser {
            socket,
            verbose,
            poll_max_us,
            watch_driver,
            options,
        } => match monitor::options::parse(&options) {
            Err(monitor::options::OptionError::Help(text)) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            _ => match monitor::serve::serve_options_with(
                &socket,
                &options,
                verbose,
                Duration::from_micros(poll_max_us),
                watch_driver.map(|path| -> monitor::serve::Wrap {
                    Box::new(move |dev, mem| {
                        let publish = harness::conform::drivers::PublishHandle::default();
                        Box::new(
                            harness::conform::drivers::WatchedDevice::new(
                                dev,
                                mem.clone(),
                                harness::conform::drivers::append_records_with(
                                    path,
                                    Some(publish.clone()),
                                ),
                            )
                            .with_publish_order(publish),
                        )
                    })
                }),
            ) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("virtio-harness vhost-user: {e}");
                    ExitCode::from(2)
                }
            },
        },
        Command::User {
            socket,
            device,
            workload,
            block,
            depth,
            queues,
            requests,
            flush_every,
            poll,
            no_event_idx,
            backend_pid,
            ram_mib,
        } => {
            let run = harness::user::UserRun {
                socket,
                kind: match device.as_str() {
                    "rng" => harness::user::UserKind::Rng,
                    "net" => harness::user::UserKind::Net,
                    "console" => harness::user::UserKind::Console,
                    _ => harness::user::UserKind::Blk,
                },
                workload,
                block,
                depth,
                queues,
                requests,
                flush_every,
                poll,
                event_idx: !no_event_idx,
                ram_mib,
                backend_pid,
                ..harness::user::UserRun::default()
            };
            match harness::user::run_once(&run) {
                Ok(row) => {
                    print!(
                        "{}{}",
                        harness::user::TABLE_HEAD,
                        harness::user::format_row(&row)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("virtio-harness user: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench {
            rounds,
            net_only,
            vhost_only,
            user,
            crypto,
            tpm,
            format,
        } => {
            harness::progress::start();
            let (mode, rounds) = if tpm {
                ("tpm", rounds.clamp(1, 5))
            } else if crypto {
                ("crypto", rounds.clamp(1, 5))
            } else if user {
                ("user", rounds.clamp(1, 5))
            } else if net_only {
                ("net", 1)
            } else if vhost_only {
                ("vhost", rounds.max(1))
            } else {
                ("all", rounds.max(1))
            };
            bench(mode, rounds, format)
        }
    }
}

/// `bench`: the measurements of `mode`, printed as `format`.
fn bench(mode: &str, rounds: usize, format: Format) -> ExitCode {
    let result = match mode {
        "tpm" => harness::bench::run_tpm(rounds),
        "crypto" => harness::bench::run_crypto(rounds),
        "user" => harness::bench::run_user(rounds),
        "net" => harness::bench::run_net(),
        "vhost" => harness::bench::run_vhost(rounds),
        _ => harness::bench::run(rounds),
    };
    harness::progress::clear();
    // Ctrl-C: what was measured is printed, as text, and no record is
    // written that would look complete.
    if harness::progress::interrupted() {
        match result {
            Ok(table) if format == Format::Text => print!("{table}"),
            Ok(table) => eprint!("{table}"),
            Err(e) => eprintln!("virtio-harness bench: {e}"),
        }
        eprintln!("virtio-harness bench: interrupted by Ctrl-C; no record written");
        return ExitCode::from(130);
    }
    match result {
        Ok(table) if format == Format::Json => {
            let record = harness::record::BenchRecord::new(mode, rounds, table);
            match serde_json::to_string_pretty(&record) {
                Ok(j) => {
                    println!("{j}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("virtio-harness bench: the record as JSON: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("virtio-harness bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `suite`: the rows as they finish (text) or one record at the end
/// (json); Ctrl-C stops after the running scenario with the rows so far.
fn suite(format: Format) -> ExitCode {
    use std::io::Write;
    harness::progress::start();
    if format == Format::Text {
        print!("{}", harness::table_header());
        let _ = std::io::stdout().flush();
    }
    let rows = harness::suite_with(&mut |ev| match ev {
        harness::SuiteEvent::Starting { name, done, total } => {
            let _ = harness::progress::step_of(done, total, name);
        }
        harness::SuiteEvent::Finished(row) => {
            harness::progress::clear();
            if format == Format::Text {
                print!("{}", harness::format_row(row));
                let _ = std::io::stdout().flush();
            }
        }
    });
    harness::progress::clear();
    let verdicts = harness::verdict::recorded();
    match format {
        Format::Text => {
            // The hostile rows' verdicts, one line per case (issue 6).
            if !verdicts.is_empty() {
                print!(
                    "\nhostile verdicts\n{}",
                    harness::verdict::render(&verdicts)
                );
            }
        }
        Format::Json => {
            let record = harness::record::SuiteRecord {
                provenance: harness::record::Provenance::here(),
                rows: rows.iter().map(Into::into).collect(),
                verdicts: verdicts.iter().map(Into::into).collect(),
            };
            match serde_json::to_string_pretty(&record) {
                Ok(j) => println!("{j}"),
                Err(e) => {
                    eprintln!("virtio-harness suite: the record as JSON: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    if harness::progress::interrupted() {
        eprintln!("interrupted by Ctrl-C after {} rows", rows.len());
        return ExitCode::from(130);
    }
    if rows.iter().any(|r| r.failed()) {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `report`: the page from the given records, running what is missing.
fn report(
    out: &std::path::Path,
    suite: Option<&std::path::Path>,
    conform: Option<&std::path::Path>,
    bench: &[std::path::PathBuf],
    check: bool,
) -> ExitCode {
    harness::progress::start();
    let inputs = harness::report::Inputs::gather(suite, conform, bench);
    harness::progress::clear();
    let inputs = match inputs {
        Ok(i) => i,
        Err(e) => {
            eprintln!("virtio-harness report: {e}");
            return ExitCode::from(if harness::progress::interrupted() {
                130
            } else {
                2
            });
        }
    };
    let page = match harness::report::write(out, &inputs) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("virtio-harness report: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", page.display());
    if check {
        match harness::report::browser::check(&page) {
            Ok(c) => {
                eprintln!(
                    "headless Chromium: {} sections, {} plots, no console messages; screenshot {}",
                    c.sections,
                    c.plots,
                    c.screenshot.display()
                );
            }
            Err(e) => {
                eprintln!("virtio-harness report --check: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `-kernel NAME` for a carried guest that is not a file here: the ELF
/// written to a scratch file (kept for the run), the options rewritten.
fn carried_kernel(options: &[String]) -> Result<(Vec<String>, Option<tempfile::TempPath>), String> {
    let mut out = options.to_vec();
    let Some(at) = out.iter().position(|a| a == "-kernel").map(|i| i + 1) else {
        return Ok((out, None));
    };
    let Some(name) = out.get(at).cloned() else {
        return Ok((out, None));
    };
    if std::path::Path::new(&name).exists() {
        return Ok((out, None));
    }
    let Some(elf) = harness::guests::elf(&name) else {
        // A bare word is a guest's name: say which ones there are. A path
        // goes on to the monitor, which says what reading it gave.
        if !name.contains('/') {
            let names: Vec<&str> = harness::guests::GUESTS.iter().map(|g| g.name).collect();
            return Err(format!(
                "-kernel {name}: no such file here, nor a guest this binary carries ({}; see `virtio-harness guests`)",
                names.join(", ")
            ));
        }
        return Ok((out, None));
    };
    let mut file = tempfile::Builder::new()
        .prefix(&format!("guest-{name}-"))
        .tempfile()
        .map_err(|e| format!("a scratch file for guest {name}: {e}"))?;
    std::io::Write::write_all(&mut file, elf).map_err(|e| format!("writing guest {name}: {e}"))?;
    let path = file.into_temp_path();
    out[at] = path.display().to_string();
    Ok((out, Some(path)))
}

fn run(options: &[String], timeout: Duration) -> ExitCode {
    let (options, _guest_file) = match carried_kernel(options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("virtio-harness run: {e}");
            return ExitCode::from(2);
        }
    };
    let options = &options[..];
    let config = match monitor::options::parse(options) {
        Ok(c) => c,
        // `-device help` and the like: QEMU prints and exits 0.
        Err(monitor::options::OptionError::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("virtio-harness run: {e}");
            return ExitCode::from(2);
        }
    };
    let mut machine = match Machine::new(&config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("virtio-harness run: {e}");
            return ExitCode::from(2);
        }
    };
    for (i, (kind, backend)) in machine.devices.iter().enumerate() {
        eprintln!("slot {i}: {kind} ({backend})");
    }
    for (protocol, path) in machine.monitors() {
        eprintln!("monitor: {protocol:?} on {}", path.display());
    }
    match machine.run(timeout) {
        Ok(out) => {
            print!("{}", out.serial);
            eprintln!(
                "verdict: {}; boot-to-exit {:.2} ms; {}",
                out.verdict,
                out.boot_to_exit.as_secs_f64() * 1e3,
                out.exits
            );
            match out.verdict {
                monitor::vm::Verdict::Pass => ExitCode::SUCCESS,
                // A testdev quit exits as QEMU does: (status << 1) | 1.
                monitor::vm::Verdict::Quit(s) => {
                    ExitCode::from(monitor::ports::qemu_exit_status(s) as u8)
                }
                _ => ExitCode::FAILURE,
            }
        }
        Err(e) => {
            eprintln!("virtio-harness run: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `conform catalogue`: reads the specification and writes the catalogue.
fn catalogue(spec: &std::path::Path, rev: &str, out: Option<&std::path::Path>) -> ExitCode {
    use harness::conform::{catalogue::Catalogue, spec};
    let result = spec::SpecTree::open(spec, rev).and_then(|tree| {
        spec::read_statements(&tree).map(|statements| Catalogue {
            commit: tree.commit.clone(),
            describe: tree.describe.clone(),
            statements,
        })
    });
    let cat = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("virtio-harness conform catalogue: {e}");
            return ExitCode::from(2);
        }
    };
    let text = cat.to_tsv();
    match out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("virtio-harness conform catalogue: {}: {e}", path.display());
                return ExitCode::from(2);
            }
            eprintln!(
                "{} statements from {} ({}) written to {}",
                cat.statements.len(),
                cat.describe,
                cat.commit,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

/// `conform run`: the checks against the targets, the report written.
fn conform_run(
    out: &std::path::Path,
    peers: bool,
    guests: bool,
    linux: bool,
    others: &[String],
    format: Format,
) -> ExitCode {
    use harness::conform::{catalogue, report, run, targets::Kind};
    let (cat, scope) = match (
        catalogue::Catalogue::parse(harness::conform::CATALOGUE),
        catalogue::Scope::parse(harness::conform::SCOPE),
    ) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) => {
            eprintln!("virtio-harness conform: catalogue.tsv {e}");
            return ExitCode::from(2);
        }
        (_, Err(e)) => {
            eprintln!("virtio-harness conform: scope.tsv {e}");
            return ExitCode::from(2);
        }
    };
    // The command line first: a bad one is refused before anything runs.
    let mut backends = Vec::new();
    for o in others {
        let Some((kind, sock)) = o
            .split_once('=')
            .and_then(|(k, s)| Kind::parse(k).map(|k| (k, s)))
        else {
            eprintln!(
                "virtio-harness conform: --vhost-user {o}: expected rng|blk|console|net=SOCKET"
            );
            return ExitCode::from(2);
        };
        backends.push((kind, sock));
    }
    let mut sel = harness::conform::Selection {
        guests,
        linux,
        vhost_user: backends
            .into_iter()
            .map(|(k, s)| (k, std::path::PathBuf::from(s)))
            .collect(),
        ..Default::default()
    };
    if peers {
        match std::env::current_exe() {
            Ok(exe) => sel.peers = Some(exe),
            Err(e) => eprintln!("virtio-harness conform: own executable: {e}; no peers"),
        }
    }
    harness::progress::start();
    let runs = harness::conform::collect(&sel);
    harness::progress::clear();
    let runs = match runs {
        Ok(r) => r,
        Err(e) => {
            eprintln!("virtio-harness conform: {e}; no report written");
            return ExitCode::from(130);
        }
    };
    let checks = harness::conform::checks();
    let entries = report::entries(&cat, &scope, &checks);
    if let Err(e) = report::write(out, &cat, &entries, &runs) {
        eprintln!("virtio-harness conform: {}: {e}", out.display());
        return ExitCode::from(2);
    }
    if format == Format::Json {
        match serde_json::to_string_pretty(&report::json(&cat, &entries, &runs)) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("virtio-harness conform: the report as JSON: {e}"),
        }
    }
    let mut bad = false;
    let missing: Vec<&String> = entries
        .iter()
        .filter(|(_, e)| matches!(e, report::Entry::Missing))
        .map(|(id, _)| id)
        .collect();
    if !missing.is_empty() {
        bad = true;
        eprintln!(
            "{} statements without an entry in scope.tsv or a check: {missing:?}",
            missing.len()
        );
    }
    let unknown = report::unknown_ids(&cat, &checks);
    if !unknown.is_empty() {
        bad = true;
        eprintln!("checks name statements the catalogue does not have: {unknown:?}");
    }
    let cells = report::cells(&runs);
    let ours = [
        run::OURS_IN_PROCESS,
        run::OURS_VHOST_USER,
        harness::conform::drivers::GUEST_DRIVER,
        harness::conform::guests::OURS_KVM,
        harness::conform::kvm_drivers::GUEST_DRIVER_KVM,
    ];
    for (target, s, detail) in report::must_failures(&cat, &cells, &ours) {
        bad = true;
        eprintln!(
            "MUST violated by {target}: {} (§{}): {detail}",
            s.id, s.section
        );
    }
    // Where the environment must run Linux (CI with /dev/kvm), a Linux
    // target that did not run is an error too.
    let require = |k: &str| std::env::var(k).as_deref() == Ok("1");
    let linux_required = require("HARNESS_REQUIRE_QEMU") || require("HARNESS_REQUIRE_LINUX");
    for r in runs.iter().filter(|r| r.error.is_some()) {
        let e = r.error.as_deref().unwrap_or("");
        eprintln!("not checked: {} ({}): {e}", r.target, r.device);
        if ours.contains(&r.target.as_str())
            || (linux_required && r.target == harness::conform::linux::LINUX)
        {
            bad = true;
        }
    }
    // As the tables show them: a SHOULD statement's failure is a warning.
    let should: std::collections::BTreeSet<&str> = cat
        .statements
        .iter()
        .filter(|s| s.level == harness::conform::catalogue::Level::Should)
        .map(|s| s.id.as_str())
        .collect();
    for (target, m) in &cells {
        let count = |f: fn(&report::Cell) -> bool| m.values().filter(|c| f(c)).count();
        let fails = |should_level: bool| {
            m.iter()
                .filter(|(id, c)| {
                    matches!(c, report::Cell::Fail(_))
                        && should.contains(id.as_str()) == should_level
                })
                .count()
        };
        eprintln!(
            "{target}: {} pass, {} fail, {} warn, {} not applicable, {} not observable",
            count(|c| matches!(c, report::Cell::Pass)),
            fails(false),
            count(|c| matches!(c, report::Cell::Warn(_))) + fails(true),
            count(|c| matches!(c, report::Cell::NotApplicable(_))),
            count(|c| matches!(c, report::Cell::NotObservable(_))),
        );
    }
    eprintln!("report: {}", out.join("report.md").display());
    if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
