//! Scenario `tpm`: firmware's use of a TPM 2.0 behind the CRB interface at
//! `0xFED4_0000` (PTP 6.5.3), through `guest_driver::tpm`: it starts the
//! TPM, measures four blocks into PCR 8 and a tag into PCR 9 (SHA-256 bank),
//! keeps a value in an NV index, reads them back and shuts the TPM down.
//! The harness compares the values it prints with SHA-256 computed on the
//! host (`harness::swtpm`, whose block rule is this file's [`block`]).
//!
//! Options (`-append`):
//! - `tpm.startup=clear|state` (default clear): TPM2_Startup's type;
//! - `tpm.measure=on|off` (default on): extend PCR 8 and 9;
//! - `tpm.nv=define|read|undefine|none` (default none): define the index
//!   and write it, read it, or remove it;
//! - `tpm.shutdown=state|clear|none` (default state): TPM2_Shutdown's type;
//! - `tpm.locality=N` (default 0): the locality the commands run at;
//! - `tpm.arbitration=on` (default off): first exercise locality requests,
//!   relinquish and seize across localities 0, 2 and 4 (five-locality
//!   interfaces only; QEMU's has locality 0 alone);
//! - `tpm.bench=N` (default 0): time N TPM2_GetRandom(32) and N
//!   TPM2_PCR_Extend (PCR 16) and print both rates.
//!
//! Lines: `tpm: pcr8 <hex>`, `tpm: pcr9 <hex>`, `tpm: nv <hex>`,
//! `tpm bench: <op> <n> in <us> us`.
#![no_std]
#![no_main]

use core::ptr::NonNull;

use guest_driver::VolatileMmio;
use guest_driver::tpm::crb::{CRB_BASE, CRB_SPAN, reg};
use guest_driver::tpm::{Crb, Startup, Tpm};
use guest_rt::virtio::{self, Budget, Mode, Options, OrFail, clock};
use guest_rt::{BootInfo, cpu, println};
use sha2::{Digest, Sha256};

guest_rt::entry!(main);

/// The blocks measured into PCR 8.
const BLOCKS: usize = 4;
/// A block's size.
const BLOCK_LEN: usize = 512;
/// The bytes measured into PCR 9.
const TAG: &[u8] = b"bothends tpm guest";
/// The NV index (an ordinary index in the owner range).
const NV_INDEX: u32 = 0x0150_0016;
/// What goes in it.
const NV_DATA: &[u8; 32] = b"survives Startup(STATE)/(CLEAR)!";
/// How long one command may take (swtpm's RSA work takes seconds).
const COMMAND_MS: u64 = 60_000;

/// Block `b`: byte `i` is `(7i + 13b) mod 256` xor `0x5a`.
fn block(b: usize) -> [u8; BLOCK_LEN] {
    core::array::from_fn(|i| ((i * 7 + b * 13) as u8) ^ 0x5a)
}

fn wait() -> Budget {
    Budget::new(Mode::Poll, COMMAND_MS)
}

fn regs() -> VolatileMmio {
    let Some(base) = NonNull::new(CRB_BASE as usize as *mut u8) else {
        guest_rt::exit::fail(format_args!("tpm: the CRB base is null"));
    };
    // SAFETY: the PC's TPM range (64 KiB from 0xFED4_0000: the five
    // locality pages, and the buffer page a monitor may put after them) is
    // identity-mapped and uncached (above UNCACHED_START, below 4 GiB);
    // nothing else in this program touches it, and accesses to parts no
    // device backs read as the monitor says, without side effects here.
    unsafe { VolatileMmio::new(base, CRB_SPAN as usize) }
}

/// Prints a digest as hex after `what`.
fn show(what: &str, d: &[u8]) {
    let mut hex = [0u8; 64];
    for (i, b) in d.iter().take(32).enumerate() {
        const H: &[u8; 16] = b"0123456789abcdef";
        hex[2 * i] = H[(b >> 4) as usize];
        hex[2 * i + 1] = H[(b & 15) as usize];
    }
    let s = core::str::from_utf8(&hex[..2 * d.len().min(32)]).unwrap_or("?");
    println!("tpm: {what} {s}");
}

