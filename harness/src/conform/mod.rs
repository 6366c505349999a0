//! Conformance: the specification's normative statements as data
//! ([`catalogue`], generated from the spec's source by [`spec`]) and what
//! we say about each.

pub mod catalogue;
pub mod drivers;
pub mod entropy;
pub mod guests;
pub mod kick_probe;
pub mod kvm_drivers;
pub mod legacy_face;
pub mod linux;
pub mod peer_drivers;
pub mod report;
pub mod run;
pub mod spec;
pub mod targets;

/// The catalogue as checked in (`harness/conform/catalogue.tsv`).
pub const CATALOGUE: &str = include_str!("../../conform/catalogue.tsv");
/// The scope as checked in (`harness/conform/scope.tsv`).
pub const SCOPE: &str = include_str!("../../conform/scope.tsv");

/// Every check, device side then driver side.
pub fn checks() -> Vec<&'static [conform::Check]> {
    vec![conform::device::CHECKS, conform::driver::CHECKS]
}
