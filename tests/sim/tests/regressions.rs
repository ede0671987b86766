//! The fuzz targets' inputs as ordinary tests: every seed in
//! `fuzz/corpus/<target>/` and every input that once made a target fail,
//! kept in `fuzz/regressions/<target>/` (named after what it found), must
//! pass its target's oracle. The targets are `sim::fuzzing`; `cargo xtask
//! fuzz` runs them under libFuzzer.

use std::path::{Path, PathBuf};

use sim::fuzzing::{target, TARGETS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs every file under `dir/<target>/`; returns how many ran.
fn run_dir(dir: &str) -> usize {
    let mut ran = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root().join(dir).join(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if let Err(e) = run(&data) {
                panic!("{name} on {}: {e}", f.display());
            }
            ran += 1;
        }
    }
    ran
}

#[test]
fn every_seed_passes() {
    let ran = run_dir("fuzz/corpus");
    assert!(ran >= 100, "only {ran} seeds in fuzz/corpus");
}

#[test]
fn every_saved_failure_passes() {
    run_dir("fuzz/regressions");
}

#[test]
fn every_target_has_seeds() {
    for (name, _) in TARGETS {
        let dir = root().join("fuzz/corpus").join(name);
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        assert!(n > 0, "no seeds in {}", dir.display());
        assert!(target(name).is_some());
    }
}