fn main(boot: &'static BootInfo) {
    let opts = Options::new(
        boot,
        "tpm",
        &[
            "startup",
            "measure",
            "nv",
            "shutdown",
            "locality",
            "arbitration",
            "bench",
        ],
    )
    .or_fail(format_args!("tpm"));
    let startup = opts
        .choice(
            "startup",
            &[
                ("clear", Some(Startup::Clear)),
                ("state", Some(Startup::State)),
            ],
            "clear or state",
        )
        .or_fail(format_args!("tpm"))
        .unwrap_or(Some(Startup::Clear));
    let measure = opts
        .choice("measure", &[("on", true), ("off", false)], "on or off")
        .or_fail(format_args!("tpm"))
        .unwrap_or(true);
    let nv = opts
        .choice(
            "nv",
            &[
                ("define", 'd'),
                ("read", 'r'),
                ("undefine", 'u'),
                ("none", '-'),
            ],
            "define, read, undefine or none",
        )
        .or_fail(format_args!("tpm"))
        .unwrap_or('-');
    let shutdown = opts
        .choice(
            "shutdown",
            &[
                ("state", Some(Startup::State)),
                ("clear", Some(Startup::Clear)),
                ("none", None),
            ],
            "state, clear or none",
        )
        .or_fail(format_args!("tpm"))
        .unwrap_or(Some(Startup::State));
    let locality = opts
        .u64("locality")
        .or_fail(format_args!("tpm"))
        .unwrap_or(0);
    let arbitration = opts
        .choice("arbitration", &[("on", true), ("off", false)], "on or off")
        .or_fail(format_args!("tpm"))
        .unwrap_or(false);
    let bench = opts.u64("bench").or_fail(format_args!("tpm")).unwrap_or(0);

    let regs = regs();
    let id = regs_read(&regs, reg::INTF_ID);
    println!(
        "tpm: CRB at {CRB_BASE:#x}, interface id {id:#x} (type {}, version {}, {} localities)",
        id & 0xf,
        (id >> 4) & 0xf,
        if (id >> 8) & 1 == 1 {
            "five"
        } else {
            "only locality 0 of"
        }
    );
    if id & 0xf != 1 {
        guest_rt::exit::fail(format_args!(
            "tpm: no active CRB interface at {CRB_BASE:#x}"
        ));
    }
    if arbitration {
        arbitrate(&regs);
    }
    let locality = u8::try_from(locality).unwrap_or(u8::MAX);
    let crb = Crb::new(&regs, locality).or_fail(format_args!("tpm: locality"));
    crb.request_locality(&mut wait())
        .or_fail(format_args!("tpm: request locality {locality}"));
    crb.ready(&mut wait())
        .or_fail(format_args!("tpm: cmdReady"));
    println!(
        "tpm: locality {locality} granted, buffer {} bytes at {:#x}",
        crb.command_limit(),
        CRB_BASE + crb.buffers().0
    );
    let mut tpm = Tpm::new(crb);
    if let Some(su) = startup {
        tpm.startup(su, &mut wait())
            .or_fail(format_args!("tpm: TPM2_Startup({su:?})"));
        println!("tpm: started ({su:?})");
    }
    if startup == Some(Startup::Clear) {
        tpm.self_test(true, &mut wait())
            .or_fail(format_args!("tpm: TPM2_SelfTest"));
    }
    let mut random = [0u8; 32];
    let n = tpm
        .get_random(&mut random, &mut wait())
        .or_fail(format_args!("tpm: TPM2_GetRandom"));
    println!("tpm: {n} random bytes");
    let m = tpm
        .tpm_property(guest_driver::tpm::command::PT_MANUFACTURER, &mut wait())
        .or_fail(format_args!("tpm: TPM2_GetCapability"));
    let m = m.to_be_bytes();
    println!(
        "tpm: manufacturer {}",
        core::str::from_utf8(&m)
            .unwrap_or("?")
            .trim_end_matches('\0')
    );
    if measure {
        for b in 0..BLOCKS {
            let d: [u8; 32] = Sha256::digest(block(b)).into();
            tpm.pcr_extend(8, &d, &mut wait())
                .or_fail(format_args!("tpm: extend PCR 8"));
        }
        let d: [u8; 32] = Sha256::digest(TAG).into();
        tpm.pcr_extend(9, &d, &mut wait())
            .or_fail(format_args!("tpm: extend PCR 9"));
        println!("tpm: measured {BLOCKS} blocks into PCR 8 and the tag into PCR 9");
    }
    for pcr in [8, 9] {
        let v = tpm
            .pcr_read_sha256(pcr, &mut wait())
            .or_fail(format_args!("tpm: read PCR {pcr}"));
        if pcr == 8 {
            show("pcr8", &v);
        } else {
            show("pcr9", &v);
        }
    }
    match nv {
        'd' => {
            tpm.nv_define(NV_INDEX, NV_DATA.len() as u16, &mut wait())
                .or_fail(format_args!("tpm: TPM2_NV_DefineSpace"));
            tpm.nv_write(NV_INDEX, 0, NV_DATA, &mut wait())
                .or_fail(format_args!("tpm: TPM2_NV_Write"));
        }
        'u' => tpm
            .nv_undefine(NV_INDEX, &mut wait())
            .or_fail(format_args!("tpm: TPM2_NV_UndefineSpace")),
        _ => {}
    }
    if nv == 'd' || nv == 'r' {
        let mut out = [0u8; 32];
        tpm.nv_read(NV_INDEX, 0, &mut out, &mut wait())
            .or_fail(format_args!("tpm: TPM2_NV_Read"));
        show("nv", &out);
    }
    if bench > 0 {
        run_bench(&mut tpm, bench);
    }
    if let Some(su) = shutdown {
        tpm.shutdown(su, &mut wait())
            .or_fail(format_args!("tpm: TPM2_Shutdown({su:?})"));
        println!("tpm: shut down ({su:?})");
    }
    tpm.crb().go_idle();
    tpm.crb().relinquish();
}

