//! Conformance: the specification's normative statements as data
//! ([`catalogue`], generated from the spec's source by [`spec`]) and what
//! we say about each.

pub mod catalogue;
pub mod spec;
