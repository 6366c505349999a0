//! The device status field (spec §2.1) and the initialization sequence
//! (§3.1), one set of transition rules for both sides.
//!
//! The device keeps a [`StatusMachine`] and checks every value the driver
//! writes; the driver walks an [`InitSequence`] and checks every value it
//! reads back. Both use [`InitStage::next`]. `SUSPEND` (`VIRTIO_F_SUSPEND`)
//! is deliberately not supported: writing it is refused.

use core::fmt;

bitflags::bitflags! {
    /// The bits of the device status field (§2.1).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct DeviceStatus: u8 {
        /// The guest OS has found the device (§2.1).
        const ACKNOWLEDGE = 1;
        /// The guest OS knows how to drive the device (§2.1).
        const DRIVER = 2;
        /// The driver is set up; the device is live (§2.1).
        const DRIVER_OK = 4;
        /// Feature negotiation is complete (§2.1).
        const FEATURES_OK = 8;
        /// The driver suspended the device, with `VIRTIO_F_SUSPEND` (§2.1);
        /// not supported here.
        const SUSPEND = 16;
        /// The device hit an error it cannot recover from without a reset
        /// (§2.1).
        const DEVICE_NEEDS_RESET = 64;
        /// The driver gave up on the device (§2.1).
        const FAILED = 128;
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("0");
        }
        bitflags::parser::to_writer(self, f)
    }
}

/// How far the initialization sequence of §3.1.1 has come: each stage is
/// the set of init bits (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK) set
/// so far, and only these sets are valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum InitStage {
    /// Status 0: after reset (§2.4).
    #[default]
    Reset,
    /// ACKNOWLEDGE (§3.1.1 step 2).
    Acknowledge,
    /// ACKNOWLEDGE | DRIVER (step 3); the driver writes its features now.
    Driver,
    /// ... | FEATURES_OK (step 5), accepted by the device.
    FeaturesOk,
    /// ... | FEATURES_OK | DRIVER_OK (step 8): the device is live.
    DriverOk,
    /// ACKNOWLEDGE | DRIVER | DRIVER_OK without FEATURES_OK: a legacy
    /// driver's sequence, which has no FEATURES_OK (§3.1.2).
    LegacyDriverOk,
}

impl InitStage {
    /// Every stage.
    pub const ALL: [InitStage; 6] = [
        InitStage::Reset,
        InitStage::Acknowledge,
        InitStage::Driver,
        InitStage::FeaturesOk,
        InitStage::DriverOk,
        InitStage::LegacyDriverOk,
    ];

    /// The init bits this stage has set (§2.1).
    pub const fn bits(self) -> DeviceStatus {
        const A: u8 = DeviceStatus::ACKNOWLEDGE.bits();
        const D: u8 = DeviceStatus::DRIVER.bits();
        const F: u8 = DeviceStatus::FEATURES_OK.bits();
        const O: u8 = DeviceStatus::DRIVER_OK.bits();
        DeviceStatus::from_bits_retain(match self {
            InitStage::Reset => 0,
            InitStage::Acknowledge => A,
            InitStage::Driver => A | D,
            InitStage::FeaturesOk => A | D | F,
            InitStage::DriverOk => A | D | F | O,
            InitStage::LegacyDriverOk => A | D | O,
        })
    }

    /// The stage whose init bits are exactly `bits` (other bits ignored),
    /// if that set is a valid stage.
    pub fn from_bits(bits: DeviceStatus) -> Option<InitStage> {
        let init = bits & INIT_BITS;
        InitStage::ALL.into_iter().find(|s| s.bits() == init)
    }

    /// The stage that follows this one in the sequence of §3.1.1 (modern)
    /// or §3.1.2 (legacy: DRIVER_OK right after DRIVER); `None` at the end.
    /// The one rule both the device and the driver follow.
    pub const fn next(self, modern: bool) -> Option<InitStage> {
        match self {
            InitStage::Reset => Some(InitStage::Acknowledge),
            InitStage::Acknowledge => Some(InitStage::Driver),
            InitStage::Driver if modern => Some(InitStage::FeaturesOk),
            InitStage::Driver => Some(InitStage::LegacyDriverOk),
            InitStage::FeaturesOk => Some(InitStage::DriverOk),
            InitStage::DriverOk | InitStage::LegacyDriverOk => None,
        }
    }

