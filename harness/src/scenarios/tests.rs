//! The scenario list: unique names, every row findable.

use super::*;

#[test]
fn the_pattern_is_the_guests_contract() {
    let p = pattern(130);
    assert_eq!(&p[..5], b"abcde");
    assert_eq!(p[63], b'\n');
    assert_eq!(p[64], b'b', "line 1 starts one letter later");
    assert_eq!(p[127], b'\n');
}

#[test]
fn numbers_are_read_from_guest_lines() {
    let l = "rng: 1048576 bytes in 137 requests, 12 interrupts";
    assert_eq!(number_before(l, "bytes"), Some(1_048_576));
    assert_eq!(number_before(l, "requests"), Some(137));
    assert_eq!(number_before(l, "interrupts"), Some(12));
    assert_eq!(number_before(l, "nothing"), None);
}

#[test]
fn scenario_names_are_unique() {
    let all: Vec<Scenario> = all().into_iter().chain(net()).collect();
    let mut names: Vec<_> = all.iter().map(|s| s.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), all.len());
}
