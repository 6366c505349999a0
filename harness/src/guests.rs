//! The tiny guests this binary carries (`virtio-harness guests`): what
//! each drives and the `-append` keys it reads, and its ELF, so `run
//! -kernel NAME` and `guests --out DIR` work wherever the binary is.

use std::io;
use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/embedded_guests.rs"));

/// One tiny guest.
#[derive(Clone, Copy, Debug)]
pub struct GuestInfo {
    /// Its name (`-kernel NAME`).
    pub name: &'static str,
    /// What it drives.
    pub drives: &'static str,
    /// The `-append` keys it reads (`<name>.<key>=…` unless written whole).
    pub keys: &'static [&'static str],
}

/// Every guest, in the guests README's order.
pub const GUESTS: &[GuestInfo] = &[
    GuestInfo {
        name: "empty",
        drives: "nothing: prints the PVH start info and probes every virtio-mmio slot",
        keys: &[],
    },
    GuestInfo {
        name: "fail",
        drives: "nothing: fails on purpose (ud2, or a panic)",
        keys: &["fail=panic"],
    },
    GuestInfo {
        name: "timer",
        drives: "the LAPIC timer and an IOAPIC pin",
        keys: &[],
    },
    GuestInfo {
        name: "rng",
        drives: "virtio-rng (§5.4)",
        keys: &[
            "mode",
            "bytes",
            "seed",
            "available",
            "wait_ms",
            "request_ms",
        ],
    },
    GuestInfo {
        name: "console",
        drives: "virtio-console (§5.3): write, echo, talk, multiport",
        keys: &["mode", "test", "bytes", "name1", "multiport", "input"],
    },
    GuestInfo {
        name: "lifecycle",
        drives: "virtio-rng's life cycle: reset in flight, unoffered features (§2.4, §3.1.1)",
        keys: &["strict"],
    },
    GuestInfo {
        name: "blk",
        drives: "virtio-blk (§5.2): pattern, read-only, range, GET_ID, discard, MQ, bench",
        keys: &[
            "test", "mode", "depth", "disks", "seed", "bytes", "offset", "serial", "unmap",
            "queues", "pattern", "size", "count",
        ],
    },
    GuestInfo {
        name: "net",
        drives: "virtio-net (§5.1): TCP/UDP echo on smoltcp, DHCP, receive filters, bench",
        keys: &[
            "test", "mode", "ms", "ip", "prefix", "peer", "port", "csum", "mrg", "bytes", "udp",
            "link", "dir", "size", "count",
        ],
    },
    GuestInfo {
        name: "crypto",
        drives: "virtio-crypto (§5.9): known-answer vectors",
        keys: &["mode", "require", "revision1", "invsess"],
    },
    GuestInfo {
        name: "tpm",
        drives: "a TPM 2.0 behind the CRB interface: PCRs, NV, GetRandom",
        keys: &[
            "startup",
            "measure",
            "nv",
            "shutdown",
            "locality",
            "arbitration",
            "bench",
        ],
    },
    GuestInfo {
        name: "uart",
        drives: "a 16550A (echo), testdev, msmouse, wctablet, and LPT1",
        keys: &["base", "bytes", "ms", "quit", "mouse", "tablet", "lpt"],
    },
    GuestInfo {
        name: "starve",
        drives: "virtio-net with a starved receive queue (§5.1.6.4)",
        keys: &["ms", "quiet", "more"],
    },
    GuestInfo {
        name: "misbehave",
        drives: "a driver against a device that lies on purpose (misbehave=)",
        keys: &["device", "mode", "rx"],
    },
    GuestInfo {
        name: "hostile",
        drives: "every device against broken driver behaviour, one case at a time",
        keys: &["case", "device"],
    },
    GuestInfo {
        name: "conform",
        drives: "the device-side conformance checks on every slot",
        keys: &["checks"],
    },
];

/// The ELF of guest `name`, if this binary carries it.
pub fn elf(name: &str) -> Option<&'static [u8]> {
    EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// What `virtio-harness guests` prints: one line per guest.
pub fn listing() -> String {
    let mut out = String::new();
    for g in GUESTS {
        let keys = if g.keys.is_empty() {
            "-".to_string()
        } else {
            g.keys
                .iter()
                .map(|k| {
                    if k.contains('=') {
                        k.to_string()
                    } else {
                        format!("{}.{k}", g.name)
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let built = if elf(g.name).is_some() {
            ""
        } else {
            " (not built)"
        };
        out.push_str(&format!(
            "{:<10} {}{built}\n           -append: {keys}\n",
            g.name, g.drives
        ));
    }
    out
}

/// Writes every carried guest's ELF into `dir`; their paths.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    EMBEDDED
        .iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes)?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The catalogue and the guests agree: every program in
    /// `guests/src/bin` is listed (and carried, unless the guests were not
    /// built), and every key listed appears in its source as the key the
    /// guest reads.
    #[test]
    fn every_guest_is_listed_with_the_keys_it_reads() {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/src/bin");
        let mut names: Vec<String> = std::fs::read_dir(&bin)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                let stem = p.file_stem()?.to_str()?.to_string();
                let main = if p.is_dir() {
                    p.join("main.rs")
                } else {
                    p.clone()
                };
                (p.extension().is_some_and(|x| x == "rs") || main.exists()).then_some(stem)
            })
            .collect();
        names.sort();
        names.dedup();
        for n in &names {
            let g = GUESTS
                .iter()
                .find(|g| g.name == n)
                .unwrap_or_else(|| panic!("guest {n} is not in GUESTS"));
            let src = std::fs::read_to_string(bin.join(format!("{n}.rs"))).unwrap_or_default();
            for k in g.keys {
                let key = k.split('=').next().unwrap_or(k);
                assert!(
                    src.contains(&format!("\"{key}\"")) || src.contains(&format!("\"{n}.{key}\"")),
                    "guest {n}: key {key} not found in its source"
                );
            }
            if option_env!("GUEST_EMPTY").is_some() {
                assert!(elf(n).is_some(), "guest {n} is not carried");
            }
        }
        assert_eq!(GUESTS.len(), names.len(), "{names:?}");
    }
}