    /// Whether `to` is this stage or comes after it by [`next`](Self::next)
    /// steps: several steps in one status write are taken in order.
    pub fn can_reach(self, to: InitStage, modern: bool) -> bool {
        let mut s = Some(self);
        while let Some(cur) = s {
            if cur == to {
                return true;
            }
            s = cur.next(modern);
        }
        false
    }

    /// Whether DRIVER_OK is set.
    pub const fn is_driver_ok(self) -> bool {
        matches!(self, InitStage::DriverOk | InitStage::LegacyDriverOk)
    }
}

/// The bits that make up an [`InitStage`].
const INIT_BITS: DeviceStatus = DeviceStatus::ACKNOWLEDGE
    .union(DeviceStatus::DRIVER)
    .union(DeviceStatus::FEATURES_OK)
    .union(DeviceStatus::DRIVER_OK);

/// Why a status write (device side) or a read-back (driver side) is wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusError {
    /// The write sets a bit that is reserved or not supported here
    /// (`SUSPEND`, bit 5) (§2.1).
    ReservedBit {
        /// The offending bits.
        bits: u8,
    },
    /// The write would clear a set bit other than by writing 0 (§2.1.1: the
    /// driver MUST NOT clear a device status bit).
    ClearsBit {
        /// The bits that would be cleared.
        bits: DeviceStatus,
    },
    /// The driver tried to set DEVICE_NEEDS_RESET, which only the device
    /// sets (§2.1.2).
    SetsNeedsReset,
    /// The init bits written skip or reorder the steps of §3.1.1.
    OutOfOrder {
        /// The status before the write.
        current: DeviceStatus,
        /// The value written.
        written: u8,
    },
    /// DRIVER_OK without FEATURES_OK on a modern device (§3.1.1 steps 5-8;
    /// only legacy drivers skip FEATURES_OK, §3.1.2).
    DriverOkWithoutFeaturesOk,
    /// An init step after (or together with) FAILED: the driver MUST reset
    /// the device first (§2.1.1).
    AfterFailed,
    /// An init step while DEVICE_NEEDS_RESET is set (§2.1.2): reset first.
    NeedsReset,
    /// FEATURES_OK refused: the device does not accept the features
    /// written (§2.2.2); the status stays as it was.
    FeaturesNotAcceptable,
    /// The device raised DEVICE_NEEDS_RESET while its status is 0: there is
    /// nothing to reset (§2.1.2, §2.4).
    NotInitialized,
    /// Driver side: the status did not read back as 0 after a reset (§2.4.2).
    ResetIncomplete {
        /// The value read.
        read: DeviceStatus,
    },
    /// Driver side: FEATURES_OK did not stick, the device refused the
    /// features (§3.1.1 step 6).
    FeaturesRefused,
    /// Driver side: the device reports DEVICE_NEEDS_RESET (§2.1.2).
    DeviceNeedsReset,
    /// Driver side: the status read back is not what was written.
    UnexpectedStatus {
        /// The value written.
        expected: DeviceStatus,
        /// The value read back.
        read: DeviceStatus,
    },
    /// Driver side: the sequence is already complete (DRIVER_OK is set).
    SequenceComplete,
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StatusError::ReservedBit { bits } => {
                write!(
                    f,
                    "status bits {bits:#04x} are reserved or unsupported (§2.1)"
                )
            }
            StatusError::ClearsBit { bits } => {
                write!(f, "status write clears {bits}: only a reset may (§2.1.1)")
            }
            StatusError::SetsNeedsReset => {
                f.write_str("the driver may not set DEVICE_NEEDS_RESET (§2.1.2)")
            }
            StatusError::OutOfOrder { current, written } => write!(
                f,
                "status {written:#04x} after {current} skips or reorders the steps of §3.1.1"
            ),
            StatusError::DriverOkWithoutFeaturesOk => {
                f.write_str("DRIVER_OK without FEATURES_OK on a modern device (§3.1.1)")
            }
            StatusError::AfterFailed => {
                f.write_str("initialization step after FAILED without a reset (§2.1.1)")
            }
            StatusError::NeedsReset => {
                f.write_str("initialization step while DEVICE_NEEDS_RESET is set (§2.1.2)")
            }
            StatusError::FeaturesNotAcceptable => {
                f.write_str("FEATURES_OK refused: features not acceptable (§2.2.2)")
            }
            StatusError::NotInitialized => {
                f.write_str("DEVICE_NEEDS_RESET raised while the status is 0 (§2.1.2)")
            }
            StatusError::ResetIncomplete { read } => {
                write!(f, "status reads {read} after reset, expected 0 (§2.4.2)")
            }
            StatusError::FeaturesRefused => {
                f.write_str("the device refused the features: FEATURES_OK not set (§3.1.1 step 6)")
            }
            StatusError::DeviceNeedsReset => {
                f.write_str("the device reports DEVICE_NEEDS_RESET (§2.1.2)")
            }
            StatusError::UnexpectedStatus { expected, read } => {
                write!(f, "status reads {read}, expected {expected} (§3.1.1)")
            }
            StatusError::SequenceComplete => {
                f.write_str("the initialization sequence is already complete (§3.1.1)")
            }
        }
    }
}

