//! Replays every file of the checked-in corpus through its target, on
//! stable Rust, in every `cargo test`. A crash found by fuzzing is added to
//! the corpus under a `regression-<what>` name so it stays fixed.

use std::fs;
use std::path::Path;

#[test]
fn replay_checked_in_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut total = 0;
    for t in fuzz::TARGETS {
        let dir = root.join(t.name);
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus for {} missing at {}: {e}", t.name, dir.display()))
            .map(|e| e.expect("readable corpus entry").path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "empty corpus for {}", t.name);
        for path in entries {
            let data = fs::read(&path).expect("readable corpus file");
            (t.run)(&data);
            total += 1;
        }
    }
    println!("replayed {total} corpus inputs");
}

#[test]
fn every_target_survives_trivial_inputs() {
    for t in fuzz::TARGETS {
        (t.run)(&[]);
        (t.run)(&[0xff; 64]);
        (t.run)(&[0; 4096]);
    }
}

/// Every crash fuzzing ever found stays a named input,
/// `corpus/<target>/regression-<what>`, replayed here one by one so a
/// failure names it (the whole-corpus replay above covers them too).
#[test]
fn named_regressions_stay_fixed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut named = 0;
    for t in fuzz::TARGETS {
        let Ok(dir) = fs::read_dir(root.join(t.name)) else {
            continue;
        };
        let mut paths: Vec<_> = dir
            .map(|e| e.expect("readable corpus entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("regression-"))
            })
            .collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).expect("readable regression input");
            let result = std::panic::catch_unwind(|| (t.run)(&data));
            assert!(result.is_ok(), "regression {} fails again", path.display());
            named += 1;
        }
    }
    println!("{named} named regression inputs replayed");
}
