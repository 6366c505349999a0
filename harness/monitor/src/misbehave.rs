//! The register half of a hostile device (`misbehave=<mode>`): the lies the
//! slot tells in its virtio-mmio registers (§2.5.1 `ConfigGeneration`,
//! §2.4 reset, §4.2.2 interrupt storm). The used-ring half is
//! `virtio_devices::misbehave::Misbehaving` (feature `misbehave`), which
//! the slot finds around the device when it is attached; only such a
//! device ever gets [`RegisterLies`], so without the feature none lies.

use std::time::Duration;

pub use virtio_devices::misbehave::Misbehave;
/// The used-ring half over the monitor's guest memory.
#[cfg(feature = "misbehave")]
pub type Misbehaving = virtio_devices::misbehave::Misbehaving<crate::vm::GuestRam>;

/// How often a storming device raises its interrupt.
pub const STORM_PERIOD: Duration = Duration::from_millis(1);

/// Raises of one storming device, at most (then it calms down).
pub const STORM_MAX: u64 = 10_000;

/// The register lies of one slot, kept by [`crate::virtio`] under the slot's
/// lock.
#[derive(Clone, Debug)]
pub struct RegisterLies {
    mode: Misbehave,
    generation: u32,
    /// Times a lie was told (generations invented, resets ignored,
    /// interrupts raised for nothing).
    pub told: u64,
}

impl RegisterLies {
    /// The register half of `mode` (nothing for a ring lie).
    pub fn new(mode: Misbehave) -> RegisterLies {
        RegisterLies {
            mode,
            generation: 0,
            told: 0,
        }
    }

    /// The mode.
    pub fn mode(&self) -> Misbehave {
        self.mode
    }

    /// After a register read at `offset` filled `data`: a churning device
    /// answers a new `ConfigGeneration` every time (§2.5.1).
    pub fn after_read(&mut self, offset: u64, data: &mut [u8]) {
        if self.mode == Misbehave::ConfigGenerationChurn
            && offset == virtio_core::mmio::regs::CONFIG_GENERATION
            && data.len() == 4
        {
            self.generation = self.generation.wrapping_add(1);
            data.copy_from_slice(&self.generation.to_le_bytes());
            self.told += 1;
        }
    }

    /// Before a register write: `false` if the device ignores it (a reset,
    /// `Status` 0, of a device that never resets, while its status is not
    /// already 0).
    pub fn take_write(&mut self, offset: u64, data: &[u8], status: u32) -> bool {
        let reset = offset == virtio_core::mmio::regs::STATUS && data.iter().all(|b| *b == 0);
        if self.mode == Misbehave::ResetNeverClears && reset && status != 0 {
            self.told += 1;
            return false;
        }
        true
    }

    /// Whether the slot should raise a groundless interrupt now (a storm,
    /// after DRIVER_OK, below [`STORM_MAX`]); counts it.
    pub fn storm(&mut self, driver_ok: bool) -> bool {
        if self.mode != Misbehave::InterruptStorm || !driver_ok || self.told >= STORM_MAX {
            return false;
        }
        self.told += 1;
        true
    }

    /// Whether the slot's worker must wake every [`STORM_PERIOD`].
    pub fn storms(&self) -> bool {
        self.mode == Misbehave::InterruptStorm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_generation_churns_on_every_read_2_5_1() {
        let mut l = RegisterLies::new(Misbehave::ConfigGenerationChurn);
        let gen_at = virtio_core::mmio::regs::CONFIG_GENERATION;
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        l.after_read(gen_at, &mut a);
        l.after_read(gen_at, &mut b);
        assert_ne!(a, b);
        let mut other = [9u8; 4];
        l.after_read(0, &mut other);
        assert_eq!(other, [9; 4]);
        let mut calm = RegisterLies::new(Misbehave::UsedTwice);
        let before = a;
        calm.after_read(gen_at, &mut a);
        assert_eq!(a, before);
    }

    #[test]
    fn reset_is_ignored_only_by_a_device_that_never_resets_2_4() {
        let status = virtio_core::mmio::regs::STATUS;
        let mut l = RegisterLies::new(Misbehave::ResetNeverClears);
        assert!(!l.take_write(status, &[0, 0, 0, 0], 0xf));
        assert!(l.take_write(status, &[0, 0, 0, 0], 0));
        assert!(l.take_write(status, &[1, 0, 0, 0], 0));
        let mut ok = RegisterLies::new(Misbehave::InterruptStorm);
        assert!(ok.take_write(status, &[0, 0, 0, 0], 0xf));
    }

    #[test]
    fn storm_is_bounded_and_waits_for_driver_ok_4_2_2() {
        let mut l = RegisterLies::new(Misbehave::InterruptStorm);
        assert!(l.storms());
        assert!(!l.storm(false));
        let n = (0..STORM_MAX + 5).filter(|_| l.storm(true)).count() as u64;
        assert_eq!(n, STORM_MAX);
        assert!(!RegisterLies::new(Misbehave::UsedTwice).storm(true));
    }
}