impl core::error::Error for StatusError {}

/// What an accepted status write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusTransition {
    /// 0 was written: the caller resets the device (§2.4).
    Reset,
    /// The bits that were newly set (possibly none).
    Set(DeviceStatus),
}

impl StatusTransition {
    /// Whether the write set DRIVER_OK: the device goes live.
    pub fn activates(&self) -> bool {
        self.newly_set().contains(DeviceStatus::DRIVER_OK)
    }

    /// Whether the write set FEATURES_OK: the features are final.
    pub fn accepts_features(&self) -> bool {
        self.newly_set().contains(DeviceStatus::FEATURES_OK)
    }

    /// Whether the write set FAILED.
    pub fn fails(&self) -> bool {
        self.newly_set().contains(DeviceStatus::FAILED)
    }

    fn newly_set(&self) -> DeviceStatus {
        match *self {
            StatusTransition::Reset => DeviceStatus::empty(),
            StatusTransition::Set(s) => s,
        }
    }
}

/// The device's status field (§2.1): an init stage plus the FAILED and
/// DEVICE_NEEDS_RESET flags, changed only through checked writes.
///
/// Rules for a driver write of `value` (anything refused leaves the status
/// exactly as it was):
/// - 0 resets (§2.4).
/// - Reserved bits (`SUSPEND`, `0x20`) are refused.
/// - A set bit may not be cleared (§2.1.1); DEVICE_NEEDS_RESET belongs to
///   the device, so the driver may echo it or leave it out, never set it.
/// - The init bits written must be a valid [`InitStage`] reachable from the
///   current one by [`InitStage::next`]: several steps in one write (as
///   `ACKNOWLEDGE | DRIVER`) are fine when taken in order; skipping one
///   (`DRIVER` alone from reset) is not.
/// - No init step together with or after FAILED, or while
///   DEVICE_NEEDS_RESET is set; FAILED itself may be set at any time.
/// - A write that newly sets FEATURES_OK is accepted only if the features
///   are acceptable (§2.2.2); otherwise the driver reads FEATURES_OK clear.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusMachine {
    stage: InitStage,
    failed: bool,
    needs_reset: bool,
}

impl StatusMachine {
    /// A device after reset: status 0.
    pub const fn new() -> Self {
        StatusMachine {
            stage: InitStage::Reset,
            failed: false,
            needs_reset: false,
        }
    }

    /// The status the driver reads (§2.1).
    pub fn read(&self) -> DeviceStatus {
        let mut s = self.stage.bits();
        s.set(DeviceStatus::FAILED, self.failed);
        s.set(DeviceStatus::DEVICE_NEEDS_RESET, self.needs_reset);
        s
    }

    /// The init stage.
    pub fn stage(&self) -> InitStage {
        self.stage
    }

