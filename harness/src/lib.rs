//! The KVM harness: boots tiny guests by PVH against our virtio-mmio devices
//! and runs end-to-end scenarios.
//!
//! Not built yet: the harness issue brings the VMM, the tiny guests and the
//! scenario suite. [`suite`] reports that honestly so the README's main job
//! runs on a fresh checkout.

pub mod options;

/// One row of the scenario report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuiteRow {
    /// Scenario name.
    pub scenario: String,
    /// Device under test.
    pub device: String,
    /// Backend behind it.
    pub backend: String,
    /// Outcome.
    pub result: String,
}

/// Runs every scenario against every device configuration. No scenario
/// exists until the harness issue lands, so the table is empty.
pub fn suite() -> Vec<SuiteRow> {
    Vec::new()
}