fn regs_read(regs: &VolatileMmio, r: u64) -> u32 {
    use guest_driver::virtio_core::mmio::driver::RegisterAccess;
    regs.read32(r)
}

/// Locality requests, relinquish and seize (PTP 6.5.3), checked through
/// TPM_LOC_STATE and each page's TPM_LOC_STS.
fn arbitrate(regs: &VolatileMmio) {
    let l0 = Crb::new(regs, 0).or_fail(format_args!("tpm"));
    let l2 = Crb::new(regs, 2).or_fail(format_args!("tpm"));
    let l4 = Crb::new(regs, 4).or_fail(format_args!("tpm"));
    l0.request_locality(&mut wait())
        .or_fail(format_args!("tpm: locality 0"));
    // Locality 2 asks while 0 holds it: it waits.
    if l2.request_locality(&mut Budget::new(Mode::Poll, 5)).is_ok() {
        guest_rt::exit::fail(format_args!("tpm: locality 2 granted while 0 held it"));
    }
    l0.relinquish();
    if l0.active_locality() != Some(2) {
        guest_rt::exit::fail(format_args!(
            "tpm: after 0 relinquished, active locality {:?}, want 2 (it asked)",
            l0.active_locality()
        ));
    }
    // Locality 4 seizes from 2; 2 is told.
    const SEIZE: u32 = 1 << 2;
    use guest_driver::virtio_core::mmio::driver::RegisterAccess;
    regs.write32(4 * 0x1000 + reg::LOC_CTRL, SEIZE);
    if l4.active_locality() != Some(4) || l2.read(reg::LOC_STS) & 2 == 0 {
        guest_rt::exit::fail(format_args!(
            "tpm: seize by 4: active {:?}, locality 2 status {:#x}",
            l4.active_locality(),
            l2.read(reg::LOC_STS)
        ));
    }
    // Commands from a locality not active are not run: START stays 0.
    regs.write32(2 * 0x1000 + reg::CTRL_START, 1);
    if l2.read(reg::CTRL_START) != 0 {
        guest_rt::exit::fail(format_args!("tpm: START taken from an inactive locality"));
    }
    l4.relinquish();
    l2.relinquish();
    if l0.active_locality().is_some() {
        guest_rt::exit::fail(format_args!(
            "tpm: a locality still active after all let go"
        ));
    }
    println!("tpm: arbitration ok (request, wait, relinquish, seize, inactive START dropped)");
}

fn run_bench(tpm: &mut Tpm<&VolatileMmio>, n: u64) {
    clock::start();
    let per_us = (clock::tsc_per_ms() / 1000).max(1);
    let mut random = [0u8; 32];
    let t0 = cpu::rdtsc();
    for _ in 0..n {
        tpm.get_random(&mut random, &mut wait())
            .or_fail(format_args!("tpm bench: GetRandom"));
    }
    let t1 = cpu::rdtsc();
    let d = [0x11u8; 32];
    for _ in 0..n {
        tpm.pcr_extend(16, &d, &mut wait())
            .or_fail(format_args!("tpm bench: PCR_Extend"));
    }
    let t2 = cpu::rdtsc();
    println!("tpm bench: get_random {n} in {} us", (t1 - t0) / per_us);
    println!("tpm bench: pcr_extend {n} in {} us", (t2 - t1) / per_us);
    let _ = virtio::interrupts();
}