    /// Whether the driver set FAILED.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Whether the device raised DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset
    }

    /// Applies a driver write of `value` (see the type's rules).
    /// `features_acceptable` is asked only when the write newly sets
    /// FEATURES_OK; `modern` says whether the FEATURES_OK step exists
    /// (§3.1.1) or not (legacy, §3.1.2).
    pub fn write(
        &mut self,
        value: u8,
        features_acceptable: impl FnOnce() -> bool,
        modern: bool,
    ) -> Result<StatusTransition, StatusError> {
        if value == 0 {
            *self = StatusMachine::new();
            return Ok(StatusTransition::Reset);
        }
        let known = DeviceStatus::all().difference(DeviceStatus::SUSPEND);
        let reserved = value & !known.bits();
        if reserved != 0 {
            return Err(StatusError::ReservedBit { bits: reserved });
        }
        let written = DeviceStatus::from_bits_retain(value);
        if written.contains(DeviceStatus::DEVICE_NEEDS_RESET) && !self.needs_reset {
            return Err(StatusError::SetsNeedsReset);
        }
        let current = self.read();
        let new = written | (current & DeviceStatus::DEVICE_NEEDS_RESET);
        let cleared = current & !new;
        if !cleared.is_empty() {
            return Err(StatusError::ClearsBit { bits: cleared });
        }
        let added = new & !current;
        let target = InitStage::from_bits(new);
        if !(added & INIT_BITS).is_empty() {
            if new.contains(DeviceStatus::FAILED) {
                return Err(StatusError::AfterFailed);
            }
            if self.needs_reset {
                return Err(StatusError::NeedsReset);
            }
        }
        let target = match target {
            Some(t) if self.stage.can_reach(t, modern) => t,
            Some(InitStage::LegacyDriverOk) if modern => {
                return Err(StatusError::DriverOkWithoutFeaturesOk);
            }
            _ => {
                return Err(StatusError::OutOfOrder {
                    current,
                    written: value,
                });
            }
        };
        if added.contains(DeviceStatus::FEATURES_OK) && !features_acceptable() {
            return Err(StatusError::FeaturesNotAcceptable);
        }
        self.stage = target;
        self.failed = new.contains(DeviceStatus::FAILED);
        Ok(StatusTransition::Set(added))
    }

    /// The device raises DEVICE_NEEDS_RESET for an error of its own
    /// (§2.1.2). Returns whether the device must now send a configuration
    /// change notification (it must when DRIVER_OK is set).
    pub fn set_needs_reset(&mut self) -> Result<bool, StatusError> {
        if self.read().is_empty() {
            return Err(StatusError::NotInitialized);
        }
        self.needs_reset = true;
        Ok(self.stage.is_driver_ok())
    }
}

/// The driver's walk through the initialization sequence (§3.1.1, legacy
/// §3.1.2): it says what to write next and checks what the device reads
/// back. Writing the features (between DRIVER and FEATURES_OK) and setting
/// up queues (before DRIVER_OK) are the caller's, at the stages named.
///
/// ```
/// # use virtio_core::status::{DeviceStatus, InitSequence, InitStage};
/// let mut seq = InitSequence::new(true);
/// // Step 1, reset: write 0, read it back.
/// assert_eq!(seq.next_write(), Ok(DeviceStatus::empty()));
/// assert_eq!(seq.confirm(DeviceStatus::empty()), Ok(InitStage::Reset));
/// // Step 2: ACKNOWLEDGE.
/// let v = seq.next_write().unwrap();
/// assert_eq!(v, DeviceStatus::ACKNOWLEDGE);
/// assert_eq!(seq.confirm(v), Ok(InitStage::Acknowledge));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitSequence {
    /// `None` until the reset has been read back as 0.
    stage: Option<InitStage>,
    modern: bool,
}

impl InitSequence {
    /// A sequence for a modern (`true`) or legacy device, starting with the
    /// reset of step 1.
    pub const fn new(modern: bool) -> Self {
        InitSequence {
            stage: None,
            modern,
        }
    }

    /// The stage confirmed so far (`None` before the reset is confirmed).
    pub fn stage(&self) -> Option<InitStage> {
        self.stage
    }

    /// The status value to write for the next step: 0 for the reset, then
    /// each stage's bits in turn (one new bit per step).
    pub fn next_write(&self) -> Result<DeviceStatus, StatusError> {
        self.next_stage().map(InitStage::bits)
    }

    fn next_stage(&self) -> Result<InitStage, StatusError> {
        match self.stage {
            None => Ok(InitStage::Reset),
            Some(s) => s.next(self.modern).ok_or(StatusError::SequenceComplete),
        }
    }

    /// Checks the status read back after writing
    /// [`next_write`](Self::next_write) and advances to that stage.
    pub fn confirm(&mut self, read: DeviceStatus) -> Result<InitStage, StatusError> {
        let target = self.next_stage()?;
        let expected = target.bits();
        if read.contains(DeviceStatus::DEVICE_NEEDS_RESET) && target != InitStage::Reset {
            return Err(StatusError::DeviceNeedsReset);
        }
        if read != expected {
            return Err(match target {
                InitStage::Reset => StatusError::ResetIncomplete { read },
                InitStage::FeaturesOk if !read.contains(DeviceStatus::FEATURES_OK) => {
                    StatusError::FeaturesRefused
                }
                _ => StatusError::UnexpectedStatus { expected, read },
            });
        }
        self.stage = Some(target);
        Ok(target)
    }

