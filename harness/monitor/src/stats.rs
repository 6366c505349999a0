//! KVM's own statistics through its binary statistics interface
//! (`KVM_GET_STATS_FD` on the VM and vCPU file descriptors, Linux 5.14+):
//! the exits the kernel counted, including those it served without
//! returning to this process (ioeventfd writes, LAPIC and IOAPIC accesses,
//! `hlt` with an in-kernel LAPIC), and interrupt injections.
//!
//! Only single-valued statistics are read (histograms are skipped). A
//! kernel without the interface gives [`StatsError::Unsupported`] and the
//! monitor goes on without them.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_bindings::{
    KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK,
};

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`.
const KVM_GET_STATS_FD: libc::c_ulong = 0xae_ce;
/// `sizeof(struct kvm_stats_header)`.
const HEADER_LEN: usize = 24;
/// `sizeof(struct kvm_stats_desc)` without its name.
const DESC_LEN: usize = 16;
/// More descriptors than any kernel has: a sanity bound on what we read.
const MAX_DESCS: u32 = 4096;

/// Why the statistics cannot be read.
#[derive(Debug)]
pub enum StatsError {
    /// The kernel has no binary statistics (`KVM_GET_STATS_FD` failed).
    Unsupported(io::Error),
    /// Reading the statistics file failed.
    Read(io::Error),
    /// The statistics file's header or descriptors make no sense.
    Malformed(&'static str),
}

impl fmt::Display for StatsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StatsError::Unsupported(e) => write!(f, "KVM_GET_STATS_FD: {e}"),
            StatsError::Read(e) => write!(f, "reading KVM statistics: {e}"),
            StatsError::Malformed(what) => write!(f, "KVM statistics file: {what}"),
        }
    }
}

impl std::error::Error for StatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StatsError::Unsupported(e) | StatsError::Read(e) => Some(e),
            StatsError::Malformed(_) => None,
        }
    }
}

/// How a statistic behaves over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Only grows: a run's value is the difference.
    Cumulative,
    /// A current value or a peak: a run's value is the last one.
    Instant,
}

#[derive(Clone, Debug)]
struct Desc {
    name: String,
    kind: Kind,
    /// Byte offset of its value in the file.
    at: u64,
}

/// An open statistics file of a VM or vCPU and its descriptors.
#[derive(Debug)]
pub struct StatsFd {
    file: File,
    descs: Vec<Desc>,
}

impl StatsFd {
    /// Opens the statistics of a KVM VM or vCPU file descriptor.
    pub fn open(kvm_object: &impl AsRawFd) -> Result<StatsFd, StatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor or -1; a non-KVM fd just fails with ENOTTY.
        let fd = unsafe { libc::ioctl(kvm_object.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if fd < 0 {
            return Err(StatsError::Unsupported(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no
        // one else.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(StatsError::Read)?;
        let field = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&header[i * 4..i * 4 + 4]);
            u32::from_le_bytes(b)
        };
        let (name_size, num_desc, desc_offset, data_offset) =
            (field(1), field(2), field(4), field(5));
        if num_desc > MAX_DESCS || name_size == 0 || name_size > 4096 {
            return Err(StatsError::Malformed("implausible header"));
        }
        let entry = DESC_LEN + name_size as usize;
        let mut raw = vec![0u8; entry * num_desc as usize];
        file.read_exact_at(&mut raw, u64::from(desc_offset))
            .map_err(StatsError::Read)?;
        let mut descs = Vec::new();
        for d in raw.chunks_exact(entry) {
            let word = |i: usize| u32::from_le_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
            let flags = word(0);
            let size = u16::from_le_bytes([d[6], d[7]]);
            let offset = word(8);
            let name = &d[DESC_LEN..];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let kind = match flags & KVM_STATS_TYPE_MASK {
                KVM_STATS_TYPE_CUMULATIVE => Kind::Cumulative,
                KVM_STATS_TYPE_INSTANT | KVM_STATS_TYPE_PEAK => Kind::Instant,
                _ => continue,
            };
            if size != 1 {
                continue;
            }
            descs.push(Desc {
                name: String::from_utf8_lossy(name).into_owned(),
                kind,
                at: u64::from(data_offset) + u64::from(offset),
            });
        }
        Ok(StatsFd { file, descs })
    }

    /// The current values.
    pub fn read(&self) -> Result<KvmStats, StatsError> {
        let mut values = Vec::with_capacity(self.descs.len());
        for d in &self.descs {
            let mut b = [0u8; 8];
            self.file
                .read_exact_at(&mut b, d.at)
                .map_err(StatsError::Read)?;
            values.push((d.name.clone(), u64::from_le_bytes(b), d.kind));
        }
        Ok(KvmStats { values })
    }
}

/// Named values read from a [`StatsFd`], in the kernel's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmStats {
    values: Vec<(String, u64, Kind)>,
}

impl KvmStats {
    /// The value of statistic `name` (e.g. `exits`, `io_exits`,
    /// `mmio_exits`, `halt_exits`, `irq_injections`), if the kernel has it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
    }

    /// Every statistic, name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values.iter().map(|(n, v, _)| (n.as_str(), *v))
    }

    /// What happened since `earlier`: cumulative counters become
    /// differences, instant values and peaks stay as they are now.
    pub fn since(&self, earlier: &KvmStats) -> KvmStats {
        let values = self
            .values
            .iter()
            .map(|(n, v, k)| {
                let v = match (k, earlier.get(n)) {
                    (Kind::Cumulative, Some(e)) => v.wrapping_sub(e),
                    _ => *v,
                };
                (n.clone(), v, *k)
            })
            .collect();
        KvmStats { values }
    }
}

/// KVM's statistics for one run: the vCPU's and the VM's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvmRunStats {
    /// The vCPU's statistics (exits by kind, injections, halts).
    pub vcpu: KvmStats,
    /// The VM's statistics.
    pub vm: KvmStats,
}

impl KvmRunStats {
    /// Every VM exit the kernel counted (`exits`), including those it
    /// served itself; 0 if it does not say.
    pub fn exits(&self) -> u64 {
        self.vcpu.get("exits").unwrap_or(0)
    }

    /// The vCPU statistic `name`, 0 if the kernel does not have it.
    pub fn vcpu(&self, name: &str) -> u64 {
        self.vcpu.get(name).unwrap_or(0)
    }
}

impl fmt::Display for KvmRunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kvm: {} exits", self.exits())?;
        let kinds = [
            ("io", "io_exits"),
            ("mmio", "mmio_exits"),
            ("halt", "halt_exits"),
            ("irq", "irq_exits"),
            ("irq-window", "irq_window_exits"),
            ("signal", "signal_exits"),
        ];
        let mut first = true;
        for (label, name) in kinds {
            if let Some(n) = self.vcpu.get(name).filter(|n| *n > 0) {
                write!(f, "{}{label} {n}", if first { " (" } else { ", " })?;
                first = false;
            }
        }
        if !first {
            f.write_str(")")?;
        }
        if let Some(n) = self.vcpu.get("irq_injections") {
            write!(f, ", {n} interrupts injected")?;
        }
        Ok(())
    }
}

/// The VM's and vCPU's statistics files.
#[derive(Debug)]
pub(crate) struct Stats {
    vcpu: StatsFd,
    vm: StatsFd,
}

impl Stats {
    pub(crate) fn open(vm: &impl AsRawFd, vcpu: &impl AsRawFd) -> Result<Stats, StatsError> {
        Ok(Stats {
            vcpu: StatsFd::open(vcpu)?,
            vm: StatsFd::open(vm)?,
        })
    }

    pub(crate) fn read(&self) -> Result<KvmRunStats, StatsError> {
        Ok(KvmRunStats {
            vcpu: self.vcpu.read()?,
            vm: self.vm.read()?,
        })
    }
}

impl KvmRunStats {
    /// What happened since `earlier` (see [`KvmStats::since`]).
    pub fn since(&self, earlier: &KvmRunStats) -> KvmRunStats {
        KvmRunStats {
            vcpu: self.vcpu.since(&earlier.vcpu),
            vm: self.vm.since(&earlier.vm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_values_become_differences() {
        let before = KvmStats {
            values: vec![
                ("exits".into(), 10, Kind::Cumulative),
                ("max".into(), 7, Kind::Instant),
            ],
        };
        let after = KvmStats {
            values: vec![
                ("exits".into(), 25, Kind::Cumulative),
                ("max".into(), 3, Kind::Instant),
                ("new".into(), 4, Kind::Cumulative),
            ],
        };
        let d = after.since(&before);
        assert_eq!(d.get("exits"), Some(15));
        assert_eq!(d.get("max"), Some(3));
        assert_eq!(d.get("new"), Some(4));
        assert_eq!(d.get("none"), None);
        let run = KvmRunStats {
            vcpu: d,
            vm: KvmStats::default(),
        };
        assert_eq!(run.to_string(), "kvm: 15 exits");
    }

    #[test]
    fn a_non_kvm_fd_is_unsupported() {
        let f = File::open("/dev/null").unwrap();
        assert!(matches!(StatsFd::open(&f), Err(StatsError::Unsupported(_))));
    }
}