    /// The value to write to give up on the device: what was confirmed
    /// plus FAILED (§3.1.1: "the driver SHOULD set the FAILED status bit").
    pub fn failed_write(&self) -> DeviceStatus {
        self.stage.unwrap_or_default().bits() | DeviceStatus::FAILED
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    const A: u8 = 1;
    const D: u8 = 2;
    const O: u8 = 4;
    const F: u8 = 8;
    const NR: u8 = 64;
    const FAIL: u8 = 128;

    /// An independent statement of the rules over plain bytes: the value
    /// read after the write, or `None` if the write is refused.
    fn expected(cur: u8, w: u8, modern: bool, acceptable: bool) -> Option<u8> {
        if w == 0 {
            return Some(0);
        }
        if w & 0x30 != 0 {
            return None;
        }
        if w & NR != 0 && cur & NR == 0 {
            return None;
        }
        let new = w | (cur & NR);
        if cur & !new != 0 {
            return None;
        }
        let valid: &[u8] = if modern {
            &[0, A, A | D, A | D | F, A | D | F | O]
        } else {
            &[0, A, A | D, A | D | O]
        };
        let (ci, ni) = (cur & 0xf, new & 0xf);
        if !valid.contains(&ci) || !valid.contains(&ni) {
            return None;
        }
        if ni != ci && (new & FAIL != 0 || cur & NR != 0) {
            return None;
        }
        if ni & F != 0 && ci & F == 0 && !acceptable {
            return None;
        }
        Some(new)
    }

    /// Every state a device can be in, built through the public API.
    fn reachable_states(modern: bool) -> Vec<StatusMachine> {
        let mut out = Vec::new();
        let chain: &[u8] = if modern {
            &[0, A, A | D, A | D | F, A | D | F | O]
        } else {
            &[0, A, A | D, A | D | O]
        };
        for &init in chain {
            for failed in [false, true] {
                for nr in [false, true] {
                    let mut m = StatusMachine::new();
                    if init != 0 {
                        m.write(init, || true, modern).unwrap();
                    }
                    if failed {
                        m.write(init | FAIL, || true, modern).unwrap();
                    }
                    if nr {
                        if m.read().is_empty() {
                            assert_eq!(m.set_needs_reset(), Err(StatusError::NotInitialized));
                            continue;
                        }
                        m.set_needs_reset().unwrap();
                    }
                    assert_eq!(
                        m.read().bits(),
                        init | (FAIL * failed as u8) | (NR * nr as u8)
                    );
                    out.push(m);
                }
            }
        }
        out
    }

    #[test]
    fn every_state_and_written_value_matches_the_rules_2_1_and_3_1() {
        let mut cases = 0;
        for modern in [true, false] {
            for state in reachable_states(modern) {
                for w in 0..=255u8 {
                    for acceptable in [true, false] {
                        let mut m = state;
                        let cur = m.read().bits();
                        let got = m.write(w, || acceptable, modern);
                        let want = expected(cur, w, modern, acceptable);
                        match want {
                            Some(v) => {
                                assert!(got.is_ok(), "{cur:#x} <- {w:#x}: {got:?}");
                                assert_eq!(m.read().bits(), v, "{cur:#x} <- {w:#x}");
                            }
                            None => {
                                assert!(got.is_err(), "{cur:#x} <- {w:#x} accepted");
                                // A refused write leaves the status as it was.
                                assert_eq!(m, state, "{cur:#x} <- {w:#x}");
                            }
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert!(cases > 10_000);
    }

    #[test]
    fn specific_refusals_name_the_rule() {
        let mut m = StatusMachine::new();
        assert_eq!(
            m.write(D, || true, true),
            Err(StatusError::OutOfOrder {
                current: DeviceStatus::empty(),
                written: D
            })
        );
        m.write(A | D, || true, true).unwrap();
        assert_eq!(
            m.write(A | D | O, || true, true),
            Err(StatusError::DriverOkWithoutFeaturesOk)
        );
        assert_eq!(
            m.write(A | D | F, || false, true),
            Err(StatusError::FeaturesNotAcceptable)
        );
        assert_eq!(m.read().bits(), A | D);
        assert_eq!(
            m.write(A | NR, || true, true),
            Err(StatusError::SetsNeedsReset)
        );
        assert_eq!(
            m.write(A, || true, true),
            Err(StatusError::ClearsBit {
                bits: DeviceStatus::DRIVER
            })
        );
        assert_eq!(
            m.write(A | D | 16, || true, true),
            Err(StatusError::ReservedBit { bits: 16 })
        );
        assert_eq!(
            m.write(A | D | F | FAIL, || true, true),
            Err(StatusError::AfterFailed)
        );
        let t = m.write(A | D | F | O, || true, true).unwrap();
        assert!(t.activates() && t.accepts_features() && !t.fails());
        assert_eq!(m.write(0, || true, true), Ok(StatusTransition::Reset));
        assert_eq!(m, StatusMachine::new());
    }

    #[test]
    fn legacy_driver_ok_follows_driver_3_1_2() {
        let mut m = StatusMachine::new();
        m.write(A | D, || true, false).unwrap();
        assert!(m.write(A | D | F, || true, false).is_err());
        assert!(m.write(A | D | O, || true, false).unwrap().activates());
        assert_eq!(m.stage(), InitStage::LegacyDriverOk);
    }

    #[test]
    fn needs_reset_is_raised_only_by_the_device_2_1_2() {
        let mut m = StatusMachine::new();
        assert_eq!(m.set_needs_reset(), Err(StatusError::NotInitialized));
        m.write(A | D | F, || true, true).unwrap();
        // Before DRIVER_OK no notification is due.
        assert_eq!(m.set_needs_reset(), Ok(false));
        // No further init step; FAILED (echoing NEEDS_RESET or not) is fine.
        assert_eq!(
            m.write(A | D | F | O, || true, true),
            Err(StatusError::NeedsReset)
        );
        m.write(A | D | F | FAIL, || true, true).unwrap();
        assert_eq!(m.read().bits(), A | D | F | FAIL | NR);
        let mut m = StatusMachine::new();
        m.write(A | D | F | O, || true, true).unwrap();
        assert_eq!(m.set_needs_reset(), Ok(true));
        m.write(A | D | F | O | NR | FAIL, || true, true).unwrap();
        assert_eq!(m.write(0, || true, true), Ok(StatusTransition::Reset));
        assert!(!m.needs_reset());
    }

    /// The driver's walk, run against the device's machine.
    fn run(modern: bool, acceptable: bool) -> Result<InitStage, StatusError> {
        let mut dev = StatusMachine::new();
        let mut seq = InitSequence::new(modern);
        loop {
            let v = match seq.next_write() {
                Ok(v) => v,
                Err(StatusError::SequenceComplete) => return Ok(seq.stage().unwrap()),
                Err(e) => return Err(e),
            };
            // A refused write is visible only in what the driver reads.
            let _ = dev.write(v.bits(), || acceptable, modern);
            seq.confirm(dev.read())?;
        }
    }

    #[test]
    fn init_sequence_against_the_device_3_1_1() {
        assert_eq!(run(true, true), Ok(InitStage::DriverOk));
        assert_eq!(run(false, true), Ok(InitStage::LegacyDriverOk));
        // Features refused: the read-back lacks FEATURES_OK (step 6).
        assert_eq!(run(true, false), Err(StatusError::FeaturesRefused));
        // Every value the walk writes is one step the device accepts.
        let mut seq = InitSequence::new(true);
        let mut prev = InitStage::Reset;
        seq.confirm(DeviceStatus::empty()).unwrap();
        while let Ok(v) = seq.next_write() {
            let s = InitStage::from_bits(v).unwrap();
            assert_eq!(prev.next(true), Some(s));
            prev = seq.confirm(v).unwrap();
        }
    }

    #[test]
    fn init_sequence_checks_read_back() {
        let mut seq = InitSequence::new(true);
        assert_eq!(
            seq.confirm(DeviceStatus::ACKNOWLEDGE),
            Err(StatusError::ResetIncomplete {
                read: DeviceStatus::ACKNOWLEDGE
            })
        );
        seq.confirm(DeviceStatus::empty()).unwrap();
        assert_eq!(
            seq.confirm(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DEVICE_NEEDS_RESET),
            Err(StatusError::DeviceNeedsReset)
        );
        assert_eq!(
            seq.confirm(DeviceStatus::empty()),
            Err(StatusError::UnexpectedStatus {
                expected: DeviceStatus::ACKNOWLEDGE,
                read: DeviceStatus::empty()
            })
        );
        assert_eq!(seq.stage(), Some(InitStage::Reset));
        assert_eq!(seq.failed_write(), DeviceStatus::FAILED);
    }
}
